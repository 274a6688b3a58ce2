"""What the benchmark scripts share: train an arm with the engine, evaluate it, report."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from epsvae.evaluate import evaluate  # noqa: E402
from epsvae.train import prepare_run, train  # noqa: E402

# --quick: shrink every network and the budget to a smoke test that runs in seconds
QUICK = [
    "model.encoder.channels=4", "model.decoder.channels=4", "model.decoder.head_channels=4",
    "model.discriminator.channels=4", "train.batch_size=4", "train.loss.disc_start=1", "train.log_every=1",
]  # fmt: skip
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def new_result() -> dict:
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": torch.cuda.get_device_name() if DEVICE == "cuda" else f"CPU ({platform.processor() or 'x86_64'})",
        "torch": torch.__version__,
        "rows": [],
    }


def train_arm(run: Path, preset: str, overrides: list[str], steps: int | None, quick: bool):
    """Train (or resume) one arm; returns (RunConfig, engine summary, seconds)."""
    cfg = prepare_run(run, preset, overrides + (QUICK if quick else []), steps=3 if quick else steps)
    t0 = time.time()
    summary = train(run, cfg, progress=False)
    return cfg, summary, round(time.time() - t0, 1)


def eval_arm(
    run: Path,
    data: str,
    limit: int | None,
    steps: list[int],
    seeds: list[int],
    grid: str | None = None,
    resolution: int | None = None,
) -> dict:
    """PSNR, SSIM and fd_domain of the test split at each decoding step count, over seeds."""
    return evaluate(
        run / "model",
        data,
        "test",
        limit,
        steps,
        seeds,
        ["psnr", "ssim", "fid"],
        "features:auto",
        device=DEVICE,
        grid=grid,
        resolution=resolution,
    )


def save(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict, label: str = "arm") -> None:
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")
    print(f"{label:<22}{'steps':>7}{'dec':>5}{'PSNR':>16}{'SSIM':>17}{'fd_domain':>18}{'dec img/s':>11}")
    for r in result["rows"]:
        for k, m in r["eval"]["results"].items():
            cell = lambda name: f"{m[name]['mean']:.4f}±{m[name]['std']:.4f}"  # noqa: E731, B023
            print(
                f"{r['arm']:<22}{r['train_steps']:>7}{k[:4]:>5}{cell('psnr'):>16}"
                f"{cell('ssim'):>17}{cell('fd_domain'):>18}{m['decode_images_per_s']:>11.0f}"
            )
    print("fd_domain: Fréchet distance in the offline feature network's space (not Inception FID)")


def parse(doc: str, out: str, add=None):
    """Parse the shared options (plus `add(parser)`'s); returns (args, limit, seeds, out dir, empty result)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if add is not None:
        add(ap)
    ap.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the presets')")
    ap.add_argument("--limit", type=int, default=None, help="test images to evaluate (default: all 10k)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=out)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny models, 3 steps, 16 images")
    args = ap.parse_args()
    limit, seeds = (16, [0]) if args.quick else (args.limit, [int(s) for s in args.seeds.split(",")])
    return args, limit, seeds, Path(args.out), new_result()


def arm_row(
    name: str,
    run: Path,
    preset: str,
    overrides: list[str],
    args,
    limit,
    seeds,
    decode_steps=(1, 3),
    grid: str | None = None,
    resolution: int | None = None,
    **extra,
) -> dict:
    """Train (or resume) one arm, evaluate it, and return its result row."""
    cfg, summary, seconds = train_arm(run, preset, overrides, args.steps, args.quick)
    report = eval_arm(run, cfg.train.data, limit, list(decode_steps), seeds, grid, resolution)
    c, h, w = cfg.model.image_shape
    lc, lh, lw = cfg.model.latent_shape
    return {
        "arm": name,
        "preset": preset,
        "overrides": overrides,
        **extra,
        "grid": report["grid"],
        "compression": c * h * w / (lc * lh * lw),
        "train_steps": summary["step"],
        "train_seconds": seconds,  # ~0 when the run had already finished (a further evaluation of it)
        "eval": report,
    }
