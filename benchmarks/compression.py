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
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from epsvae.evaluate import evaluate  # noqa: E402
from epsvae.train import prepare_run, train  # noqa: E402

ARMS = {  # name -> (preset, overrides)
    "vae-1x": ("vae-fmnist", []),
    "eps-1x": ("eps-fmnist", []),
    "vae-2x": ("vae-fmnist", ["model.encoder.latent_channels=1"]),
    "eps-2x": ("eps-fmnist", ["model.encoder.latent_channels=1"]),
}
QUICK = [
    "model.encoder.channels=4", "model.decoder.channels=4", "model.decoder.head_channels=4",
    "model.discriminator.channels=4", "train.batch_size=4", "train.loss.disc_start=1", "train.log_every=1",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the presets')")
    ap.add_argument("--limit", type=int, default=None, help="test images to evaluate (default: all 10k)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="results/compression")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny models, 3 steps, 16 images")
    args = ap.parse_args()
    out = Path(args.out)
    steps, limit, seeds = args.steps, args.limit, [int(s) for s in args.seeds.split(",")]
    if args.quick:
        steps, limit, seeds = 3, 16, [0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'x86_64'})",
        "torch": torch.__version__,
        "rows": [],
    }
    rows = result["rows"]
    out.mkdir(parents=True, exist_ok=True)
    for arm in args.arms.split(","):
        preset, overrides = ARMS[arm]
        run = out / arm
        cfg = prepare_run(run, preset, overrides + (QUICK if args.quick else []), steps=steps)
        t0 = time.time()
        summary = train(run, cfg, progress=False)
        report = evaluate(
            run / "model",
            cfg.train.data,
            "test",
            limit,
            [1, 3],
            seeds,
            ["psnr", "ssim", "fid"],
            "features:auto",
            device=device,
        )
        c, h, w = cfg.model.image_shape
        lc, lh, lw = cfg.model.latent_shape
        rows.append(
            {
                "arm": arm,
                "preset": preset,
                "overrides": overrides,
                "compression": c * h * w / (lc * lh * lw),
                "train_steps": summary["step"],
                "train_seconds": round(time.time() - t0, 1),
                "eval": report,
            }
        )
        (out / "compression.json").write_text(json.dumps(result, indent=2) + "\n")  # after every arm
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")
    print(f"{'arm':<8}{'compr.':>7}{'steps':>7}{'dec':>5}{'PSNR':>16}{'SSIM':>17}{'fd_domain':>18}{'dec img/s':>11}")
    for r in rows:
        for k, m in r["eval"]["results"].items():
            cell = lambda name: f"{m[name]['mean']:.4f}±{m[name]['std']:.4f}"  # noqa: E731, B023
            print(
                f"{r['arm']:<8}{r['compression']:>7.0f}{r['train_steps']:>7}{k[:4]:>5}{cell('psnr'):>16}"
                f"{cell('ssim'):>17}{cell('fd_domain'):>18}{m['decode_images_per_s']:>11.0f}"
            )


if __name__ == "__main__":
    main()
