"""Reconstruction error against the distance from the image border: does a decoder err more where
its convs pad?

    python benchmarks/border.py --models vae=DIR,eps=DIR --data SPEC [--decode-steps 3]
        [--seeds 0] [--limit 512] [--margin 4] [--out results/border]

Each DIR is an exported model or a run directory (its model/ is used); SPEC is a dataset spec
(`fashion-mnist`, `folder:PATH?...`), read at each model's own size from its test split. Per
model (and decoding step count for an ε-VAE), averaged over the decoding seeds:

- `ring`: the mean absolute error |clamp(decoded, -1, 1) - original| over the pixels at distance
  d = 0, 1, ..., margin - 1 from the nearest image edge (d = 0: the outermost rows and columns);
- `interior`: the same over the pixels at least `margin` from every edge;
- `edge_ratio`: ring[0] / interior (1 when the border is decoded as well as the inside);
- `sides`: the outermost row or column's error, per side (top, bottom, left, right);
- `saturated_edge`, `saturated_interior`: the share of decoded values at |v| > 0.98 (what
  clamping cuts) on the outermost ring and inside, beside the originals' (`original_saturated`).

A 3x3 conv that pads with zeros shows the network a black frame that the noisy input x_t never
has; `model.decoder.padding_mode` changes how the decoder pads, and this measures what it buys.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import model_dir, new_result  # noqa: E402

from epsvae.config import ConfigError  # noqa: E402
from epsvae.data import iter_batches, open_dataset  # noqa: E402
from epsvae.folders import DataError  # noqa: E402
from epsvae.models import load_pretrained  # noqa: E402

SATURATED = 0.98


def edge_distance(height: int, width: int) -> torch.Tensor:
    """(H, W) integer distance of each pixel from the nearest image edge (0 on the outermost ring)."""
    rows = torch.arange(height)
    cols = torch.arange(width)
    dy = torch.minimum(rows, height - 1 - rows)[:, None]
    dx = torch.minimum(cols, width - 1 - cols)[None, :]
    return torch.minimum(dy, dx)


def border_profile(decoded: torch.Tensor, x: torch.Tensor, margin: int) -> dict:
    """Error profile of decodes (N, C, H, W) of images x against the distance from the border."""
    h, w = x.shape[-2:]
    if margin < 1 or 2 * margin >= min(h, w):
        raise ValueError(f"--margin must be at least 1 and leave an interior in {h}x{w} images, got {margin}")
    y = decoded.clamp(-1, 1)
    err = (y - x).abs().double().mean(dim=(0, 1))  # (H, W)
    dist = edge_distance(h, w)
    inside = dist >= margin
    ring = [err[dist == d].mean().item() for d in range(margin)]
    interior = err[inside].mean().item()
    sat = (decoded.abs() > SATURATED).double().mean(dim=(0, 1))
    return {
        "ring": ring,
        "interior": interior,
        "edge_ratio": ring[0] / interior if interior > 0 else float("nan"),
        "sides": {"top": err[0].mean().item(), "bottom": err[-1].mean().item(),
                  "left": err[:, 0].mean().item(), "right": err[:, -1].mean().item()},
        "saturated_edge": sat[dist == 0].mean().item(),
        "saturated_interior": sat[inside].mean().item(),
        "original_saturated": (x.abs() > SATURATED).double().mean().item(),
    }  # fmt: skip


def mean_profiles(profiles: list[dict]) -> dict:
    """The element-wise mean of profiles (one per decoding seed); edge_ratio recomputed from the means."""

    def avg(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: avg([v[k] for v in values]) for k in first}
        if isinstance(first, list):
            return [sum(col) / len(col) for col in zip(*values, strict=True)]
        return sum(values) / len(values)

    out = avg(profiles)
    out["edge_ratio"] = out["ring"][0] / out["interior"] if out["interior"] > 0 else float("nan")
    return out


@torch.no_grad()
def decode_all(model, x_all: torch.Tensor, steps: int | None, seed: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x_all), batch):
        x = x_all[i : i + batch]
        z = model.encode(x)
        if model.config.kind == "epsilon":
            out.append(model.decode(z, steps=steps, noise=torch.randn(x.shape, generator=g)))
        else:
            out.append(model.decode(z))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="name=DIR pairs, comma-separated")
    ap.add_argument("--data", default="fashion-mnist", help="dataset spec; its test split is measured")
    ap.add_argument("--decode-steps", default="3", help="ε-VAE decoding steps, comma-separated")
    ap.add_argument("--seeds", default="0", help="decoding seeds (ε-VAE), comma-separated")
    ap.add_argument("--limit", type=int, default=512, help="test images")
    ap.add_argument("--margin", type=int, default=4, help="rings measured; the interior starts this far in")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default="results/border")
    args = ap.parse_args()
    steps = [int(s) for s in args.decode_steps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    result = new_result()
    result["data"] = args.data
    out = Path(args.out)
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--models wants name=DIR pairs, got {item!r}")
        try:  # a missing or foreign model directory, or data the model does not fit: one line naming the model
            model = load_pretrained(model_dir(Path(path))).eval()
            cfg = model.config
            ds = open_dataset(args.data, "test", cfg.image_size, cfg.image_channels)
        except (ConfigError, DataError, FileNotFoundError) as e:
            raise SystemExit(f"{name}: {e}") from None
        x_all = torch.cat(list(iter_batches(ds, min(len(ds), args.limit), 256)))
        try:
            border_profile(x_all, x_all, args.margin)  # checks the margin against the image size
        except ValueError as e:
            raise SystemExit(str(e)) from None
        stochastic = cfg.kind == "epsilon"
        for s in steps if stochastic else [None]:
            t0 = time.perf_counter()
            profile = mean_profiles(
                [border_profile(decode_all(model, x_all, s, seed, args.batch), x_all, args.margin)
                 for seed in (seeds if stochastic else [0])]
            )  # fmt: skip
            row = {"model": name, "dir": path, "kind": cfg.kind, "steps": s,
                   "padding_mode": cfg.decoder.padding_mode, "n_images": len(x_all),
                   "seeds": seeds if stochastic else None, "margin": args.margin, **profile,
                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            result["rows"].append(row)
            rings = " ".join(f"{v:.3f}" for v in profile["ring"])
            sides = " ".join(f"{k} {v:.3f}" for k, v in profile["sides"].items())
            print(
                f"{name:<14}{str(s):>4}  ring {rings}  interior {profile['interior']:.3f}  "
                f"edge/interior {profile['edge_ratio']:.2f}  | {sides}  | saturated edge "
                f"{profile['saturated_edge']:.3f} interior {profile['saturated_interior']:.3f} "
                f"(originals {profile['original_saturated']:.3f})",
                flush=True,
            )
            out.mkdir(parents=True, exist_ok=True)
            (out / "border.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
