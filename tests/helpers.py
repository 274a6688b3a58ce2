"""Test data: a tiny Fashion-MNIST in the official file format, and image folders."""

import gzip
from pathlib import Path

import numpy as np

# eps-fmnist, shrunk to run a step in milliseconds
TINY = [
    "--set", "model.encoder.channels=4",
    "--set", "model.decoder.channels=4",
    "--set", "model.decoder.head_channels=4",
    "--set", "model.discriminator.channels=4",
    "--set", "train.loss.disc_start=1",
    "--set", "train.loss.r1_every=2",
    "--set", "train.log_every=1",
    "--set", "train.warmup=2",
    "--batch-size", "4",
    "--no-progress",
]  # fmt: skip


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 32, noise: int = 40) -> Path:
    """Four idx files: bright squares whose size encodes the label (10 classes), on a background
    of uniform noise below `noise` (1: a flat black background, as Fashion-MNIST's)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, noise, size=(n, 28, 28))
        for i, y in enumerate(labels):
            s = 4 + 2 * y
            images[i, 14 - s // 2 : 14 + s // 2, 14 - s // 2 : 14 + s // 2] = 200 + 5 * y
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_image_folder(root: Path, n: int = 4, size: int = 40, corrupt: int = 1) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n):
        sub = root / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(size, size + 8, 3), dtype=np.uint8)).save(sub / f"img{i}.png")
    for i in range(corrupt):
        (root / "class0" / f"broken{i}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return root


def write_photo_folder(root: Path, n: int = 50, classes: bool = False, corrupt: int = 0) -> Path:
    """`n` RGB photos of mixed sizes (20-60 px a side), half JPEG and half PNG, with smooth
    colour gradients (so crops differ), optionally sorted into three class sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(20, 61, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, size=3)
        img = (base + 90 * np.sin(xx[..., None] / rng.uniform(2, 8) + yy[..., None] / rng.uniform(2, 8) + i)) % 256
        sub = root / f"kind{i % 3}" if classes else root
        sub.mkdir(exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(sub / f"photo{i:03d}.{'jpg' if i % 2 else 'png'}")
    for i in range(corrupt):
        (root / f"broken{i}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return root
