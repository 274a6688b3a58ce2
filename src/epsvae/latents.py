"""Latent sets (PAPER.md section 5): a dataset encoded once into memory-mappable latents.

`encode_dataset` writes OUT/latents.npy, labels.npy and meta.json (last: its presence marks a
complete set) and records the per-channel latent mean and std in the autoencoder's own
config.json, so every generator normalises latents the same way and nobody hard-codes a
scale. `LatentDataset` reads a set back and checks it (dtype, shape against its metadata,
labels against the class count) before anything trains on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import read_json
from .data import load_batch, open_dataset
from .models import CONFIG_NAME, WEIGHTS_NAME, _atomic_write_text, load_pretrained, read_json_config
from .rundir import write_json

LATENTS, LABELS, META = "latents.npy", "labels.npy", "meta.json"


def weights_digest(model_dir: str | Path) -> str:
    """A short digest of an exported model's weights: ties latents and generators to it."""
    path = Path(model_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- latent datasets


@torch.no_grad()
def encode_dataset(
    model_dir: str | Path,
    data: str,
    out: str | Path,
    split: str = "train",
    flip: bool | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    record_stats: bool = True,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Encode `data`/`split` (plus horizontal flips where the dataset allows them) into `out`.

    Writes OUT/latents.npy (float32, (N, Cz, h, w), memory-mappable), OUT/labels.npy
    (int64; -1 = no label) and OUT/meta.json (written last: its presence marks a complete
    set). With `record_stats` the per-channel mean and std go into MODEL/config.json
    (refused if it records different ones, unless `force`). Returns the metadata.
    """
    model = load_pretrained(model_dir, device)
    cfg = model.config
    ds = open_dataset(data, split, cfg.image_size, cfg.image_channels, augment=False)
    if flip is None:
        flip = bool(getattr(ds, "flip_ok", True))
    n = min(len(ds), limit) if limit else len(ds)
    copies = 2 if flip else 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # an interrupted run must not look complete
    shape = (n * copies, *cfg.latent_shape)
    latents = np.lib.format.open_memmap(out / LATENTS, mode="w+", dtype=np.float32, shape=shape)
    labels = np.full((n * copies,), -1, dtype=np.int64)
    s1 = torch.zeros(cfg.latent_shape[0], dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc="encode", dynamic_ncols=True)
    t0 = time.time()
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        x, y = load_batch(ds, idx)
        x = x.to(device)
        for copy_i, images in enumerate((x, x.flip(-1))[:copies]):
            z = model.encode(images).float().cpu()
            s1 += z.double().sum((0, 2, 3))
            s2 += (z.double() ** 2).sum((0, 2, 3))
            rows = slice(copy_i * n + idx[0], copy_i * n + idx[-1] + 1)
            latents[rows] = z.numpy()
            labels[rows] = y.numpy()
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    latents.flush()
    del latents
    np.save(out / LABELS, labels)
    count = n * copies * cfg.latent_shape[1] * cfg.latent_shape[2]
    mean = s1 / count
    std = (s2 / count - mean**2).clamp_min(0.0).sqrt()
    flat = [c for c, v in enumerate(std.tolist()) if v < 1e-8]
    if flat:
        raise ValueError(
            f"latent channel(s) {flat} are constant over {data}/{split}: the autoencoder is degenerate "
            "(or untrained); normalising by their std would divide by zero"
        )
    meta = {
        "autoencoder": str(model_dir),
        "autoencoder_weights": weights_digest(model_dir),
        "data": data,
        "split": split,
        "images": n,
        "flip": flip,
        "count": n * copies,
        "latent_shape": list(cfg.latent_shape),
        "num_classes": int(getattr(ds, "num_classes", 0)),
        "latent_mean": [_sig(v) for v in mean.tolist()],
        "latent_std": [_sig(v) for v in std.tolist()],
        "seconds": round(time.time() - t0, 1),
    }
    if record_stats:
        record_latent_stats(model_dir, meta["latent_mean"], meta["latent_std"], force)
    write_json(out / META, meta)
    return meta


def _sig(v: float) -> float:
    return float(f"{v:.7g}")  # 7 significant digits: readable JSON, no loss that matters


def record_latent_stats(model_dir: str | Path, mean: list[float], std: list[float], force: bool = False) -> None:
    """Write per-channel latent statistics into an exported autoencoder's config.json.

    Different statistics already there are refused unless `force`: generators and latent
    sets made with the old ones would stop matching this autoencoder."""
    data = read_json_config(model_dir)
    old = (data.get("latent_mean"), data.get("latent_std"))
    if old == (list(mean), list(std)):
        return
    if old != (None, None):
        if not force:
            raise ValueError(
                f"{Path(model_dir) / CONFIG_NAME} already records other latent statistics (mean {old[0]}, "
                f"std {old[1]}); generators trained with them would no longer match. Encode with --no-record, "
                "or pass --force to replace them"
            )
        print(f"[encode-dataset] replacing the latent statistics in {Path(model_dir) / CONFIG_NAME}")
    data["latent_mean"], data["latent_std"] = list(mean), list(std)
    _atomic_write_text(Path(model_dir) / CONFIG_NAME, json.dumps(data, indent=2) + "\n")


_META_TYPES = {"autoencoder_weights": str, "count": int, "latent_shape": list, "num_classes": int,
               "latent_mean": list, "latent_std": list}  # fmt: skip


def check_latent_meta(meta: Any, path: Path) -> dict[str, Any]:
    """A latent set's meta.json: required keys with the right types and consistent lengths."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in _META_TYPES if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a latent set written by `epsvae encode-dataset`")
    for key, tp in _META_TYPES.items():
        if not isinstance(meta[key], tp) or isinstance(meta[key], bool):
            raise ValueError(f"{path}: {key} must be a {tp.__name__}, got {meta[key]!r}")
    shape, c = meta["latent_shape"], None
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ValueError(f"{path}: latent_shape must be three positive integers (C, h, w), got {shape}")
    c = shape[0]
    stats = meta["latent_mean"] + meta["latent_std"]
    if len(meta["latent_mean"]) != c or len(meta["latent_std"]) != c:
        raise ValueError(f"{path}: latent_mean and latent_std need one value per latent channel ({c})")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats) or min(meta["latent_std"]) <= 0:
        raise ValueError(f"{path}: latent statistics must be finite numbers with a positive std")
    if meta["count"] < 0 or meta["num_classes"] < 0:
        raise ValueError(f"{path}: count and num_classes cannot be negative")
    return meta


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the latent set is incomplete, re-run encode-dataset")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npy array ({exc})") from None


