"""`epsvae eval`: reconstruction metrics per decoding-step count, mean and spread over seeds.

Feature extractors for a Fréchet distance:
- 'inception': the standard FID Inception (pytorch-fid's port of the TF 2015-12-05 graph),
  from the torch hub cache, EPSVAE_INCEPTION_WEIGHTS / 'inception:PATH', or a download.
  Reported as `rfid_inception`, comparable with published rFID.
- 'features:PATH' / 'features:auto': the domain network of `epsvae features train`.
  Reported as `fd_domain`: a Fréchet distance in that network's feature space, not FID.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .data import iter_batches, open_dataset
from .metrics import FeatureStats, fid_from_stats, psnr, ssim, summarize
from .models import load_pretrained
from .perceptual import FeatureNet, PerceptualError, build_perceptual, features_auto_dir

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def inception_extractor(weights: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pool3 features (N, 2048) of the FID Inception for images in [-1, 1]."""
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        raise PerceptualError(
            "Inception FID needs the pytorch-fid package (and torchvision): pip install pytorch-fid; "
            "or use an offline domain network: --fid-features features:PATH"
        ) from None
    weights = weights or os.environ.get("EPSVAE_INCEPTION_WEIGHTS")
    old_hub = torch.hub.get_dir()
    tmp = None
    if weights:  # pytorch-fid loads through the hub cache: expose the file there under its name
        if not Path(weights).is_file():
            raise PerceptualError(f"Inception weights file {weights} does not exist")
        tmp = tempfile.mkdtemp()
        (Path(tmp) / "checkpoints").mkdir()
        os.symlink(Path(weights).resolve(), Path(tmp) / "checkpoints" / INCEPTION_FILE)
        torch.hub.set_dir(tmp)
    try:
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True).eval()
    except Exception as exc:  # offline download failure and friends
        raise PerceptualError(
            f"could not load the FID Inception weights ({type(exc).__name__}: {exc}). Offline, put {INCEPTION_FILE} "
            f"in {Path(old_hub) / 'checkpoints'}, pass --fid-features inception:PATH, or set "
            "EPSVAE_INCEPTION_WEIGHTS; or use a domain network: --fid-features features:PATH"
        ) from None
    finally:
        torch.hub.set_dir(old_hub)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    def extract(x: torch.Tensor) -> torch.Tensor:
        x = (x.clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return net.to(x.device)(x)[0].flatten(1)

    return extract


def feature_extractor(spec: str, data_spec: str) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(metric name, extractor) for an --fid-features spec."""
    if spec == "inception" or spec.startswith("inception:"):
        return "rfid_inception", inception_extractor(spec.split(":", 1)[1] if ":" in spec else None)
    if spec == "features:auto":
        build_perceptual(spec, data_spec)  # trains and caches the network if needed
        spec = f"features:{features_auto_dir(data_spec)}"
    if spec.startswith("features:"):
        net = FeatureNet.load(spec.split(":", 1)[1])
        return "fd_domain", lambda x: net.to(x.device).embed(x)
    raise PerceptualError(f"unknown --fid-features {spec!r}; use inception[:PATH] or features:PATH")


@torch.no_grad()
def evaluate(
    model_dir: str | Path,
    data: str,
    split: str = "test",
    limit: int | None = None,
    steps: list[int] = (1, 3),
    seeds: list[int] = (0,),
    metrics: list[str] = ("psnr", "ssim"),
    fid_features: str = "features:auto",
    lpips: str = "lpips-vgg",
    batch_size: int = 250,
    device: str = "cpu",
    grid: str | None = None,
    resolution: int | None = None,
) -> dict:
    """Metrics of reconstructions of `data`/`split` for each step count and seed (see `epsvae eval`).

    `grid` overrides the model's inference time grid ('reversed-log' or 'uniform');
    `resolution` evaluates at another size than the training one (zero-shot).
    """
    model = load_pretrained(model_dir, device)
    cfg = model.config
    ds = open_dataset(data, split, resolution or cfg.image_size, cfg.image_channels)
    n = min(len(ds), limit) if limit else len(ds)
    unknown = set(metrics) - {"psnr", "ssim", "lpips", "fid"}
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from psnr, ssim, lpips, fid")
    fd_name, extract = feature_extractor(fid_features, data) if "fid" in metrics else (None, None)
    lpips_fn = build_perceptual(lpips, data) if "lpips" in metrics else None
    stochastic = cfg.kind == "epsilon"
    step_list = list(steps) if stochastic else [None]
    seed_list = list(seeds) if stochastic else [seeds[0]]

    def batches():
        for x in iter_batches(ds, n, batch_size):
            yield x.to(device)

    real_stats = None
    if extract is not None:
        for x in batches():
            f = extract(x)
            real_stats = (real_stats or FeatureStats(f.shape[1], device)).update(f)
    results = {}
    for s in step_list:
        per_seed: dict[str, list[float]] = {}
        decode_s = 0.0
        for seed in seed_list:
            sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
            fake_stats = None
            gen = torch.Generator().manual_seed(seed)
            for x in batches():
                z = model.encode(x)
                t0 = time.perf_counter()
                x_hat = model.decode(z, steps=s, grid=grid, generator=gen) if stochastic else model.decode(z)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                decode_s += time.perf_counter() - t0
                x_hat = x_hat.clamp(-1, 1)
                sums["psnr"] += psnr(x_hat, x).sum().item()
                if "ssim" in metrics:
                    sums["ssim"] += ssim(x_hat, x).sum().item()
                if lpips_fn is not None:
                    sums["lpips"] += lpips_fn(x_hat, x).sum().item()
                if extract is not None:
                    f = extract(x_hat)
                    fake_stats = (fake_stats or FeatureStats(f.shape[1], device)).update(f)
            for m in ("psnr", "ssim", "lpips"):
                if m in metrics:
                    per_seed.setdefault(m, []).append(sums[m] / n)
            if fake_stats is not None:
                per_seed.setdefault(fd_name, []).append(fid_from_stats(real_stats, fake_stats))
        row = {m: summarize(v) for m, v in per_seed.items()}
        row["decode_images_per_s"] = n * len(seed_list) / decode_s
        results[str(s) if s is not None else "deterministic"] = row
    return {
        "model": str(model_dir),
        "kind": cfg.kind,
        "data": data,
        "split": split,
        "n_images": n,
        "seeds": seed_list,
        "grid": (grid or cfg.flow.grid) if stochastic else None,
        "fid_features": fid_features if extract is not None else None,
        "device": device,
        "resolution": resolution or cfg.image_size,
        "results": results,
        "date": time.strftime("%Y-%m-%d"),
    }


def format_table(report: dict) -> str:
    cols = [
        c
        for c in ("psnr", "ssim", "lpips", "rfid_inception", "fd_domain")
        if any(c in r for r in report["results"].values())
    ]
    lines = [
        f"{report['kind']} model {report['model']} on {report['data']}/{report['split']} "
        f"({report['n_images']} images, seeds {report['seeds']})",
        f"{'steps':<14}" + "".join(f"{c:>20}" for c in cols) + f"{'decode img/s':>14}",
    ]
    for steps, row in report["results"].items():
        cells = "".join(f"{row[c]['mean']:>12.4f} ± {row[c]['std']:<5.3f}" if c in row else f"{'-':>20}" for c in cols)
        lines.append(f"{steps:<14}{cells}{row['decode_images_per_s']:>14.1f}")
    if "fd_domain" in cols:
        lines.append("fd_domain: Fréchet distance in the domain feature network's space (not Inception FID)")
    return "\n".join(lines)
