"""Does a Fréchet distance see what decoders get wrong? Distances of degraded test images to clean ones.

    python benchmarks/fd_sanity.py [--data fashion-mnist] [--resolution R] [--limit 2000]
                                   [--fid-features indep,features:auto] [--out results/fd_sanity] [--quick]

The real statistics come from the first half of the test split's `--limit` images; each
row's fake statistics from the second half, clean (the floor: two samples of one
distribution) or degraded: Gaussian blur, additive Gaussian noise, 4-bit quantisation,
and a 2x2 average-pool-and-upsample. A distance worth judging decoders by grows with
each degradation's strength.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import DEVICE, new_result, save

from epsvae.data import iter_batches, open_dataset
from epsvae.evaluate import fd_networks, feature_extractors
from epsvae.metrics import FeatureStats, fid_from_stats


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


DEGRADATIONS = {
    "clean": lambda x, g: x,
    "blur 0.5": lambda x, g: gaussian_blur(x, 0.5),
    "blur 1.0": lambda x, g: gaussian_blur(x, 1.0),
    "blur 2.0": lambda x, g: gaussian_blur(x, 2.0),
    "noise 0.02": lambda x, g: x + 0.04 * torch.randn(x.shape, generator=g).to(x),  # σ in [0, 1] units
    "noise 0.05": lambda x, g: x + 0.10 * torch.randn(x.shape, generator=g).to(x),
    "noise 0.10": lambda x, g: x + 0.20 * torch.randn(x.shape, generator=g).to(x),
    "4-bit": lambda x, g: torch.round((x + 1) * 7.5) / 7.5 - 1,
    "2x2 pool": lambda x, g: F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest"),
}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--resolution", type=int, default=None, help="image folders: the size to evaluate at")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--fid-features", default="indep,features:auto")
    ap.add_argument("--out", default="results/fd_sanity")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    limit = 32 if args.quick else args.limit
    ds = open_dataset(args.data, "test", args.resolution)
    res = args.resolution or ds[0][0].shape[-1]
    extractors = feature_extractors(args.fid_features, args.data, res, ds[0][0].shape[0])
    n = min(limit, len(ds)) // 2 * 2
    x_all = torch.cat(list(iter_batches(ds, n, 250)))
    real_x, fake_x = x_all[: n // 2].to(DEVICE), x_all[n // 2 :].to(DEVICE)
    result = new_result()
    result.update(data=args.data, resolution=res, n_per_side=n // 2)
    result["fd_networks"] = fd_networks(extractors)

    def stats(extract, x):
        return FeatureStats(extract(x[:2]).shape[1], DEVICE).update(torch.cat([extract(b) for b in x.split(250)]))

    reals = {name: stats(extract, real_x) for name, extract in extractors.items()}
    for label, degrade in DEGRADATIONS.items():
        g = torch.Generator().manual_seed(0)
        fake = degrade(fake_x, g).clamp(-1, 1)
        row = {"degradation": label}
        for name, extract in extractors.items():
            row[name] = fid_from_stats(reals[name], stats(extract, fake))
        result["rows"].append(row)
        print(f"{label:<12}" + "".join(f"{k} {v:>9.4f}   " for k, v in row.items() if k != "degradation"), flush=True)
    save(result, __import__("pathlib").Path(args.out) / "fd_sanity.json")


if __name__ == "__main__":
    main()
