"""ADM U-Net (Dhariwal & Nichol 2021) as ε-VAE's diffusion decoder.

The latent z is upsampled to the image size by nearest neighbour and concatenated to
x_t on channels (PAPER.md section 2), so the net sees image + latent channels and
predicts a velocity with the image's channels. Laid out the EDM way: a ModuleDict per
path keyed by level, so state-dict keys read `enc.l2_block0.conv1.weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import DecoderConfig
from .layers import AttentionBlock, ResBlock, norm, set_padding_mode, timestep_embedding, zero_


class UNet(nn.Module):
    def __init__(self, cfg: DecoderConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        emb_ch = 4 * ch  # ADM: time MLP of width 4x model channels
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        levels = len(cfg.channel_mult)

        def block(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_channels=emb_ch, resample=resample, dropout=cfg.dropout)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, cfg.head_channels)

        self.enc = nn.ModuleDict()
        cout = ch * cfg.channel_mult[0]
        self.enc["l0_conv"] = nn.Conv2d(in_channels, cout, 3, padding=1)
        skips = [cout]
        for level, mult in enumerate(cfg.channel_mult):
            if level > 0:
                self.enc[f"l{level}_down"] = block(cout, cout, "down") if cfg.resblock_updown else nn.AvgPool2d(2)
                skips.append(cout)
            for i in range(cfg.num_res_blocks):
                cin, cout = cout, ch * mult
                self.enc[f"l{level}_block{i}"] = block(cin, cout)
                if level in cfg.attn_levels:
                    self.enc[f"l{level}_attn{i}"] = attn(cout)
                skips.append(cout)

        self.mid = nn.ModuleDict({"block0": block(cout, cout), "attn": attn(cout), "block1": block(cout, cout)})

        self.dec = nn.ModuleDict()
        for level in reversed(range(levels)):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks + 1):
                cin, cout = cout + skips.pop(), ch * mult
                self.dec[f"l{level}_block{i}"] = block(cin, cout)
                if level in cfg.attn_levels:
                    self.dec[f"l{level}_attn{i}"] = attn(cout)
            if level > 0:
                self.dec[f"l{level}_up"] = (
                    block(cout, cout, "up") if cfg.resblock_updown else nn.Upsample(scale_factor=2.0)
                )
        self.out_norm = norm(cout)
        self.out_conv = zero_(nn.Conv2d(cout, out_channels, 3, padding=1))
        self.downsample = 2 ** (levels - 1)
        set_padding_mode(self, cfg.padding_mode)

    @property
    def output_layer(self) -> nn.Module:
        return self.out_conv

    def _run(self, layer: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, (ResBlock, AttentionBlock)):
            if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                return checkpoint(layer, x, emb, use_reentrant=False)
            return layer(x, emb)
        return layer(x)

    # The forward pass in pieces, so tiled decoding (epsvae.tiling) can run the levels it
    # cuts per tile and the rest globally without a second copy of this logic.

    def stem(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (N, C, H, W), t (N,), z (N, Cz, h, w) -> (x_t and nearest-upsampled z on channels, time embedding)."""
        zc = F.interpolate(z.to(x_t.dtype), size=x_t.shape[-2:], mode="nearest")
        return torch.cat([x_t, zc], dim=1), self.embed(t, x_t.dtype)

    def embed(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Flow times t (N,) -> time embedding (N, 4 * channels)."""
        return self.time_embed(timestep_embedding(t, self.cfg.channels).to(dtype))

    def run_enc(self, x: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor], names=None) -> torch.Tensor:
        """Encoder layers `names` (default all, in order); appends their skip tensors to `skips`."""
        for name in names if names is not None else self.enc:
            x = self._run(self.enc[name], x, emb)
            if "attn" not in name:  # the skip leaves after the attention of its block
                skips.append(x)
            else:
                skips[-1] = x
        return x

    def run_mid(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self.mid.values():
            x = self._run(layer, x, emb)
        return x

    def run_dec(self, x: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor], names=None) -> torch.Tensor:
        """Decoder layers `names` (default all, in order); each block pops its skip from `skips`."""
        for name in names if names is not None else self.dec:
            if "block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._run(self.dec[name], x, emb)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(F.silu(self.out_norm(x)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t (N, C, H, W), t (N,), z (N, Cz, h, w) -> velocity (N, C, H, W)."""
        x, emb = self.stem(x_t, t, z)
        skips: list[torch.Tensor] = []
        x = self.run_mid(self.run_enc(x, emb, skips), emb)
        return self.head(self.run_dec(x, emb, skips))


def level_of(name: str) -> int:
    """U-Net level of an `enc`/`dec` layer name: 'l2_block0' -> 2 (0 = full resolution)."""
    return int(name[1 : name.index("_")])
