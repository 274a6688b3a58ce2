"""Image helpers: [-1, 1] float tensors <-> uint8, and PNG grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


class NonFiniteImages(ValueError):
    """Decoded or sampled images with NaN/Inf pixels: an error, never silently black or white pixels."""


def check_finite(x: torch.Tensor) -> torch.Tensor:
    """`x` (N, ...) unchanged, or a NonFiniteImages error naming how many images hold NaN/Inf."""
    finite = torch.isfinite(x)
    if not finite.all():
        bad = int((~finite).flatten(1).any(1).sum())
        raise NonFiniteImages(
            f"{bad} of {len(x)} decoded images hold NaN or infinite pixels (clipping would have made them black): "
            "the model's weights or its inputs are not finite"
        )
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W), clipped; NaN or Inf is a NonFiniteImages error."""
    x = check_finite(x.detach().float().cpu())
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def save_grid(rows: list[torch.Tensor | np.ndarray], path: str | Path, pad: int = 2, scale: int = 1) -> Path:
    """Save rows of images ((N, C, H, W), float in [-1, 1] or uint8) as one PNG, one row per entry."""
    rows = [to_uint8(r) if isinstance(r, torch.Tensor) else r for r in rows]
    n = max(len(r) for r in rows)
    c, h, w = rows[0].shape[1:]
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
