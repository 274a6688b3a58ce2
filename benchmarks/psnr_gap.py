"""Why ε-VAE's PSNR trails the VAE's at our budget: EMA, and sampling vs the posterior mean.

    python benchmarks/psnr_gap.py --eps RUN --vae RUN [--limit 1000] [--means 1,2,4,8]
                                  [--steps 3] [--grid uniform] [--out results/psnr-gap] [--quick]

Two questions, on trained runs (directories with checkpoint.pt and model/):

1. EMA: PSNR of the exported EMA weights against the raw weights of the same checkpoint,
   for both models (an EMA that lags a short run would cost PSNR).
2. Perception vs distortion: a stochastic decoder draws one sample of p(x | z); PSNR
   rewards the posterior mean E[x | z]. Averaging K independent decodes approaches that
   mean. If averaged decodes beat the VAE's PSNR, the gap is the price of sampling (the
   sharpness fd_domain rewards), not a weaker decoder.

Writes OUT/psnr_gap.json and prints a table. PSNR over the first LIMIT test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import new_result, save  # noqa: E402

from epsvae.config import RunConfig, from_dict  # noqa: E402
from epsvae.data import iter_batches, open_dataset  # noqa: E402
from epsvae.metrics import psnr  # noqa: E402
from epsvae.models import build_model  # noqa: E402
from epsvae.train import load_checkpoint  # noqa: E402


def checkpoint_model(run: Path, key: str):
    """The raw ('model') or averaged ('ema') weights of a run's latest checkpoint."""
    cfg = from_dict(RunConfig, json.loads((run / "config.json").read_text()))
    model = build_model(cfg.model)
    model.load_state_dict(load_checkpoint(run)[key])
    return model.eval()


@torch.no_grad()
def mean_psnr(model, ds, n: int, steps: int, grid: str, k: int, seed: int = 0) -> float:
    """PSNR of the average of `k` decodes (1 = a plain decode); deterministic models decode once."""
    total, gen = 0.0, torch.Generator().manual_seed(seed)
    for x in iter_batches(ds, n, 250):
        z = model.encode(x)
        if model.config.kind == "epsilon":
            x_hat = sum(model.decode(z, steps=steps, grid=grid, generator=gen) for _ in range(k)) / k
        else:
            x_hat = model.decode(z)
        total += psnr(x_hat.clamp(-1, 1), x).sum().item()
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", required=True, help="ε-VAE run directory")
    ap.add_argument("--vae", required=True, help="VAE run directory")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--means", default="1,2,4,8", help="numbers of decodes averaged")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grid", default=None, help="decoding time grid (default: the model's own)")
    ap.add_argument("--out", default="results/psnr-gap")
    ap.add_argument("--quick", action="store_true", help="smoke test: 16 images, means 1,2")
    args = ap.parse_args()
    limit, means = (16, [1, 2]) if args.quick else (args.limit, [int(v) for v in args.means.split(",")])
    result = new_result()
    eps_run, vae_run = Path(args.eps), Path(args.vae)
    eps = checkpoint_model(eps_run, "ema")
    ds = open_dataset(
        from_dict(RunConfig, json.loads((eps_run / "config.json").read_text())).train.data,
        "test",
        eps.config.image_size,
        eps.config.image_channels,
    )
    n = min(limit, len(ds))
    t0 = time.time()
    rows = result["rows"]
    for name, run in (("vae", vae_run), ("eps", eps_run)):
        for weights, key in (("ema", "ema"), ("raw", "model")):
            model = checkpoint_model(run, key)
            rows.append({"model": name, "weights": weights, "average_of": 1,
                         "psnr": mean_psnr(model, ds, n, args.steps, args.grid, 1)})  # fmt: skip
    for k in means[1:] if means[0] == 1 else means:
        rows.append({"model": "eps", "weights": "ema", "average_of": k,
                     "psnr": mean_psnr(eps, ds, n, args.steps, args.grid, k)})  # fmt: skip
    grid = args.grid or eps.config.flow.grid
    result.update(n_images=n, decode_steps=args.steps, grid=grid, seconds=round(time.time() - t0, 1))
    save(result, Path(args.out) / "psnr_gap.json")
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")
    print(f"{'model':<7}{'weights':>8}{'decodes averaged':>18}{'PSNR (dB)':>11}")
    for r in rows:
        print(f"{r['model']:<7}{r['weights']:>8}{r['average_of']:>18}{r['psnr']:>11.2f}")


if __name__ == "__main__":
    main()
