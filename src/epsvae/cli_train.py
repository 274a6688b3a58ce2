"""CLI subcommands: train, export, reconstruct, features."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from .cli_args import device, int_list, positive_float, positive_int
from .features import OBJECTIVES
from .flow import GRIDS

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def add_parsers(sub, command) -> None:
    p = sub.add_parser("train", help="train (or resume) an ε-VAE or VAE run")
    p.add_argument("--preset", help="preset name (needed to start a run; optional to resume one)")
    p.add_argument("--data", help="dataset spec: fashion-mnist, folder:PATH, skimage-photos")
    p.add_argument("--out", required=True, help="run directory; an existing one is resumed")
    p.add_argument("--steps", type=positive_int, help="total steps (default: the preset's full budget)")
    p.add_argument("--minutes", type=positive_float, help="stop after this many minutes (checkpointed; resumable)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (split over processes)")
    p.add_argument("--resolution", type=positive_int, help="training image size (sets model.image_size)")
    p.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        help="start a new run from an exported model's weights (fine-tune at another resolution, lr or data)",
    )
    p.add_argument(
        "--frozen-encoder",
        metavar="DIR",
        help="train only a decoder for this encoder: an epsvae model or a diffusers AutoencoderKL directory",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. train.lr=2e-4 or model.flow.gamma=0.8 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    command("train")(_train)

    p = sub.add_parser("distill", help="distil an ε-VAE's multi-step decoding into a one-step decoder")
    p.add_argument("--model", required=True, help="the teacher: an exported ε-VAE model directory")
    p.add_argument("--out", required=True, help="run directory of the student (an existing one is resumed)")
    p.add_argument("--teacher-steps", type=positive_int, help="the teacher's decoding steps (default: its own)")
    p.add_argument("--preset", help="training recipe (default: the preset with the teacher's architecture)")
    p.add_argument("--data", help="dataset spec (default: the preset's)")
    p.add_argument(
        "--steps", type=positive_int, help="total steps (default: 0.3 of the preset's budget, 600 for eps-fmnist)"
    )
    p.add_argument("--minutes", type=positive_float, help="stop after this many minutes (checkpointed; resumable)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    command("distill")(_distill)

    p = sub.add_parser("quickstart", help="the embedded default: train eps-fmnist on the CPU, then report")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--minutes", type=positive_float, default=10.0, help="training time budget (default 10)")
    p.add_argument("--steps", type=positive_int, help="train to this many steps instead of a time budget")
    p.add_argument("--preset", default="eps-fmnist")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "no"),
        default="auto",
        help="train.mixed_precision; auto: bf16 on a GPU or on a CPU with native bf16, else fp32",
    )
    command("quickstart")(_quickstart)

    p = sub.add_parser("export", help="export a run's EMA weights as a model directory")
    p.add_argument("run", help="run directory (or, to convert, a model directory in either format)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--format", choices=("epsvae", "diffusers"), default="epsvae",
                   help="epsvae (default) or diffusers (AutoencoderEps; needs epsvae[diffusers])")  # fmt: skip
    command("export")(_export)

    p = sub.add_parser("reconstruct", help="encode and decode a dataset split; write uint8 arrays to .npz")
    p.add_argument("--model", required=True, help="exported model directory")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images")
    p.add_argument("--steps", type=positive_int, default=None, help="decoding steps (ε-VAE; default from the config)")
    p.add_argument("--grid", choices=GRIDS, default=None, help="ε-VAE time grid (default from the config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--resolution", type=positive_int, help="image size to reconstruct at (default: the model's)")
    p.add_argument("--device", type=device, default=_DEVICE)
    p.add_argument("--out", required=True, help="output .npz with 'original' and 'reconstruction'")
    p.add_argument("--png", help="also save a grid of the first 16 pairs")
    command("reconstruct")(_reconstruct)

    p = sub.add_parser("eval", help="reconstruction metrics per decoding-step count, over seeds")
    p.add_argument("--model", required=True, help="exported model directory (ε-VAE or VAE)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument(
        "--steps", type=int_list(1), default=[1, 3], help="comma-separated decoding step counts (ignored for a VAE)"
    )
    p.add_argument("--seeds", type=int_list(0), default=[0, 1, 2], help="comma-separated decoding seeds")
    p.add_argument("--grid", choices=GRIDS, default=None, help="ε-VAE time grid (default from the config)")
    p.add_argument("--metrics", default="psnr,ssim,fid", help="from psnr,ssim,lpips,fid")
    p.add_argument(
        "--fid-features",
        default="indep",
        help="comma-separated: indep[:PATH] (the independent network, fd_indep; default), inception[:PATH] "
        "(standard rFID) or features:PATH|auto (the perceptual loss's network, fd_domain)",
    )
    p.add_argument("--lpips", default="lpips-vgg", help="perceptual backbone for the lpips metric")
    p.add_argument(
        "--resolution", type=positive_int, help="evaluate at this image size (default: the model's; zero-shot)"
    )
    p.add_argument("--device", type=device, default=_DEVICE)
    p.add_argument("--out", required=True, help="JSON report")
    command("eval")(_eval)

    p = sub.add_parser("features", help="the offline feature networks (perceptual loss, fd_domain, fd_indep)")
    fsub = p.add_subparsers(dest="features_command", required=True)
    q = fsub.add_parser("train", help="train one on a dataset (labelled or not)")
    q.add_argument("--data", required=True)
    q.add_argument("--out", required=True)
    q.add_argument(
        "--objective",
        default="auto",
        choices=("auto", *OBJECTIVES),
        help="auto: classes for labelled data, else rotation (the perceptual network's choice)",
    )
    q.add_argument("--resolution", type=positive_int, help="image folders: image size (default 64)")
    q.add_argument("--channels", type=int, choices=(1, 3), help="image folders: default the images' own")
    q.add_argument("--epochs", type=positive_float, default=2.0)
    command("features")(_features)


def _train(args: argparse.Namespace) -> int:
    from .train import prepare_run

    overrides = args.set + ([f"model.image_size={args.resolution}"] if args.resolution else [])
    cfg = prepare_run(
        args.out, args.preset, overrides, args.data, args.steps, args.batch_size, args.init_from, args.frozen_encoder
    )
    _run(args, cfg)
    return 0


def _run(args: argparse.Namespace, cfg) -> bool:
    """Train `cfg` into args.out; print the summary line once (rank 0 under torchrun); True on rank 0."""
    from .train import train

    summary = train(args.out, cfg, minutes=args.minutes, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    print(json.dumps({k: summary[k] for k in ("step", "seconds", "world_size", "effective_batch_size")}))
    return True


def _distill(args: argparse.Namespace) -> int:
    from .train import prepare_distill

    overrides = args.set + ([f"train.distill_steps={args.teacher_steps}"] if args.teacher_steps else [])
    cfg = prepare_distill(args.out, args.model, args.preset, overrides, args.data, args.steps, args.batch_size)
    if _run(args, cfg):
        print(f"[distill] the one-step decoder is in {Path(args.out) / 'model'} (decodes with 1 step by default)")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    quickstart(args.out, args.minutes, args.steps, args.preset, precision=args.precision)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .integrations import is_diffusers_dir

    if args.format == "diffusers" or is_diffusers_dir(args.run):  # to or from diffusers' format
        from .integrations.diffusers import export as convert

        print(f"exported to {convert(args.run, args.out, args.format)}")
        return 0
    from .train import export

    print(f"exported to {export(args.run, args.out)}")
    return 0


def reconstruct_dataset(
    model, dataset, limit: int | None, steps: int | None, grid: str | None, seed: int, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) originals and reconstructions of the first `limit` items of `dataset`."""
    from .data import iter_batches
    from .images import to_uint8

    n = min(len(dataset), limit) if limit else len(dataset)
    gen = torch.Generator().manual_seed(seed)
    originals, recons = [], []
    device = next(model.parameters()).device
    for x in iter_batches(dataset, n, batch_size):
        with torch.no_grad():
            z = model.encode(x.to(device))
            x_hat = model.decode(z, steps=steps, grid=grid, generator=gen)
        originals.append(to_uint8(x))
        recons.append(to_uint8(x_hat))
    return np.concatenate(originals), np.concatenate(recons)


