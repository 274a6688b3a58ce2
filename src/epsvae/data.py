"""Datasets named by a spec string: `fashion-mnist`, `folder:PATH`, `skimage-photos`.

Every dataset returns (image, label) with the image a float tensor in [-1, 1] of shape
(C, H, W) and the label an int (-1 where there is none). Item lookups take an
(index, seed) pair: all randomness of an augmentation comes from that seed, so a
training run that resumes at step k sees exactly the images it would have seen.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .folders import DataError, ImageFolder, crop_resize

__all__ = ["DataError", "FashionMNIST", "ImageFolder", "SkimagePhotos", "StepBatches", "open_dataset"]

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_FILES = {  # official gzip files and their MD5 (as torchvision checks them)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def cache_dir() -> Path:
    return Path(os.environ.get("EPSVAE_CACHE", Path.home() / ".cache" / "epsvae"))


@contextlib.contextmanager
def cache_lock(path: Path, waiting_for: str):
    """An exclusive lock on the cache entry `path` (a file beside it, `fcntl.flock`), held while
    it is filled, so processes that start together fill it once; waits, saying so, while
    another process holds it. Without `fcntl` (Windows) there is no lock: the fills stay sound
    by writing aside and moving into place."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[epsvae] waiting for another process {waiting_for}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _download(url: str, dst: Path, timeout: float = 30.0) -> None:
    """Fetch `url` into `dst`; a network that does not answer fails after `timeout` seconds."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dst, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)


def find_fashion_mnist(download: bool = True) -> Path:
    """The directory holding the four Fashion-MNIST files: $EPSVAE_DATA, Debian's, or a verified download."""
    candidates = [Path(os.environ["EPSVAE_DATA"])] if os.environ.get("EPSVAE_DATA") else []
    candidates += [FMNIST_SYSTEM_DIR, cache_dir() / "fashion-mnist"]
    for d in candidates:
        if all((d / name).is_file() for name in FMNIST_FILES):
            return d
    if download:
        target = cache_dir() / "fashion-mnist"
        try:
            target.mkdir(parents=True, exist_ok=True)
            with cache_lock(target, "to finish downloading Fashion-MNIST"):  # one download, not one per process
                for name, md5 in FMNIST_FILES.items():
                    if (target / name).is_file() and _md5(target / name) == md5:
                        continue
                    tmp = target / (name + ".part")
                    _download(FMNIST_URL + name, tmp)
                    if _md5(tmp) != md5:
                        tmp.unlink()
                        raise DataError(f"checksum mismatch for downloaded {name}")
                    tmp.replace(target / name)
            return target
        except (OSError, urllib.error.URLError) as exc:
            reason = f"download failed ({exc})"
        except DataError as exc:
            reason = str(exc)
    else:
        reason = "download disabled"
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in {looked}; {reason}). Install it with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four official "
        "*-ubyte.gz files in a directory and set EPSVAE_DATA to it."
    )


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST, 28x28 padded to 32x32 with the background value (-1). Labels kept."""

    def __init__(self, split: str = "train", download: bool = True):
        if split not in ("train", "test"):
            raise DataError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
        root = find_fashion_mnist(download)
        prefix = "train" if split == "train" else "t10k"
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        self.labels = torch.from_numpy(_read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
        self.images = torch.from_numpy(np.pad(images, ((0, 0), (2, 2), (2, 2))))  # (N, 32, 32) uint8
        self.channels, self.resolution, self.num_classes = 1, 32, 10
        self.flip_ok = False  # its shoes and bags all face one way: a flipped copy is not a Fashion-MNIST image

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast path for in-memory data: (B,) indices -> images (B, 1, 32, 32) in [-1, 1], labels (B,)."""
        x = self.images[indices].unsqueeze(1).float() / 127.5 - 1.0
        return x, self.labels[indices]

    def __getitem__(self, item) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        index = item[0] if isinstance(item, tuple) else item
        x, y = self.batch(torch.tensor([index]))
        return x[0], int(y[0]), ()


# --------------------------------------------------------------------------- scikit-image photos

SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "motorcycle_left",
    "motorcycle_right",
    "rocket",
    "hubble_deep_field",
)


