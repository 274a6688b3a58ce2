"""Resolution generalisation: train at 32x32 on scikit-image photo crops, decode at 2x and 4x.

    python benchmarks/resolution.py [--steps N] [--limit N] [--out results/resolution] [--quick]

VAE and ε-VAE (the Fashion-MNIST presets' networks, made RGB) train on random crops of
the colour photos bundled with scikit-image at 32x32, then reconstruct fixed test crops
at 32, 64 and 128 pixels with no fine-tuning (PAPER.md section 5: ε-VAE trained at 128
generalises to 256 and 512 better than the VAE). The photos are few: this measures
generalisation across resolution, not across images. The perceptual loss and fd_domain
use a feature network trained to tell the photos' crops apart (`features:auto`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import common_args, eval_arm, eval_settings, new_result, print_table, save, train_arm

RGB_PHOTOS = ["model.image_channels=3", "train.data=skimage-photos"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolutions", default="32,64,128")
    common_args(ap, "results/resolution")
    args = ap.parse_args()
    limit, seeds = eval_settings(args)
    out, result = Path(args.out), new_result()
    for preset in ("vae-fmnist", "eps-fmnist"):
        run = out / preset
        cfg, summary, seconds = train_arm(run, preset, RGB_PHOTOS, args.steps, args.quick)
        for res in [int(r) for r in args.resolutions.split(",")]:
            report = eval_arm(run, cfg.train.data, limit, [1, 3], seeds, resolution=res)
            result["rows"].append(
                {
                    "arm": f"{preset.split('-')[0]} @ {res}px",
                    "resolution": res,
                    "train_steps": summary["step"],
                    "train_seconds": seconds,
                    "eval": report,
                }
            )
            save(result, out / "resolution.json")
    print_table(result)


if __name__ == "__main__":
    main()