def _reconstruct(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .images import save_grid
    from .metrics import psnr
    from .models import load_pretrained

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    model = load_pretrained(args.model, args.device)
    cfg = model.config
    ds = open_dataset(args.data, args.split, args.resolution or cfg.image_size, cfg.image_channels)
    original, reconstruction = reconstruct_dataset(
        model, ds, args.limit, args.steps, args.grid, args.seed, args.batch_size
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, original=original, reconstruction=reconstruction)
    if args.png:
        save_grid([original[:16], reconstruction[:16]], args.png, scale=2)
    as_float = lambda a: torch.from_numpy(a).double() / 127.5 - 1  # noqa: E731  uint8 -> [-1, 1]
    mean_psnr = psnr(as_float(reconstruction), as_float(original)).mean().item()
    print(f"{len(original)} images -> {out}; mean PSNR {mean_psnr:.2f} dB")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    report = evaluate(
        args.model,
        args.data,
        args.split,
        args.limit,
        args.steps,
        args.seeds,
        [m.strip() for m in args.metrics.split(",")],
        args.fid_features,
        args.lpips,
        device=args.device,
        grid=args.grid,
        resolution=args.resolution,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return 0


def _features(args: argparse.Namespace) -> int:
    from .features import train_feature_net

    resolution = args.resolution or (64 if args.data.startswith("folder:") else None)
    train_feature_net(args.data, args.out, args.objective, args.epochs, resolution=resolution, channels=args.channels)
    return 0