class SkimagePhotos(torch.utils.data.Dataset):
    """Random crops of the colour photos bundled with scikit-image: a tiny natural-image set.

    'train' draws a random crop (and flip) per (index, seed); 'test' uses fixed crops
    on a grid. The photos are the same in both splits: this set is for smoke runs and
    resolution tests, not for held-out evaluation.
    """

    def __init__(self, split: str = "train", resolution: int = 32, length: int = 10_000):
        try:
            from skimage import data as skdata
        except ImportError:
            raise DataError("the skimage-photos dataset needs scikit-image: pip install scikit-image") from None
        self.photos = []
        for name in SKIMAGE_PHOTOS:
            try:
                arr = getattr(skdata, name)()
            except Exception:  # a photo that this scikit-image version cannot load locally
                continue
            if arr.ndim == 3 and arr.shape[2] >= 3:
                self.photos.append(Image.fromarray(np.ascontiguousarray(arr[..., :3])))
        if not self.photos:
            raise DataError("no colour photos could be loaded from scikit-image's bundled data")
        self.split, self.resolution, self.channels = split, resolution, 3
        self.flip_ok = True
        self.num_classes = len(self.photos)  # the label of a crop is its photo
        self.length = length if split == "train" else 64 * len(self.photos)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        photo_id = index % len(self.photos)
        img = self.photos[photo_id]
        if self.split == "train":
            rng = np.random.default_rng(seed)
            out = crop_resize(img, self.resolution, rng, 2**31)
            if rng.random() < 0.5:
                out = out[:, ::-1]
        else:  # test: deterministic crops at 1/2 the short side, then resized to the resolution
            rng = np.random.default_rng(index)
            w, h = img.size
            side = min(w, h) // 2
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            out = crop_resize(img.crop((left, top, left + side, top + side)), self.resolution, None, 2**31)
        return torch.from_numpy(out.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0, photo_id, ()


def index_seed(index: int) -> int:
    return int(index) * 7919 + 17


# --------------------------------------------------------------------------- specs


def open_dataset(
    spec: str,
    split: str = "train",
    resolution: int | None = None,
    channels: int | None = None,
    strict: bool = False,
    augment: bool | None = None,
):
    """Build a dataset from a spec string: 'fashion-mnist', 'folder:PATH[?options]' or 'skimage-photos'.

    `split` is 'train' or 'test' ('all' for folders: every file). `augment` (default:
    split == 'train') gives image folders random crops and flips; without it they are
    cropped at fixed places (evaluation, encoding a latent set). `channels` is the
    model's: a colour folder for a 1-channel model is refused, never turned gray."""
    augment = split == "train" if augment is None else augment
    if spec == "fashion-mnist":
        ds = FashionMNIST(split)
        if resolution not in (None, 32):
            raise DataError(f"fashion-mnist is 32x32 (padded); got --resolution {resolution}")
        if channels not in (None, 1):
            raise DataError(
                f"fashion-mnist has 1 channel but the model has {channels}; for training add "
                "--set model.image_channels=1"
            )
        return ds
    if spec.startswith("folder:"):
        if resolution is None:
            raise DataError("folder datasets need a resolution (from the model's image_size or --resolution)")
        return ImageFolder(spec, resolution, channels, split=split, augment=augment, strict=strict)
    if spec == "skimage-photos":
        if channels not in (None, 3):
            raise DataError(
                f"skimage-photos has 3 channels but the model has {channels}; for training add "
                "--set model.image_channels=3"
            )
        return SkimagePhotos(split, resolution or 32)
    raise DataError(f"unknown dataset spec {spec!r}; use 'fashion-mnist', 'folder:PATH' or 'skimage-photos'")


def load_batch(dataset, indices: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) and labels (B,) of `indices` (ints, or (index, augmentation seed) pairs):
    the in-memory fast path where there is one (it has no augmentation)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(torch.tensor([i[0] if isinstance(i, tuple) else i for i in indices]))
    items = [dataset[i] for i in indices]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])


def iter_batches(dataset, n: int, batch_size: int):
    """The first `n` images of `dataset` in order, `batch_size` at a time: (B, C, H, W) tensors."""
    for start in range(0, n, batch_size):
        yield load_batch(dataset, list(range(start, min(start + batch_size, n))))[0]


# --------------------------------------------------------------------------- step-indexed batches


class StepBatches:
    """Batches addressed by global step, so a resumed run continues at the same index.

    Global step k covers positions [k * B, (k + 1) * B) of an endless stream of epochs,
    each a fresh permutation seeded by (seed, epoch), with B the global batch; rank r of
    W takes the contiguous positions [k * B + r * B / W, k * B + (r + 1) * B / W), so the
    global batch is the same for any number of processes. Each item carries its own
    augmentation seed derived from (seed, epoch, index).
    """

    def __init__(
        self, size: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True
    ):
        if batch_size % world_size:
            raise ValueError(f"the global batch {batch_size} does not split over {world_size} processes")
        self.size, self.batch_size, self.world_size, self.rank = size, batch_size, world_size, rank
        self.share = batch_size // world_size
        self.seed, self.shuffle = seed, shuffle
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.randperm(self.size, generator=g))
            else:
                self._perm = (epoch, torch.arange(self.size))
        return self._perm[1]

    def indices(self, step: int) -> list[tuple[int, int]]:
        """[(dataset index, augmentation seed)] for this rank's share of global step `step`."""
        start = step * self.batch_size + self.rank * self.share
        out = []
        for pos in range(start, start + self.share):
            epoch, within = divmod(pos, self.size)
            index = int(self._permutation(epoch)[within])
            out.append((index, (self.seed * 1_000_003 + epoch) * 10_000_019 + index))
        return out


def collate(items: list[tuple[torch.Tensor, int, tuple[str, ...]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """[(image, label, skipped files)] -> images (B, C, H, W), labels (B,), every file skipped for the batch."""
    return (
        torch.stack([i[0] for i in items]),
        torch.tensor([i[1] for i in items]),
        [name for i in items for name in i[2]],
    )


class BatchStream:
    """Iterate training batches from global step `start` on: in-memory fast path or a DataLoader."""

    def __init__(self, dataset, batches: StepBatches, start: int, num_workers: int = 0, pin_memory: bool = False):
        self.dataset, self.batches, self.step = dataset, batches, start
        self.loader = None
        if not hasattr(dataset, "batch"):
            sampler = (batches.indices(s) for s in _count(start))
            self.loader = iter(
                torch.utils.data.DataLoader(
                    dataset,
                    batch_sampler=sampler,
                    collate_fn=collate,
                    num_workers=num_workers,
                    persistent_workers=num_workers > 0,
                    pin_memory=pin_memory,  # page-locked host batches: the copy to the GPU overlaps compute
                    prefetch_factor=4 if num_workers > 0 else None,
                )
            )

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if self.loader is not None:
            batch = next(self.loader)
        else:
            idx = torch.tensor([i for i, _ in self.batches.indices(self.step)])
            x, y = self.dataset.batch(idx)
            batch = (x, y, [])
        self.step += 1
        return batch


def _count(start: int):
    while True:
        yield start
        start += 1
