"""DiT: a Transformer over latent patches with adaLN-zero conditioning (Peebles & Xie, 2023).

Latents (N, C, h, w) are cut into p x p patches, embedded, given fixed 2-D sin-cos
positions, and run through blocks whose LayerNorms are modulated by the embedding of
(flow time, class label). Every block's residual branches and the output layer start at
zero, so the untrained network predicts zero velocity and each block starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiTConfig
from .layers import timestep_embedding, zero_

FREQ_DIM = 256  # sinusoidal features of t before the MLP


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (h * w, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ar = lambda k: torch.arange(k, dtype=torch.float64)  # noqa: E731
    rows, cols = torch.meshgrid(ar(h), ar(w), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        args = pos[:, None] * omega[None]
        parts += [torch.sin(args), torch.cos(args)]
    return torch.cat(parts, dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class DiTBlock(nn.Module):
    """Pre-norm Transformer block; adaLN-zero gives each branch a shift, a scale and a gate."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), zero_(nn.Linear(dim, 6 * dim)))
        for m in (self.attn.qkv, self.attn.proj, self.mlp[0], self.mlp[2]):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class PatchTokens:
    """What DiT and the pixel-patch decoder share, over their modules `patch` (p x p conv), `t_mlp`,
    `blocks`, `norm_out`, `ada_out` and `out`: the embedders' initialisation, and running the
    tokens through the blocks and the final adaLN layer back to a (N, C, H, W) map."""

    def _init_embedders(self) -> None:
        w = self.patch.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch.bias)
        for m in self.t_mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def _tokens_to_map(self, tokens: torch.Tensor, cond: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
        """tokens (N, L, D) of an (h/p, w/p) grid, conditioning (N, D) -> (N, c, h, w)."""
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.ada_out(cond).chunk(2, dim=1)
        tokens = self.out(modulate(self.norm_out(tokens), shift, scale))  # (N, L, p * p * c)
        tokens = tokens.reshape(len(tokens), h // p, w // p, p, p, c)
        return tokens.permute(0, 5, 1, 3, 2, 4).reshape(len(tokens), c, h, w)


class DiT(PatchTokens, nn.Module):
    """Velocity network over latents: (x_t (N, C, h, w), t (N,) in [0, 1], labels (N,)) -> (N, C, h, w).

    Label `num_classes` is the null label (classifier-free guidance's unconditional branch).
    Any latent size divisible by the patch size works; positions are computed for it.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.hidden, cfg.patch_size, cfg.latent_channels
        self.patch = nn.Conv2d(c, d, p, stride=p)
        self.t_mlp = nn.Sequential(nn.Linear(FREQ_DIM, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embed = nn.Embedding(cfg.num_classes + 1, d)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), zero_(nn.Linear(d, 2 * d)))
        self.out = zero_(nn.Linear(d, p * p * c))
        self._init_weights()
        n = cfg.latent_size // p
        self.register_buffer("pos", sincos_2d(d, n, n), persistent=False)

    def _init_weights(self) -> None:
        self._init_embedders()
        nn.init.normal_(self.y_embed.weight, std=0.02)

    def positions(self, h: int, w: int) -> torch.Tensor:
        if self.pos.shape[0] == h * w and h == w:
            return self.pos
        return sincos_2d(self.cfg.hidden, h, w).to(self.pos.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"latent height and width must be divisible by the patch size {p}, got {h}x{w}")
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, L, D)
        tokens = tokens + self.positions(h // p, w // p).to(tokens.dtype)
        cond = self.t_mlp(timestep_embedding(t, FREQ_DIM).to(tokens.dtype)) + self.y_embed(y)
        return self._tokens_to_map(tokens, cond, p, c, h, w)


def dit_flops_per_image(cfg: DiTConfig) -> float:
    """Forward multiply-adds x 2 per latent (matmuls only): for throughput reports."""
    length = (cfg.latent_size // cfg.patch_size) ** 2
    d = cfg.hidden
    per_token = cfg.depth * (4 * d * d + 2 * cfg.mlp_ratio * d * d) * 2
    attention = cfg.depth * 2 * length * d * 2
    return length * (per_token + attention)
