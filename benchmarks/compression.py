"""VAE vs ε-VAE on Fashion-MNIST at the presets' compression and at 2x more compression.

    python benchmarks/compression.py [--arms vae-1x,eps-1x,vae-2x,eps-2x] [--steps N]
                                     [--limit N] [--out results/compression] [--quick]

Every arm trains with the engine (`epsvae.train`) for the same number of steps (default:
the presets' full budget), then `epsvae.evaluate` measures reconstructions of the test
split: PSNR, SSIM and fd_domain (Fréchet distance in the offline feature network's space;
not Inception FID) at 1 and 3 decoding steps over three seeds. 1x is the presets' 8x8x2
latent (8x compression of 32x32x1); 2x halves the latent channels (8x8x1, 16x).
Writes OUT/compression.json and prints a table. `--quick` shrinks everything to a
smoke test that runs in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import common_args, eval_arm, eval_settings, new_result, print_table, save, train_arm

ARMS = {  # name -> (preset, overrides)
    "vae-1x": ("vae-fmnist", []),
    "eps-1x": ("eps-fmnist", []),
    "vae-2x": ("vae-fmnist", ["model.encoder.latent_channels=1"]),
    "eps-2x": ("eps-fmnist", ["model.encoder.latent_channels=1"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default=",".join(ARMS))
    common_args(ap, "results/compression")
    args = ap.parse_args()
    limit, seeds = eval_settings(args)
    out, result = Path(args.out), new_result()
    for arm in args.arms.split(","):
        preset, overrides = ARMS[arm]
        run = out / arm
        cfg, summary, seconds = train_arm(run, preset, overrides, args.steps, args.quick)
        report = eval_arm(run, cfg.train.data, limit, [1, 3], seeds)
        c, h, w = cfg.model.image_shape
        lc, lh, lw = cfg.model.latent_shape
        result["rows"].append(
            {
                "arm": arm,
                "preset": preset,
                "overrides": overrides,
                "compression": c * h * w / (lc * lh * lw),
                "train_steps": summary["step"],
                "train_seconds": seconds,
                "eval": report,
            }
        )
        save(result, out / "compression.json")  # after every arm
    print_table(result)


if __name__ == "__main__":
    main()