class LatentDataset:
    """A latent set written by `encode_dataset`, memory-mapped; `batch` is the engine's fast path."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if not (directory / META).is_file():
            raise FileNotFoundError(
                f"{directory} is not a complete latent dataset ({META} is missing): "
                "write one with `epsvae encode-dataset --model AE --data SPEC --out DIR`"
            )
        self.meta = check_latent_meta(read_json(directory / META, "a latent set's metadata"), directory / META)
        self.latents = _load_array(directory / LATENTS, mmap=True)
        labels = _load_array(directory / LABELS, mmap=False)
        count, shape, k = self.meta["count"], tuple(self.meta["latent_shape"]), self.meta["num_classes"]
        if self.latents.dtype != np.float32 or self.latents.shape != (count, *shape):
            raise ValueError(
                f"{directory / LATENTS} holds {self.latents.dtype} {self.latents.shape}; its {META} says "
                f"float32 {(count, *shape)}: the set is damaged or was edited, re-run encode-dataset"
            )
        if labels.dtype != np.int64 or labels.shape != (count,):
            raise ValueError(f"{directory / LABELS} holds {labels.dtype} {labels.shape}; expected int64 ({count},)")
        if count and (labels.min() < -1 or labels.max() >= max(k, 0) and labels.max() != -1):
            raise ValueError(
                f"{directory / LABELS} has labels from {labels.min()} to {labels.max()}, outside -1 (none) .. "
                f"{k - 1} for the {k} classes its {META} records"
            )
        self.labels = torch.from_numpy(labels)
        self.num_classes = int(k)

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.numpy()
        return torch.from_numpy(np.ascontiguousarray(self.latents[idx])), self.labels[idx]
