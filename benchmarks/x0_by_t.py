"""The decoder's one-step estimate x0_hat at each t: from the true x_t, and along the decode's own path.

    python benchmarks/x0_by_t.py --models a=DIR,b=DIR [--ts 1,0.913,0.766,0.667,0.5,0.333]
        [--grids reversed-log,uniform] [--steps 3] [--seeds 0,1] [--limit 2000]
        [--data fashion-mnist] [--out results/x0-by-t]

A few-step Euler decode ends with the jump from its last non-zero grid point t_k to 0, which
is exactly the one-step estimate x0_hat = (x_t - t v) / γ at t_k from the state the decode
reached there. So a decode's quality is that of the decoder's x0_hat at t_k (0.766 for
reversed-log at 3 steps, 0.333 for uniform), read from the path's own state instead of a
true noised image. This benchmark separates the two:

- `oracle` rows: x0_hat from the true x_t = (1 - t) γ x0 + t ε of each test image, at each
  t in --ts (what the training loss sees);
- `path` rows: along each grid's Euler decode (--steps calls), x0_hat at each grid point
  from the state the decode reached there. The first point (t = 1) is pure noise, the same
  state as the oracle's t = 1, and the last point's x0_hat is the decode itself (checked
  against `model.decode` with the same noise on each seed's first batch).

Each row: PSNR and SSIM of the clamped estimate against the original, fd_indep and
fd_indep2 (the independent networks, which no loss used), `hf_ratio` (the estimates'
spectral energy above 0.25 cycles per pixel over the originals': below 1 is blur, above 1
excess detail or noise) and `hf_error` (the same energy of estimate - original, over the
originals'), averaged over the noise seeds.
If a decode's distance is far above the oracle's at its last grid point, the path's state
there is off the training distribution; if they agree, the grid's last point decides the
result. Writes OUT/x0_by_t.json and prints a table.
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

from epsvae import flow  # noqa: E402
from epsvae.config import ConfigError  # noqa: E402
from epsvae.data import iter_batches, open_dataset  # noqa: E402
from epsvae.decoding import resolve_grid  # noqa: E402
from epsvae.evaluate import feature_extractor  # noqa: E402
from epsvae.folders import DataError  # noqa: E402
from epsvae.metrics import FeatureStats, fid_from_stats, psnr, ssim  # noqa: E402
from epsvae.models import load_pretrained  # noqa: E402


@torch.no_grad()
def oracle_x0(model, x: torch.Tensor, z: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
    """x0_hat from the true x_t of images x (N, C, H, W) at time t."""
    gamma = model.config.flow.gamma
    tt = torch.full((x.shape[0],), float(t))
    x_t = flow.interpolate(x, noise, tt, gamma)
    return flow.x0_estimate(x_t, tt, model.velocity(x_t, tt, z), gamma)


@torch.no_grad()
def path_x0(model, z: torch.Tensor, ts: torch.Tensor, noise: torch.Tensor) -> list[torch.Tensor]:
    """Euler from noise along ts (1 ... 0): x0_hat at every grid point but the last, from the
    path's state there. The last entry is the decode (the Euler jump to t = 0 is that estimate)."""
    gamma, x, out = model.config.flow.gamma, noise.clone(), []
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        tt = torch.full((x.shape[0],), t)
        v = model.velocity(x, tt, z)
        out.append(flow.x0_estimate(x, tt, v, gamma))
        x = x + (t_next - t) * v
    return out


