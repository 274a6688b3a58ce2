"""The `epsvae` command line. Thin: each subcommand parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch

from .config import ConfigError, apply_overrides
from .engine import RunInterrupted
from .presets import model_config, preset_names
from .rundir import describe

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


def command(name: str):
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = fn
        return fn

    return register


# --------------------------------------------------------------------------- info


def preset_info(name: str, overrides: list[str] | None = None) -> dict:
    """Exact parameter counts and shapes of a preset, built on the meta device (no memory, instant).

    `overrides` use the spelling of `epsvae train --set`: model.image_size=64, model.decoder.channels=96."""
    from .models import build_model
    from .presets import run_config

    config = apply_overrides(run_config(name), overrides).model if overrides else model_config(name)
    with torch.device("meta"):
        params = build_model(config).num_parameters()
    return {
        "preset": name,
        "kind": config.kind,
        "params": params,
        "latent_shape": list(config.latent_shape),
        "image_shape": list(config.image_shape),
        "downsample": config.encoder.downsample,
    }


def generator_info(name: str, latent: str = "4,32,32", classes: int = 1000, overrides=None) -> dict:
    """Parameter count of a DiT preset for a latent shape (C,H,W) and class count, on the meta device."""
    from .generation import LatentGenerator
    from .presets import generator_run_config

    c, h, w = (int(v) for v in latent.split(","))
    run = generator_run_config(name)
    run = apply_overrides(run, {"model.latent_channels": c, "model.latent_size": h, "model.num_classes": classes})
    cfg = (apply_overrides(run, overrides) if overrides else run).model
    with torch.device("meta"):
        params = sum(p.numel() for p in LatentGenerator(cfg).parameters())
    tokens = (h // cfg.patch_size) * (w // cfg.patch_size)
    return {"preset": name, "kind": "dit", "params": params, "latent_shape": [c, h, w], "tokens": tokens,
            "hidden": cfg.hidden, "depth": cfg.depth, "heads": cfg.heads, "patch_size": cfg.patch_size}  # fmt: skip


@command("info")
def _info(args: argparse.Namespace) -> int:
    from .presets import GENERATOR_PRESETS

    if args.preset in GENERATOR_PRESETS:
        info = generator_info(args.preset, args.latent, args.classes, args.set)
        if args.json:
            print(json.dumps(info))
        else:
            for k, v in info.items():
                print(f"{k:<12}  {v:,}" if k == "params" else f"{k:<12}  {v}")
        return 0
    info = preset_info(args.preset, args.set)
    if args.json:
        print(json.dumps(info))
        return 0
    c, h, w = info["image_shape"]
    lc, lh, lw = info["latent_shape"]
    ratio = c * h * w / (lc * lh * lw)
    rows = [
        ("preset", info["preset"]),
        ("kind", {"epsilon": "ε-VAE (diffusion decoder)", "vae": "VAE (deterministic decoder)"}[info["kind"]]),
        ("image", f"{c} x {h} x {w}"),
        ("latent", f"{lc} x {lh} x {lw}  (downsample {info['downsample']}, {ratio:g}x compression)"),
    ]
    rows += [(f"{k} params", f"{v:>12,}  ({v / 1e6:.2f}M)") for k, v in info["params"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epsvae", description="ε-VAE: denoising as visual decoding.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="parameter counts and shapes of a preset")
    p.add_argument("preset", help=f"one of: {', '.join(preset_names())}, or a DiT preset (dit-S, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--latent", default="4,32,32", help="DiT presets: latent C,H,W (default 4,32,32)")
    p.add_argument("--classes", type=int, default=1000, help="DiT presets: number of classes (default 1000)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override as in `epsvae train`, e.g. model.image_size=64 (repeatable)",
    )

    from . import cli_gen, cli_train

    cli_train.add_parsers(sub, command)
    cli_gen.add_parsers(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except RunInterrupted as exc:  # SIGINT/SIGTERM in training: checkpoint written
        print(f"epsvae {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not getattr(exc, "epsvae_user_error", False):
            raise
        if isinstance(exc, FileNotFoundError) and exc.errno is not None:  # raised by the OS, not by us
            exc = describe(exc, exc.filename, "opening")
        print(f"epsvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permission denied, read-only file system, disk full, ...: one line
        print(f"epsvae {args.command}: error: {describe(exc, exc.filename or '?', 'at')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
