"""Building blocks shared by the encoder, the decoders and the discriminator.

One residual block serves all of them: with an embedding it is ADM's block
(scale-shift norm, Dhariwal & Nichol 2021, App. A), without one it is the plain
VQGAN/MaskGIT block used by the encoder and the VAE decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of `channels` below 32 (tiny test nets)."""
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (ADM's output convs start at zero)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def set_padding_mode(module: nn.Module, mode: str) -> nn.Module:
    """Make every padded conv in `module` pad with `mode` ('zeros', 'reflect', 'replicate');
    nn.Conv2d then pads with F.pad before an unpadded conv. Returns `module`."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and any(m.padding):
            m.padding_mode = mode
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1], shape (N,) -> (N, dim).

    t is scaled by 1000 so the frequencies cover the same range as ADM's integer
    timesteps did.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Resample(nn.Module):
    """x2 nearest upsampling or x2 average pooling; identity when `mode` is None."""

    def __init__(self, mode: str | None):
        super().__init__()
        if mode not in (None, "up", "down"):
            raise ValueError(f"resample mode must be None, 'up' or 'down', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.mode == "down":
            return F.avg_pool2d(x, 2)
        return x


class ResBlock(nn.Module):
    """Residual block, optionally conditioned on an embedding and optionally resampling.

    With `emb_channels` the embedding is projected to a per-channel (scale, shift)
    applied after the second norm (ADM's `use_scale_shift_norm`), and the last conv
    starts at zero so the block starts as the identity (or as its skip path).
    `resample` ('up'/'down') rescales both paths inside the block, as ADM's
    `resblock_updown` and BigGAN do.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        emb_channels: int | None = None,
        resample: str | None = None,
        dropout: float = 0.0,
        zero_out: bool | None = None,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = norm(in_channels)
        self.resample = Resample(resample)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, 2 * out_channels) if emb_channels else None
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if zero_out if zero_out is not None else emb_channels is not None:
            zero_(self.conv2)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h = self.conv1(self.resample(h))
        x = self.resample(x)
        h = self.norm2(h)
        if self.emb is not None:
            if emb is None:
                raise ValueError("this block is conditioned: pass an embedding")
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions with a residual connection."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        # (3, N, heads, HW, C/heads) with the channel dimension contiguous: the fused kernels
        # (flash, memory-efficient) need stride 1 there; strided views fall back to the math
        # kernel, which materialises the HW x HW matrix (75 GiB for eps-sd-B at 512 px, batch 16)
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous()
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)
