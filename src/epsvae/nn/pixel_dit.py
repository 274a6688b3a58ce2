"""A Transformer decoder over pixel patches: the paper's architecture ablation against the ADM U-Net.

Same inputs and conditioning as the U-Net (PAPER.md section 2): x_t and the latent z,
nearest-upsampled to the image size, are concatenated on channels; the result is cut into
p x p pixel patches, embedded, given fixed 2-D sin-cos positions and run through DiT blocks
(adaLN-zero, Peebles & Xie 2023) modulated by the flow time's embedding; a final adaLN layer
maps each token back to a p x p patch of velocity. Every block's branches and the output
start at zero, so the untrained decoder predicts zero velocity, as the U-Net's zero output
conv does. Any image size divisible by the patch size decodes (positions are computed for
it); attention is global over all patches, so tiled decoding is not offered for it. The
U-Net's `dropout` and `grad_checkpointing` fields do not apply to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from .dit import FREQ_DIM, DiTBlock, PatchTokens, sincos_2d
from .layers import timestep_embedding, zero_


class PixelDiT(PatchTokens, nn.Module):
    def __init__(self, cfg: DecoderConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dit_hidden, cfg.dit_patch
        self.out_channels = out_channels
        self.patch = nn.Conv2d(in_channels, d, p, stride=p)
        self.t_mlp = nn.Sequential(nn.Linear(FREQ_DIM, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.dit_heads, cfg.dit_mlp_ratio) for _ in range(cfg.dit_depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), zero_(nn.Linear(d, 2 * d)))
        self.out = zero_(nn.Linear(d, p * p * out_channels))
        self._init_embedders()
        self.downsample = 1  # no U-Net levels: any size divisible by the patch size
        self._positions: dict[tuple, torch.Tensor] = {}  # sin-cos tables by (token grid, device, dtype)

    @property
    def output_layer(self) -> nn.Module:
        return self.out

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t (N, C, H, W), t (N,), z (N, Cz, h, w) -> velocity (N, C, H, W)."""
        _, _, h, w = x_t.shape
        p = self.cfg.dit_patch
        if h % p or w % p:
            raise ValueError(f"image height and width must be divisible by the decoder's patch size {p}, got {h}x{w}")
        zc = F.interpolate(z.to(x_t.dtype), size=(h, w), mode="nearest")
        tokens = self.patch(torch.cat([x_t, zc], dim=1)).flatten(2).transpose(1, 2)  # (N, L, D)
        key = (h // p, w // p, tokens.device, tokens.dtype)
        if key not in self._positions:
            self._positions[key] = sincos_2d(self.cfg.dit_hidden, h // p, w // p).to(tokens)
        tokens = tokens + self._positions[key]
        cond = self.t_mlp(timestep_embedding(t, FREQ_DIM).to(tokens.dtype))
        return self._tokens_to_map(tokens, cond, p, self.out_channels, h, w)
