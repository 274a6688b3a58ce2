"""Time-conditioned discriminator for denoising trajectory matching (PAPER.md sections 2, 4).

Input: a pair (x0 or x0_hat, x_t) concatenated on channels, (N, 2C, H, W), and the flow
time t (N,). StyleGAN-style residual blocks with a [1, 3, 3, 1] blur before each x2
downsampling and LeakyReLU(0.2); time enters every block through adaptive GroupNorm
(AdaGN). The head pools over space and gives one logit per image: the pair is judged
as a whole (is this x0 a plausible end of this trajectory?), and pooling keeps the
network resolution-agnostic, so the same weights work at every training resolution.
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
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), stride=2, groups=c)


class AdaGN(nn.Module):
    def __init__(self, channels: int, emb_channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.proj = nn.Linear(emb_channels, 2 * channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class DiscBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_channels: int):
        super().__init__()
        self.norm1 = AdaGN(cin, emb_channels)
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1)
        self.norm2 = AdaGN(cin, emb_channels)
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
        self.blocks = nn.ModuleList(
            DiscBlock(widths[max(i - 1, 0)], widths[i], self.emb_channels) for i in range(len(widths))
        )
        self.out_norm = norm(widths[-1])
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, pair: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """pair (N, 2C, H, W), t (N,) -> logits (N,)."""
        emb = self.time_embed(timestep_embedding(t, self.channels).to(pair.dtype))
        h = self.conv_in(pair)
        for block in self.blocks:
            h = block(h, emb)
        h = F.leaky_relu(self.out_norm(h), 0.2).mean(dim=(2, 3))
        return self.out(h).squeeze(1)
