"""The conv encoder (shared by ε-VAE and the VAE) and the VAE baseline's deterministic decoder.

Encoder, PAPER.md section 2: VQGAN/MaskGIT-style GroupNorm+SiLU residual blocks with
average-pool downsampling (*lite*), or the Stable Diffusion KL-VAE encoder (strided-conv
downsampling and a mid attention block, *SD*). The VAE decoder mirrors the lite encoder
and upsamples by a 3x3 conv to 4x channels followed by depth-to-space (pixel shuffle),
the layout that reproduces the paper's VAE decoder parameter counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig, EncoderConfig
from .layers import AttentionBlock, ResBlock, norm, set_padding_mode


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, image_channels: int):
        super().__init__()
        ch = cfg.channels
        cout = ch * cfg.channel_mult[0]
        layers: list[nn.Module] = [nn.Conv2d(image_channels, cout, 3, padding=1)]
        for level, mult in enumerate(cfg.channel_mult):
            if level > 0:
                if cfg.downsample_conv:  # SD pads right/bottom by one, then a stride-2 3x3 conv
                    layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cout, cout, 3, stride=2)]
                else:
                    layers.append(nn.AvgPool2d(2))
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cout, ch * mult))
                cout = ch * mult
        for i in range(cfg.extra_blocks):
            layers.append(ResBlock(cout, cout))
            if cfg.mid_attention and i == 0:
                layers.append(AttentionBlock(cout, head_channels=cout))  # SD: one head
        out = cfg.latent_channels * (2 if cfg.gaussian else 1)
        layers += [norm(cout), nn.SiLU(), nn.Conv2d(cout, out, cfg.out_kernel, padding=cfg.out_kernel // 2)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, Cz or 2*Cz, H/f, W/f); with `gaussian`, mean and logvar stacked on channels."""
        return self.layers(x)


class PixelShuffleUp(nn.Module):
    """x2 upsampling: 3x3 conv to 4x channels, then depth-to-space."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class VAEDecoder(nn.Module):
    """Deterministic decoder, the mirror of the lite encoder: z (N, Cz, h, w) -> image (N, C, H, W)."""

    def __init__(self, cfg: DecoderConfig, latent_channels: int, image_channels: int):
        super().__init__()
        ch = cfg.channels
        cout = ch * cfg.channel_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, cout, 3, padding=1)]
        layers += [ResBlock(cout, cout) for _ in range(cfg.num_res_blocks)]  # bottom blocks
        for level in reversed(range(len(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cout, ch * cfg.channel_mult[level]))
                cout = ch * cfg.channel_mult[level]
            if level > 0:
                layers.append(PixelShuffleUp(cout))
        layers += [norm(cout), nn.SiLU(), nn.Conv2d(cout, image_channels, 3, padding=1)]
        self.layers = set_padding_mode(nn.Sequential(*layers), cfg.padding_mode)
        self.downsample = 2 ** (len(cfg.channel_mult) - 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)
