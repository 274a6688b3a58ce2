"""CLI subcommands for latent generation: encode-dataset, train-dit, sample, eval-gen."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from .cli_args import device, finite_float, positive_float, positive_int

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def add_parsers(sub, command) -> None:
    p = sub.add_parser("encode-dataset", help="encode a dataset into a latent set; record latent statistics")
    p.add_argument("--model", required=True, help="exported autoencoder directory (its config gets the statistics)")
    p.add_argument("--data", required=True, help="dataset spec: fashion-mnist, folder:PATH, skimage-photos")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="latent set directory (latents.npy, labels.npy, meta.json)")
    p.add_argument("--limit", type=positive_int, help="first N images")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None, help="add flipped copies")
    flip.add_argument("--no-flip", dest="flip", action="store_false", help="no flipped copies")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", type=device, default=_DEVICE)
    p.add_argument(
        "--no-record",
        action="store_true",
        help="do not write the statistics into the model's config (they are written only for a full train split)",
    )
    p.add_argument("--force", action="store_true", help="replace different statistics already in the model's config")
    command("encode-dataset")(_encode_dataset)

    p = sub.add_parser("train-dit", help="train (or resume) a DiT latent generator")
    p.add_argument("--ae", help="exported autoencoder directory (needed to start a run)")
    p.add_argument("--latents", help="latent set from encode-dataset (needed to start a run)")
    p.add_argument("--out", required=True, help="run directory; an existing one is resumed")
    p.add_argument("--preset", help="dit-S, dit-B, dit-L, dit-XL or dit-fmnist (default dit-S)")
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--minutes", type=positive_float, help="stop after this many minutes (checkpointed; resumable)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. model.patch_size=1")
    p.add_argument("--no-progress", action="store_true")
    command("train-dit")(_train_dit)

    p = sub.add_parser("sample", help="generate images: DiT latents decoded by the autoencoder")
    p.add_argument("--dit", required=True, help="train-dit run directory or exported generator directory")
    p.add_argument("--ae", help="autoencoder directory (default: the one the generator was trained on)")
    p.add_argument("--n", type=positive_int, default=10_000)
    p.add_argument("--labels", default="all", help="'all' (balanced over classes) or one class index")
    p.add_argument("--cfg", type=finite_float, default=1.5, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--steps", type=positive_int, default=50, help="generator flow steps")
    p.add_argument("--decode-steps", type=positive_int, help="ε-VAE decoding steps (default: the autoencoder's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--device", type=device, default=_DEVICE)
    p.add_argument("--out", required=True, help="output .npz with uint8 'samples' (N, C, H, W) and 'labels'")
    p.add_argument("--png", help="grid PNG, one row per class (default: OUT with .png)")
    p.add_argument("--no-progress", action="store_true")
    command("sample")(_sample)

    p = sub.add_parser("eval-gen", help="Fréchet distance of generated samples to a dataset split")
    p.add_argument("--samples", required=True, help=".npz written by `epsvae sample`")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, help="real images to use (default: the whole split)")
    p.add_argument(
        "--fid-features",
        default="indep",
        help="indep[:PATH] (the independent network, fd_indep; default), inception[:PATH] (standard FID) or "
        "features:PATH|auto (the perceptual loss's network, fd_domain)",
    )
    p.add_argument("--device", type=device, default=_DEVICE)
    p.add_argument("--out", help="JSON report")
    command("eval-gen")(_eval_gen)


def _encode_dataset(args: argparse.Namespace) -> int:
    from .latents import encode_dataset

    meta = encode_dataset(
        args.model,
        args.data,
        args.out,
        args.split,
        args.flip,
        args.limit,
        args.batch_size,
        args.device,
        record_stats=not args.no_record and args.split == "train" and args.limit is None,
        force=args.force,
    )
    print(
        f"{meta['count']} latents {tuple(meta['latent_shape'])} -> {args.out} (flip: {meta['flip']}); "
        f"mean {meta['latent_mean']}, std {meta['latent_std']}"
    )
    return 0


def _train_dit(args: argparse.Namespace) -> int:
    from .generation import prepare_generator_run, train_generator

    cfg = prepare_generator_run(args.out, args.preset, args.ae, args.latents, args.set, args.steps, args.batch_size)
    summary = train_generator(args.out, cfg, minutes=args.minutes, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("step", "seconds", "world_size", "effective_batch_size")}))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .generation import class_grid, generate

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    result = generate(
        args.dit,
        args.n,
        args.labels,
        args.cfg,
        args.steps,
        args.decode_steps,
        args.seed,
        args.batch_size,
        args.device,
        args.ae,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, samples=result["samples"], labels=result["labels"])
    png = class_grid(result["samples"], result["labels"], args.png or out.with_suffix(".png"))
    print(
        f"{args.n} samples -> {out} (grid {png}); {result['images_per_s']:.2f} images/s end to end "
        f"(generator {args.steps} steps, cfg {args.cfg}, {result['ae_kind']} decoder "
        f"{result['decode_steps'] if result['ae_kind'] == 'epsilon' else 1} step(s), {args.device})"
    )
    return 0


def _eval_gen(args: argparse.Namespace) -> int:
    from .generation import evaluate_generation

    path = Path(args.samples)
    if not path.is_file():
        raise FileNotFoundError(f"no samples file at {path}")
    try:
        samples = np.load(path)["samples"]
    except Exception as exc:  # not an npz, or no 'samples' array
        raise ValueError(f"{path} is not a samples .npz from `epsvae sample` ({exc})") from None
    report = evaluate_generation(samples, args.data, args.split, args.fid_features, args.limit, device=args.device)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    from .evaluate import FD_NOTES

    name = next(k for k in ("fid_inception", "fd_indep", "fd_domain") if k in report)
    print(f"{name} {report[name]:.4f} ({report['n_samples']} samples vs {report['n_real']} {args.data}/{args.split})")
    if name in FD_NOTES:
        print(FD_NOTES[name])
    return 0
