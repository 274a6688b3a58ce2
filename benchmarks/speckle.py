"""Residual noise in flat regions: the grey speckle of few-step ε-VAE decodes on black backgrounds.

    python benchmarks/speckle.py --models vae=DIR,eps=DIR [--decode-steps 1,2,3]
        [--grids reversed-log,uniform] [--temperatures 1] [--limit N] [--out results/speckle] [--raw]
        [--figure N [--figure-gamma 0.4]]

Each DIR is an exported model or a run directory (its model/ is used). For every test
image, the flat-black mask holds the pixels whose 5x5 neighbourhood in the original is
entirely at the data's minimum (-1: Fashion-MNIST's background and padding). Per model,
grid and step count, over the mask:

- `flat_std`: standard deviation of the decoded pixels (0 for a clean black background);
- `flat_mean`: mean offset of the decoded pixels from black (after clamping to [-1, 1],
  as images are written);
- `flat_p99`: 99th percentile of |decoded - original| (the visible specks);
- `flat_mean_unclamped`, `flat_above`: the decoded values' mean offset from black before
  clamping, and the share of them above black (clamping keeps only that share visible);
- `seed_std`: standard deviation of the difference between two decodes of the same latents
  with different noise, over sqrt(2): the part of the speckle that comes from the initial
  noise (equal to flat_std when all of it does, 0 when the decode is deterministic);
- `psnr` over whole images and `fd_indep` of the seed-0 decodes: what a fix must not lose
  (fd_indep grows with blur, so it tells a cleaner background from a blurrier image).

Grids: 'reversed-log', 'uniform', or explicit decreasing times like '1:0.9:0.5:0' (the
last Euler step's size is where a flat region's residual noise is decided: the last
update jumps from t_k to 0 using the velocity at t_k, so an error e in the velocity
leaves t_k e / γ in the image). `--raw` adds the run's non-EMA weights (a run directory's
checkpoint) beside the EMA ones, to separate EMA's part. `--temperatures` scales the
initial noise (1: the model's own decode; below 1 trades generated detail for less noise
to carry through the network).

`--figure N` also writes `speckle.png`: the first N test images (top row), then one row per
model and decode setting (seed 0, clamped as images are written), every pixel shown through
a display curve v ** `--figure-gamma` on [0, 1] (default 0.4), which lifts near-black specks
into view without changing what is measured: 1/255 above black is shown as 28/255.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import model_dir, new_result  # noqa: E402

from epsvae.checkpoint import load_checkpoint  # noqa: E402
from epsvae.config import ConfigError  # noqa: E402
from epsvae.data import iter_batches, open_dataset  # noqa: E402
from epsvae.evaluate import feature_extractor  # noqa: E402
from epsvae.folders import DataError  # noqa: E402
from epsvae.images import save_grid  # noqa: E402
from epsvae.metrics import FeatureStats, fid_from_stats, psnr  # noqa: E402
from epsvae.models import load_pretrained  # noqa: E402


def flat_mask(x: torch.Tensor, low: float = -1.0, size: int = 5) -> torch.Tensor:
    """(N, C, H, W) -> bool mask of pixels whose size x size neighbourhood is all at `low` (all channels)."""
    bright = (x > low + 1e-6).any(dim=1, keepdim=True).float()
    near = F.max_pool2d(bright, size, stride=1, padding=size // 2)
    return (near == 0).expand_as(x)


def speckle_stats(decoded: list[torch.Tensor], x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The flat-region statistics of one or two decodes (list of (N, C, H, W) in [-1, 1]) of images x."""
    d = decoded[0].clamp(-1, 1)
    vals = d[mask].double()
    out = {
        "flat_pixels": int(mask.sum()),
        "flat_std": vals.std().item() if vals.numel() > 1 else float("nan"),
        "flat_mean": (vals + 1).mean().item() if vals.numel() else float("nan"),
        # before clamping: where the decoded values sit around black, and how many are above it
        "flat_mean_unclamped": (decoded[0][mask].double() + 1).mean().item() if vals.numel() else float("nan"),
        "flat_above": (decoded[0][mask] > -1).double().mean().item() if vals.numel() else float("nan"),
        "flat_p99": _quantile((d - x).abs()[mask], 0.99),
        "psnr": psnr(d, x).mean().item(),
    }
    if len(decoded) > 1:
        diff = (decoded[1].clamp(-1, 1) - d)[mask].double()
        out["seed_std"] = (diff.std() / 2**0.5).item() if diff.numel() > 1 else float("nan")
    return out


def _quantile(values: torch.Tensor, q: float) -> float:
    """torch.quantile refuses more than 2**24 values; sort instead."""
    if values.numel() == 0:
        return float("nan")
    v = values.flatten().float().sort().values
    return v[min(len(v) - 1, round(q * (len(v) - 1)))].item()


def parse_grid(text: str) -> str | torch.Tensor:
    if ":" in text:
        return torch.tensor([float(v) for v in text.split(":")])
    return text


def raw_weights(run: Path, model):
    """The run's non-EMA weights (checkpoint 'model') in a copy of `model`, or None if no checkpoint."""
    import copy

    if not (run / "checkpoint.pt").is_file():
        return None
    raw = copy.deepcopy(model)
    raw.load_state_dict(load_checkpoint(run)["model"])
    return raw.eval()


