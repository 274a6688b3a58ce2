"""Image folders: any tree of photos as a dataset, with a held-out split that never trains.

Spec: `folder:PATH` or `folder:PATH?key=value&key=value`, keys:

- `holdout` (default 0.1): the fraction of files held out as the test split. A file is
  held out when a hash of its path relative to PATH falls under the fraction, so the
  split is the same on every machine and for every command, does not depend on the
  order files are listed in, and a file keeps its side when others are added. A folder
  with `train/` and `test/` (or `val/`, `validation/`) sub-folders uses those instead.
- `crop` (default `resize`): `resize` scales the short side to the resolution and crops
  a square (random with a flip for training, centred for evaluation): the ImageNet
  recipe, for photos about the resolution's size. `patch` cuts squares whose side is
  drawn log-uniformly between the resolution and the photo's short side, then scales
  them to the resolution: many different views of each large photo (and of each
  held-out photo, at fixed places).
- `per_image` (default 1): items per file and epoch (`crop=patch`: patches per photo).
- `cache_mb` (default 512): decoded images kept in memory (least recently used first
  out): a small folder of large photos is decoded once, not once per crop.

Images are read with their EXIF orientation applied; 16-bit images are scaled by their
full range (65535) and float images by [0, 1] (or by their own min and max when they
leave it) before quantising to 8 bits; grayscale files in a colour folder are
replicated to RGB, and a colour folder is never silently turned gray.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "validation")}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class DataError(ValueError):
    """A dataset that cannot be found, read or used."""


@dataclass(frozen=True)
class FolderSpec:
    """A parsed `folder:PATH?...` spec (see the module docstring)."""

    root: Path
    holdout: float = 0.1
    crop: str = "resize"
    per_image: int = 1
    cache_mb: int = 512

    @classmethod
    def parse(cls, spec: str) -> FolderSpec:
        body = spec[len("folder:") :] if spec.startswith("folder:") else spec
        path, _, query = body.partition("?")
        if not path:
            raise DataError("a folder spec needs a path: folder:PATH")
        kinds = {f.name: f.type for f in fields(cls) if f.name != "root"}
        values: dict[str, object] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in kinds:
                raise DataError(f"unknown folder option {key!r} in {spec!r}; valid: {', '.join(kinds)}")
            kind = str(kinds[key])
            try:
                values[key] = {"float": float, "int": int, "str": str}[kind](value)
            except ValueError:
                word = {"float": "a number", "int": "an integer"}[kind]
                raise DataError(f"folder option {key} must be {word}, got {value!r}") from None
        out = cls(Path(path).expanduser(), **values)
        if not 0 <= out.holdout < 1:
            raise DataError(f"holdout must be in [0, 1), got {out.holdout}")
        if out.crop not in ("resize", "patch"):
            raise DataError(f"crop must be 'resize' or 'patch', got {out.crop!r}")
        if out.per_image < 1 or out.cache_mb < 0:
            raise DataError("per_image must be at least 1 and cache_mb at least 0")
        return out


def holdout_value(relative_path: str) -> float:
    """A uniform number in [0, 1) from a file's relative path: the hash behind the split."""
    digest = hashlib.sha256(relative_path.replace("\\", "/").encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_files(spec: FolderSpec, split: str) -> tuple[list[Path], list[Path]]:
    """(files of `split`, the roots their class labels are relative to)."""
    root = spec.root
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    explicit = {s: next((root / d for d in names if (root / d).is_dir()), None) for s, names in SPLIT_DIRS.items()}
    if all(explicit.values()):  # train/ and test/ (or val/) sub-folders: those are the splits
        roots = [explicit[s] for s in (("train", "test") if split == "all" else (split,))]
        return [f for r in roots for f in _images_under(r)], roots
    files = _images_under(root)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    if split == "all":
        return files, [root]
    u = [holdout_value(str(f.relative_to(root))) for f in files]
    test = {i for i, v in enumerate(u) if v < spec.holdout}
    if not test and spec.holdout > 0 and len(files) > 1:
        test = {int(np.argmin(u))}  # a tiny folder still gets one held-out file
    if split == "test" and not test:
        raise DataError(f"{root} has no held-out files (holdout={spec.holdout}); use folder:{root}?holdout=0.1")
    chosen = [f for i, f in enumerate(files) if (i in test) == (split == "test")]
    if not chosen:
        raise DataError(f"{root} has no {split} files")
    return chosen, [root]


def native_channels(files: list[Path], samples: int = 32) -> int:
    """3 if any of up to `samples` files spread over `files` is in colour, else 1 (headers only)."""
    for i in sorted({(k * len(files)) // samples for k in range(samples)}):
        try:
            with Image.open(files[i]) as img:
                if img.mode not in GRAY_MODES:
                    return 3
        except (OSError, ValueError):
            continue  # unreadable files are skipped (and logged) when read
    return 1


def to_8bit(img: Image.Image, channels: int) -> Image.Image:
    """An 8-bit 'RGB' (channels 3) or 'L' (channels 1) image; 16-bit and float data scaled by their real range."""
    mode = "RGB" if channels == 3 else "L"
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("non-finite pixel values")
        lo, hi = (0.0, 1.0) if img.mode == "F" else (0.0, 65535.0)
        if a.min() < lo or a.max() > hi:  # outside the nominal range: use the image's own
            lo, hi = float(a.min()), max(float(a.max()), float(a.min()) + 1e-12)
        img = Image.fromarray(np.round((a - lo) / (hi - lo) * 255).astype(np.uint8))
    return img.convert(mode)


def read_image(path: Path, channels: int, max_pixels: int) -> Image.Image:
    """Decode an image file to 8-bit RGB or L, EXIF orientation applied; refuse decompression bombs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with Image.open(path) as img:
                img.load()
                return to_8bit(ImageOps.exif_transpose(img), channels)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _scaled(img: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The square `box` (left, top, right, bottom) of `img` resized to uint8 (size, size, channels)."""
    # reducing_gap: shrink by an integer factor first (box filter), then bicubic: the same
    # result within rounding for large reductions, several times faster for big photos
    out = np.asarray(img.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0))
    return out if out.ndim == 3 else out[..., None]


def crop_resize(img: Image.Image, resolution: int, rng: np.random.Generator | None, max_pixels: int) -> np.ndarray:
    """Short side to `resolution`, then a square (random if `rng`, else centred): uint8 (H, W, C)."""
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if new_w * new_h > max_pixels:  # a 1 x 300000 strip would become gigapixels before cropping
        raise ValueError(f"a {w}x{h} image would be resized to {new_w}x{new_h} (over the {max_pixels}-pixel limit)")
    # crop in the original's coordinates, then resize only the square: no full-size intermediate
    side = min(w, h)
    if rng is None:
        left, top = (w - side) / 2, (h - side) / 2
    else:
        left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
    return _scaled(img, (left, top, left + side, top + side), resolution)


def crop_patch(img: Image.Image, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """A square of side log-uniform in [resolution, short side], at a random place, scaled to `resolution`."""
    w, h = img.size
    short = min(w, h)
    hi = max(short, resolution)
    side = min(short, round(math.exp(rng.uniform(math.log(resolution), math.log(hi)))))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return _scaled(img, (left, top, left + side, top + side), resolution)


def _nbytes(img: Image.Image) -> int:
    return img.width * img.height * len(img.getbands())


class ImageFolder(torch.utils.data.Dataset):
    """The images of one split of a folder spec. Class labels from first-level sub-folders, if any.

    Item lookups take an index or an (index, seed) pair: all randomness of a training
    crop comes from the seed. Unreadable files are skipped (the next file is used) and
    named in the item; `strict=True` raises instead.
    """

    def __init__(
        self,
        spec: str | Path | FolderSpec,
        resolution: int,
        channels: int | None = None,
        split: str = "all",
        augment: bool = False,
        strict: bool = False,
        max_pixels: int = 89_478_485,  # PIL's default bomb limit
    ):
        if not isinstance(spec, FolderSpec):
            spec = FolderSpec.parse(str(spec))
        if split not in ("train", "test", "all"):
            raise DataError(f"image folders have splits 'train', 'test' and 'all', not {split!r}")
        self.spec, self.root = spec, spec.root
        self.files, roots = split_files(spec, split)
        rel = [self._relative(f, roots) for f in self.files]
        classes = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.labels = [self.class_index[r.parts[0]] if len(r.parts) > 1 else -1 for r in rel]
        self.num_classes = len(classes)  # 0 without class sub-folders
        self.native_channels = native_channels(self.files)
        if channels == 1 and self.native_channels == 3:
            raise DataError(
                f"{self.root} holds colour images but the model has 1 image channel; for training add "
                "--set model.image_channels=3 (or convert the images to grayscale yourself)"
            )
        self.channels = channels or self.native_channels
        self.resolution, self.split, self.augment, self.strict = resolution, split, augment, strict
        self.max_pixels = max_pixels
        self.flip_ok = True
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._cache_bytes = 0

    @staticmethod
    def _relative(path: Path, roots: list[Path]) -> Path:
        return next(path.relative_to(r) for r in roots if path.is_relative_to(r))

    def __len__(self) -> int:
        return len(self.files) * self.spec.per_image

    def _decoded(self, i: int) -> Image.Image:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        img = read_image(self.files[i], self.channels, self.max_pixels)
        limit, size = self.spec.cache_mb * 2**20, _nbytes(img)
        if size <= limit:
            self._cache[i] = img
            self._cache_bytes += size
            while self._cache_bytes > limit:
                self._cache_bytes -= _nbytes(self._cache.popitem(last=False)[1])
        return img

    def _view(self, img: Image.Image, index: int, seed: int | None) -> torch.Tensor:
        train = self.augment and seed is not None
        if self.spec.crop == "patch":  # evaluation patches: fixed per (file, patch number)
            rel = str(self.files[index // self.spec.per_image].relative_to(self.root))
            fixed = int(holdout_value(f"{rel}#{index % self.spec.per_image}") * 2**62)
            rng = np.random.default_rng(seed if train else fixed)
            out = crop_patch(img, self.resolution, rng)
        else:
            rng = np.random.default_rng(seed) if train else None
            out = crop_resize(img, self.resolution, rng, self.max_pixels)
        if train and rng.random() < 0.5:
            out = out[:, ::-1]
        return torch.from_numpy(out.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0

    def __getitem__(self, item) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        """item: index or (index, seed) -> (image (C, H, W) in [-1, 1], label, the files skipped to get it)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        skipped: list[str] = []
        n = len(self.files)
        for attempt in range(min(n, 50)):
            i = (index // self.spec.per_image + attempt) % n
            path = self.files[i]
            try:
                img = self._decoded(i)
                x = self._view(img, i * self.spec.per_image + index % self.spec.per_image, seed)
            except (
                OSError,
                ValueError,
                MemoryError,
                Image.DecompressionBombError,
                Image.DecompressionBombWarning,
            ) as exc:
                reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                if self.strict:
                    raise DataError(f"cannot read image {path}: {reason}") from None
                skipped.append(f"{path}\t{reason}")
                continue
            return x, self.labels[i], tuple(skipped)
        raise DataError(f"no readable image found near index {index} in {self.root}")