def hf_energy(x: torch.Tensor, cutoff: float = 0.25) -> float:
    """Spectral energy of images (N, C, H, W) above `cutoff` cycles per pixel (Nyquist: 0.5)."""
    fy = torch.fft.fftfreq(x.shape[-2]).reshape(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).reshape(1, -1)
    high = (fy**2 + fx**2).sqrt() > cutoff
    return (torch.fft.fft2(x.double()).abs() ** 2 * high).sum().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="name=DIR pairs, comma-separated (ε-VAE models or runs)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--ts", default="1,0.913,0.766,0.667,0.5,0.333", help="oracle times")
    ap.add_argument("--grids", default="reversed-log,uniform")
    ap.add_argument("--steps", type=int, default=3, help="decoding steps of each grid")
    ap.add_argument("--seeds", default="0,1", help="noise seeds (the images' noise, and the decode's)")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--out", default="results/x0-by-t")
    args = ap.parse_args()
    try:
        ts_oracle = [float(v) for v in args.ts.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        names = args.grids.split(",")
        for g in names:  # checked here; each model's grids come from its flow config ('matched' moves with t_mean)
            flow.make_grid(g, args.steps)
    except ValueError as e:
        raise SystemExit(f"--ts, --seeds, --grids or --steps: {e}") from None
    if any(not 0 < t <= 1 for t in ts_oracle):  # (make_grid refuses steps < 1 above)
        raise SystemExit("--ts wants times in (0, 1]")
    result = new_result()
    result["args"] = vars(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--models wants name=DIR pairs, got {item!r}")
        try:
            model = load_pretrained(model_dir(Path(path))).eval()
            cfg = model.config
            ds = open_dataset(args.data, "test", cfg.image_size, cfg.image_channels)
            if cfg.kind != "epsilon":
                raise ConfigError(f"{path} is a {cfg.kind} model; x0_hat by t is defined for ε-VAE decoders")
            extract = {
                k: feature_extractor(k, args.data, cfg.image_size, cfg.image_channels) for k in ("indep", "indep2")
            }
        except (ConfigError, DataError, FileNotFoundError) as e:
            raise SystemExit(f"{name}: {e}") from None
        grids = {g: resolve_grid(cfg.flow, args.steps, g) for g in names}
        t0 = time.perf_counter()
        x_all = torch.cat(list(iter_batches(ds, min(len(ds), args.limit), args.batch)))
        real = {k: FeatureStats.of_images(f, x_all, args.batch) for k, (_, f) in extract.items()}
        hf_real = hf_energy(x_all)
        # estimates[(kind, grid, t)][seed] -> list of batches
        est: dict[tuple, dict[int, list[torch.Tensor]]] = {}
        max_gap = 0.0
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            for i in range(0, len(x_all), args.batch):
                x = x_all[i : i + args.batch]
                z = model.encode(x)
                noise = torch.randn(x.shape, generator=g)
                for t in ts_oracle:
                    est.setdefault(("oracle", "-", t), {}).setdefault(seed, []).append(oracle_x0(model, x, z, t, noise))
                for gname, ts in grids.items():
                    xs = path_x0(model, z, ts, noise)
                    if i == 0:  # the path's last estimate is the decode (checked on each seed's first batch)
                        ref = model.decode(z, grid=ts, noise=noise)
                        max_gap = max(max_gap, (xs[-1] - ref).abs().max().item())
                    for t, x0 in zip(ts[:-1].tolist(), xs, strict=True):
                        est.setdefault(("path", gname, round(t, 4)), {}).setdefault(seed, []).append(x0)
        if max_gap > 1e-3:
            raise SystemExit(f"{name}: the path's last estimate differs from model.decode by {max_gap:.2e}")
        for (kind, gname, t), by_seed in est.items():
            per = []
            for seed, batches in by_seed.items():
                x0 = torch.cat(batches).clamp(-1, 1)
                row = {"seed": seed, "psnr": psnr(x0, x_all).mean().item(), "ssim": ssim(x0, x_all).mean().item()}
                row["hf_ratio"] = hf_energy(x0) / hf_real  # above 1: more fine detail or noise than the data
                row["hf_error"] = hf_energy(x0 - x_all) / hf_real  # the error's fine-scale energy
                for k, (metric, f) in extract.items():
                    row[metric] = fid_from_stats(real[k], FeatureStats.of_images(f, x0, args.batch))
                per.append(row)
            keys = [k for k in per[0] if k != "seed"]
            mean = {k: sum(r[k] for r in per) / len(per) for k in keys}
            row = {"model": name, "dir": path, "kind": kind, "grid": gname, "t": t, **mean, "per_seed": per,
                   "n_images": len(x_all), "networks": {m: f.network for m, f in extract.values()}}  # fmt: skip
            result["rows"].append(row)
            metrics = "  ".join(f"{k} {mean[k]:.4f}" for k in keys)
            print(f"{name:<10}{kind:<7}{gname:<13}t {t:<7.4g}{metrics}", flush=True)
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        result.setdefault("decode_check_max_abs", {})[name] = max_gap
        (out / "x0_by_t.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'x0_by_t.json'}")


if __name__ == "__main__":
    main()