@torch.no_grad()
def measure(model, x_all: torch.Tensor, steps: int | None, grid, batch: int, temperature: float = 1.0, extract=None):
    """Decode every image twice (seeds 0 and 1; once for a VAE) and pool the flat-region statistics;
    with `extract` (a feature network), also fd_indep of the seed-0 decodes. Returns the statistics
    and the seed-0 decodes."""
    stochastic = model.config.kind == "epsilon"
    decoded: list[list[torch.Tensor]] = [[], []] if stochastic else [[]]
    gens = [torch.Generator().manual_seed(s) for s in range(len(decoded))]
    for i in range(0, len(x_all), batch):
        x = x_all[i : i + batch]
        z = model.encode(x)
        for k, g in enumerate(gens):
            if stochastic:
                noise = temperature * torch.randn(x.shape, generator=g)
                decoded[k].append(model.decode(z, steps=steps, grid=grid, noise=noise))
            else:
                decoded[k].append(model.decode(z))
    decoded_all = [torch.cat(d) for d in decoded]
    row = speckle_stats(decoded_all, x_all, flat_mask(x_all))
    if extract is not None:
        real, fake = (FeatureStats.of_images(extract, x, batch) for x in (x_all, decoded_all[0].clamp(-1, 1)))
        row["fd_indep"] = fid_from_stats(real, fake)
    return row, decoded_all[0]


def display_curve(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Images in [-1, 1] through v ** gamma on [0, 1] (gamma < 1 lifts the dark end), back to [-1, 1]."""
    return ((x.clamp(-1, 1) + 1) / 2) ** gamma * 2 - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="name=DIR pairs, comma-separated")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--decode-steps", default="1,2,3")
    ap.add_argument("--grids", default="reversed-log,uniform")
    ap.add_argument("--temperatures", default="1", help="scales of the initial noise (ε-VAE)")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--raw", action="store_true", help="also the non-EMA weights of each run's checkpoint")
    ap.add_argument("--no-fd", action="store_true", help="skip fd_indep")
    ap.add_argument("--out", default="results/speckle")
    ap.add_argument("--figure", type=int, default=0, help="write speckle.png with the first N images' decodes")
    ap.add_argument("--figure-gamma", type=float, default=0.4, help="the figure's display curve (1: as decoded)")
    args = ap.parse_args()
    result = new_result()
    steps = [int(s) for s in args.decode_steps.split(",")]
    grids = [parse_grid(g) for g in args.grids.split(",")]
    first = next((g for g in grids if isinstance(g, str)), None)  # the named grid that decodes one step
    temperatures = [float(v) for v in args.temperatures.split(",")]
    if args.figure < 0 or not 0 < args.figure_gamma <= 1:
        raise SystemExit(f"--figure wants N >= 0 and --figure-gamma in (0, 1], got {args.figure}, {args.figure_gamma}")
    figure: list[torch.Tensor] = []
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--models wants name=DIR pairs, got {item!r}")
        run = Path(path)
        try:  # a missing or foreign model directory, or data the model does not fit: one line naming the model
            model = load_pretrained(model_dir(run)).eval()
            cfg = model.config
            ds = open_dataset(args.data, "test", cfg.image_size, cfg.image_channels)
        except (ConfigError, DataError, FileNotFoundError) as e:
            raise SystemExit(f"{name}: {e}") from None
        x_all = torch.cat(list(iter_batches(ds, min(len(ds), args.limit), 250)))
        if args.figure and not figure:
            figure.append(x_all[: args.figure])
        elif args.figure and x_all.shape[1:] != figure[0].shape[1:]:
            raise SystemExit(
                f"--figure puts every model in one image: {name} decodes {tuple(x_all.shape[1:])}, the first model "
                f"{tuple(figure[0].shape[1:])}; measure models of other sizes in separate runs"
            )
        extract = None if args.no_fd else feature_extractor("indep", args.data, cfg.image_size, cfg.image_channels)[1]
        variants = [("ema", model)]
        if args.raw and (raw := raw_weights(run, model)) is not None:
            variants.append(("raw", raw))
        for weights, m in variants:
            settings = [(None, None, 1.0)]  # a VAE decodes deterministically; an explicit grid implies its steps
            if cfg.kind == "epsilon":
                settings = [
                    (g, s, tau)
                    for tau in temperatures
                    for g in grids
                    for s in (steps if isinstance(g, str) else [len(g) - 1])
                    if not (s == 1 and isinstance(g, str) and g != first)  # one step (t = 1 to 0): any named grid
                ]
            for grid, s, tau in settings:
                t0 = time.perf_counter()
                row, decoded = measure(m, x_all, s, grid, 250, tau, extract)
                if args.figure:
                    figure.append(decoded[: args.figure])
                label = grid if isinstance(grid, str) or grid is None else ":".join(f"{v:g}" for v in grid.tolist())
                row = {"model": name, "dir": str(run), "weights": weights, "kind": cfg.kind,
                       "gamma": cfg.flow.gamma if cfg.kind == "epsilon" else None,
                       "grid": label, "steps": s, "temperature": tau, "n_images": len(x_all), **row,
                       "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                result["rows"].append(row)
                print(
                    f"{name:<12}{weights:<5}{str(label):<22}{str(s):>4} tau {tau:g}  std {row['flat_std']:.4f}  "
                    f"mean {row['flat_mean']:.4f}  p99 {row['flat_p99']:.4f}  seed_std {row.get('seed_std', 0):.4f}  "
                    f"psnr {row['psnr']:.2f}  fd_indep {row.get('fd_indep', float('nan')):.4f}",
                    flush=True,
                )
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / "speckle.json").write_text(json.dumps(result, indent=2) + "\n")
    if figure:
        rows = "; ".join(
            f"{r['model']} {r['weights']} {r['grid']} {r['steps']} tau {r['temperature']:g}" for r in result["rows"]
        )
        path = save_grid([display_curve(f, args.figure_gamma) for f in figure], Path(args.out) / "speckle.png", scale=2)
        print(f"{path}: originals, then {rows} (display curve v ** {args.figure_gamma:g})")


if __name__ == "__main__":
    main()
