"""Time-conditioned discriminator for denoising trajectory matching (PAPER.md sections 2, 4).

Input: a pair (x0 or x0_hat, x_t) concatenated on channels, (N, 2C, H, W), and the flow
time t (N,). StyleGAN-style residual blocks with a [1, 3, 3, 1] blur before each x2
downsampling and LeakyReLU(0.2); time enters every block through adaptive GroupNorm
(AdaGN). Three heads (`DiscriminatorConfig.head`):

- `pool` (default, as before): GroupNorm, global mean pool, linear; one logit per image,
  resolution-agnostic, but blind to global intensity and to where an artefact sits;
- `stylegan`: StyleGAN2's epilogue: the feature map (average-pooled to 4x4 if larger),
  minibatch standard deviation (one extra channel), 3x3 conv, flatten, two linears;
  one logit per image that sees positions and the batch's diversity;
- `patch`: a 1x1 conv on the last feature map; one logit per patch (N, h*w), each
  judging its receptive field (PatchGAN-style); the losses average over patches.

`group_channels` sets the channels per GroupNorm group in every AdaGN (0: 32 groups,
the default; with 32 channels that is one channel per group, instance norm, which
removes each channel's mean and scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiscriminatorConfig
from .layers import norm, timestep_embedding


class BlurDown(nn.Module):
    """Anti-aliased x2 downsampling: a fixed separable [1, 3, 3, 1] blur, stride 2."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):  # the CPU's depthwise conv backward is 3x slower in bf16
                return self.forward(x.float())
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), stride=2, groups=c)


HEADS = ("pool", "stylegan", "patch")


def group_norm(channels: int, group_channels: int) -> nn.GroupNorm:
    """GroupNorm with about `group_channels` channels per group (0: `layers.norm`, 32 groups)."""
    if group_channels <= 0:
        return norm(channels)
    target = max(1, channels // group_channels)
    groups = max(g for g in range(1, target + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def minibatch_std(x: torch.Tensor, group: int) -> torch.Tensor:
    """StyleGAN's minibatch standard deviation: x (N, C, H, W) -> (N, C + 1, H, W).

    Images are split into consecutive groups of `group` (the largest divisor of N not above
    it); the extra channel is, for each image, the mean over C, H, W of the standard
    deviation across its group. Groups of consecutive images (StyleGAN2 strides them
    instead) keep the groups, and so the logits, the same when a batch is split into
    micro-batches whose size is a multiple of `group`."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    y = x.float().reshape(n // g, g, c, h, w)
    y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // g,)
    y = y.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class AdaGN(nn.Module):
    def __init__(self, channels: int, emb_channels: int, group_channels: int = 0):
        super().__init__()
        self.norm = group_norm(channels, group_channels)
        self.proj = nn.Linear(emb_channels, 2 * channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class DiscBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_channels: int, group_channels: int = 0):
        super().__init__()
        self.norm1 = AdaGN(cin, emb_channels, group_channels)
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1)
        self.norm2 = AdaGN(cin, emb_channels, group_channels)
        self.conv2 = nn.Conv2d(cin, cout, 3, padding=1)
        self.down = BlurDown()
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.norm1(x, emb), 0.2))
        h = self.conv2(F.leaky_relu(self.norm2(h, emb), 0.2))
        return (self.skip(self.down(x)) + self.down(h)) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, image_channels: int):
        super().__init__()
        ch = cfg.channels
        self.emb_channels = 4 * ch
        self.time_embed = nn.Sequential(
            nn.Linear(ch, self.emb_channels), nn.SiLU(), nn.Linear(self.emb_channels, self.emb_channels), nn.SiLU()
        )
        self.channels = ch
        self.conv_in = nn.Conv2d(2 * image_channels, ch * cfg.channel_mult[0], 3, padding=1)
        widths = [ch * m for m in cfg.channel_mult]
        gc = cfg.group_channels
        self.blocks = nn.ModuleList(
            DiscBlock(widths[max(i - 1, 0)], widths[i], self.emb_channels, gc) for i in range(len(widths))
        )
        self.head, self.mbstd_group, c = cfg.head, cfg.mbstd_group, widths[-1]
        if cfg.head not in HEADS:
            raise ValueError(f"unknown discriminator head {cfg.head!r}; use one of {', '.join(HEADS)}")
        if cfg.head == "stylegan":  # StyleGAN2's epilogue at 4x4
            self.out_conv = nn.Conv2d(c + 1, c, 3, padding=1)
            self.out_fc = nn.Linear(c * 16, c)
            self.out = nn.Linear(c, 1)
        else:
            self.out_norm = group_norm(c, gc)
            self.out = nn.Conv2d(c, 1, 1) if cfg.head == "patch" else nn.Linear(c, 1)
        self.reduction = 2 ** len(widths)  # image size / last feature map size

    def forward(self, pair: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """pair (N, 2C, H, W), t (N,) -> logits (N,), or (N, patches) with the patch head."""
        emb = self.time_embed(timestep_embedding(t, self.channels).to(pair.dtype))
        h = self.conv_in(pair)
        for block in self.blocks:
            h = block(h, emb)
        if self.head == "stylegan":
            if min(h.shape[-2:]) < 4:
                raise ValueError(
                    f"the stylegan head needs a 4x4 feature map: images of at least {4 * self.reduction} px "
                    f"for {len(self.blocks)} blocks, got {tuple(pair.shape[-2:])}"
                )
            if h.shape[-2:] != (4, 4):
                h = F.adaptive_avg_pool2d(h, 4)
            h = F.leaky_relu(self.out_conv(minibatch_std(h, self.mbstd_group)), 0.2)
            h = F.leaky_relu(self.out_fc(h.flatten(1)), 0.2)
            return self.out(h).squeeze(1)
        h = F.leaky_relu(self.out_norm(h), 0.2)
        if self.head == "patch":
            return self.out(h).flatten(1)
        return self.out(h.mean(dim=(2, 3))).squeeze(1)
