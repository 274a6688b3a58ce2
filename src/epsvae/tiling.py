"""Tiled U-Net evaluation: decode images of any size with bounded memory.

Every sampler step evaluates the U-Net on the whole current state x_t (one global noise
canvas: the tiles never draw their own noise). Tiling only changes how that one network
call is computed. With a split level S (levels 0..S-1 are cut into tiles, S and below run
whole), one call is three phases:

  A. per tile: crop x_t and z (the tile plus `overlap` pixels of context on each side), run
     the encoder levels < S and the downsampling block into level S; keep the tile's own
     part of the level-S map                                     -> one global level-S map
  B. once:     the rest of the encoder, the middle and the decoder levels >= S on the whole
     low-resolution map (attention there is global, as untiled)   -> global level-S output
  C. per tile: the encoder levels < S again (their skips are recomputed, not stored: that is
     what bounds memory), then the decoder from a crop of B's map up to full resolution;
     keep the tile's own part of the velocity, blended across seams.

Exactness. A 3x3 conv at level l sees 2^l pixels further on each side, so the context a
tile needs (`receptive_margin`) is the sum of those along the deepest path; with at least
that overlap, a tile's own region is computed from exactly the inputs the untiled net sees.
Two things are not local:
  * GroupNorm normalises with statistics over the whole image. Tiles are normalised with
    global statistics gathered from every tile's own region (sums in float64). The
    statistics of one norm depend on the earlier norms, so a phase is repeated with the
    statistics measured in its previous pass until they stop changing: phase A until the
    encoder's statistics settle, then phase B once, then phase C until the decoder's settle
    (`norm_passes` caps each; at most one pass per norm of the phase plus one, usually far
    fewer). At that fixed point every norm uses the untiled statistics.
  * Attention at a tiled level sees only its tile's crop (windowed attention): an
    approximation, which the seam blending softens. Levels >= S hold global attention.
So without attention at levels < S, tiled equals untiled up to float rounding.

Host memory. On the CPU, glibc raises its mmap threshold after large frees and then serves
the next tiles' large buffers from a heap it does not shrink, so a tiled decode's resident
memory grows well past one tile's working set (at 1024 px: 0.73 GiB above the model instead
of 0.33). While a tiled call runs on the CPU, buffers of 1 MiB or more get their own pages
that go back to the system when freed, and free heap pages are handed back after every tile
(`lean_host_heap`, `release_host_memory`; Linux glibc only; costs about 1.3x the time in
page faults; `TileConfig.trim_host=False` turns it off).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import sys
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .nn.layers import ResBlock
from .nn.unet import UNet, level_of

Span = tuple[int, int, int, int]  # (crop start, crop stop, own start, own stop) along one axis, pixels


@dataclass(frozen=True)
class TileConfig:
    """How to cut an image into tiles. Sizes are in output pixels."""

    size: int = 512  # side of the region each tile owns
    overlap: int | None = None  # context on each side; default: the receptive margin (exact)
    max_global: int = 256 * 256  # largest map (H x W positions) run whole: sets the split level
    norm_passes: int | None = None  # cap on GroupNorm statistics passes; None: until they converge
    norm_tol: float = 1e-6  # converged when statistics move less than this many standard deviations
    trim_host: bool = True  # on the CPU: large buffers on their own pages, free pages returned per tile (glibc)


# --------------------------------------------------------------------------- layout (pure)


def split_level(unet: UNet, height: int, width: int, max_global: int) -> int:
    """The shallowest level S >= 1 whose map (H / 2^S x W / 2^S) has at most `max_global` positions."""
    levels = len(unet.cfg.channel_mult)
    for s in range(1, levels):
        if (height >> s) * (width >> s) <= max_global:
            return s
    return levels - 1


def windowed_levels(unet: UNet, split: int) -> list[int]:
    """Attention levels that tiles cut (windowed, hence approximate); empty means exact."""
    return [level for level in unet.cfg.attn_levels if level < split]


def _grow(layer: nn.Module, m: int, level: int) -> int:
    """Invalid border width (full-resolution pixels) after `layer` at `level`, from `m` before it."""
    if isinstance(layer, ResBlock):
        if layer.resample.mode == "down":  # pooling to `level` rounds the border up to whole cells
            m = -(-m // 2**level) * 2**level
        elif layer.resample.mode == "up":  # its convs run at the finer level below
            level -= 1
        return m + 2 * 2**level  # two 3x3 convs
    if isinstance(layer, nn.AvgPool2d):
        return -(-m // 2**level) * 2**level
    if isinstance(layer, nn.Conv2d):
        return m + (layer.kernel_size[0] // 2) * 2**level
    return m  # nearest upsampling; attention (windowed at tiled levels, by design)


def receptive_margin(unet: UNet, split: int) -> int:
    """Context (pixels on each side) a tile needs so that its own region is exact: the deepest
    path of 3x3 convs through phase A, and through phases C (the recomputed skips included)."""
    m, skips = 0, []
    for name in phase_a(unet, split):
        m = _grow(unet.enc[name], m, level_of(name))
        if "attn" not in name:
            skips.append(m)
    margin_a = m
    skips.pop()  # the level-S skip comes from the global map, which is exact everywhere
    m = 0
    for name in phase_c_dec(unet, split):
        if "block" in name:
            m = max(m, skips.pop())
        m = _grow(unet.dec[name], m, level_of(name))
    return max(margin_a, _grow(unet.out_conv, m, 0))


def spans(length: int, size: int, overlap: int) -> list[Span]:
    """Cut [0, length) into owned runs of `size` (the last may be shorter), each with `overlap` context."""
    return [
        (max(0, a - overlap), min(length, a + size + overlap), a, min(length, a + size)) for a in range(0, length, size)
    ]


def ramp(span: Span, length: int, blend: int) -> torch.Tensor:
    """1-D blending weight over a span's crop: 1 on its own run, linear ramps of width `blend`
    centred on inner edges (none at the image border). Neighbours' weights sum to 1."""
    c0, c1, a, b = span
    p = torch.arange(c0, c1, dtype=torch.float64) + 0.5  # pixel centres
    if blend <= 0:
        return ((p > a) & (p < b)).double()
    left = torch.ones_like(p) if a == 0 else ((p - a) / blend + 0.5).clamp(0, 1)
    right = torch.ones_like(p) if b == length else ((b - p) / blend + 0.5).clamp(0, 1)
    return torch.minimum(left, right)


def phase_a(unet: UNet, split: int) -> list[str]:
    return [n for n in unet.enc if level_of(n) < split or n == f"l{split}_down"]


def phase_b_enc(unet: UNet, split: int) -> list[str]:
    return [n for n in unet.enc if level_of(n) >= split and n != f"l{split}_down"]


def phase_b_dec(unet: UNet, split: int) -> list[str]:
    return [n for n in unet.dec if level_of(n) >= split and n != f"l{split}_up"]


def phase_c_dec(unet: UNet, split: int) -> list[str]:
    return [n for n in unet.dec if level_of(n) < split or n == f"l{split}_up"]


# --------------------------------------------------------------------------- GroupNorm with global statistics


class NormState:
    """Global GroupNorm statistics for the tiled levels: the ones in use and the sums being gathered."""

    def __init__(self) -> None:
        self.stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}  # (N, G) mean, var (float64)
        self.sums: dict[nn.GroupNorm, list] = {}
        self.pending: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}  # measured, for the next call
        self.collect = False
        self.crop: tuple[int, int, int, int] | None = None  # y0, y1, x0, x1 of the current tile's crop
        self.own: tuple[int, int, int, int] | None = None
        self.passes = 0  # passes run over all calls that shared this state

    def measured(self) -> dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for module, (s1, s2, count) in self.sums.items():
            mean = s1 / count
            out[module] = (mean, (s2 / count - mean**2).clamp_min(0))
        return out


def converged(old: dict, new: dict, tol: float) -> bool:
    """Whether every statistic moved by at most `tol` standard deviations."""
    if old.keys() != new.keys():
        return False
    for module, (mean, var) in new.items():
        std = (var + module.eps).sqrt()
        if ((old[module][0] - mean).abs() > tol * std).any() or (
            (old[module][1] - var).abs() > 2 * tol * var + tol * module.eps
        ).any():
            return False
    return True


def _group_norm(module: nn.GroupNorm, state: NormState, x: torch.Tensor) -> torch.Tensor:
    n, g = x.shape[0], module.num_groups
    if state.collect:  # sum over the tile's own region only, so the tiles partition the image
        y0, y1, x0, x1 = state.crop
        oy0, oy1, ox0, ox1 = state.own
        s = (y1 - y0) // x.shape[-2]  # this tensor's downsampling from full resolution
        region = x[..., (oy0 - y0) // s : (oy1 - y0) // s, (ox0 - x0) // s : (ox1 - x0) // s]
        r = region.reshape(n, g, -1).double()
        acc = state.sums.setdefault(module, [0.0, 0.0, 0])
        acc[0] = acc[0] + r.sum(-1)
        acc[1] = acc[1] + (r * r).sum(-1)
        acc[2] += r.shape[-1]
    stats = state.stats.get(module)
    if stats is None:  # untiled levels, and the first pass (statistics of the tile itself)
        return F.group_norm(x, g, module.weight, module.bias, module.eps)
    mean, var = (s.to(x.dtype)[:, :, None] for s in stats)
    y = (x.reshape(n, g, -1) - mean) * torch.rsqrt(var + module.eps)
    return y.reshape(x.shape) * module.weight[:, None, None] + module.bias[:, None, None]


class patched_norms:
    """Context manager: every GroupNorm of `unet` normalises through `state`."""

    def __init__(self, unet: UNet, state: NormState):
        self.norms = [m for m in unet.modules() if isinstance(m, nn.GroupNorm)]
        self.state = state

    def __enter__(self):
        for m in self.norms:
            m.forward = partial(_group_norm, m, self.state)
        return self.state

    def __exit__(self, *exc):
        for m in self.norms:
            del m.forward


# --------------------------------------------------------------------------- the tiled call


def tiled_unet(
    unet: UNet, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor, cfg: TileConfig, state: NormState | None = None
) -> torch.Tensor:
    """`unet(x_t, t, z)` computed tile by tile; x_t (N, C, H, W), z (N, Cz, h, w) -> (N, C, H, W).

    Give the same `state` to the calls of one decode: each call starts from the previous
    call's statistics (fewer passes), and `state.passes` counts the passes run."""
    height, width = x_t.shape[-2:]
    split = split_level(unet, height, width, cfg.max_global)
    unit = max(2**split, height // z.shape[-2])  # crops align with the coarsest grid they cut
    margin = receptive_margin(unet, split)
    overlap = _round_up(margin, unit) if cfg.overlap is None else cfg.overlap
    if cfg.size % unit or overlap % unit:
        raise ValueError(f"tile_size and tile_overlap must be multiples of {unit} here, got {cfg.size} and {overlap}")
    if overlap < margin:
        raise ValueError(
            f"tile_overlap {overlap} is below the U-Net's receptive margin {margin} px at split level {split}"
        )
    if cfg.size >= height and cfg.size >= width:
        return unet(x_t, t, z)  # one tile: nothing to cut
    rows, cols = spans(height, cfg.size, overlap), spans(width, cfg.size, overlap)
    blend = min(overlap - margin, cfg.size, min(r[3] - r[2] for r in rows + cols))
    weight = lambda r, c: (ramp(r, height, blend)[:, None] * ramp(c, width, blend)[None]).to(x_t)  # noqa: E731
    tiles = [(r, c, weight(r, c)) for r in rows for c in cols]  # blend weights made once, where the output lives
    state = state if state is not None else NormState()
    n_norms = sum(isinstance(m, nn.GroupNorm) for m in unet.modules())
    passes = cfg.norm_passes or n_norms + 1
    trim = cfg.trim_host and x_t.device.type == "cpu"
    cut = _Cut(unet, x_t, t, z, tiles, split, state, trim)
    with patched_norms(unet, state), lean_host_heap(trim):
        # the encoder's statistics depend on nothing after phase A: settle them first, then
        # run phase B once and settle the decoder's statistics (phase C) on top of them
        low = _until_converged(cut.phase_a, state, passes, cfg.norm_tol)
        glob = cut.phase_b(low)
        out = _until_converged(lambda: cut.phase_c(glob), state, passes, cfg.norm_tol)
    state.stats.update(state.pending)
    state.pending = {}
    return out


def _until_converged(run, state: NormState, passes: int, tol: float) -> torch.Tensor:
    """Repeat `run` (one pass over the tiles) with the statistics the previous pass measured,
    until the statistics it gathers are the ones it used, or `passes` runs."""
    for i in range(passes):
        state.sums = {}
        out = run()
        state.passes += 1
        new = state.measured()
        done = new.keys() <= state.stats.keys() and converged({m: state.stats[m] for m in new}, new, tol)
        if done or i == passes - 1:  # later phases must use the statistics `out` was made with
            state.pending.update(new)  # a warm start for the next call
            return out
        state.stats.update(new)


class _Cut:
    """The three phases of one tiled U-Net call (see the module docstring)."""

    def __init__(self, unet: UNet, x_t, t, z, tiles, split: int, state: NormState, trim: bool = False):
        self.unet, self.x_t, self.t, self.z, self.tiles, self.state = unet, x_t, t, z, tiles, state
        self.trim = trim  # hand the heap's free pages back after each tile (malloc_trim)
        self.split, self.s, self.f = split, 2**split, x_t.shape[-2] // z.shape[-2]  # f: pixels per latent

    def phase_a(self) -> torch.Tensor:
        """Per tile: encoder levels < S and the step down to S -> the global level-S map (N, C, H/2^S, W/2^S)."""
        unet, s, low = self.unet, self.s, None
        for r, c, _ in self.tiles:
            h, emb = self._stem(r, c)
            self.state.collect = True
            h = unet.run_enc(h, emb, [], phase_a(unet, self.split))
            if low is None:
                low = h.new_zeros(h.shape[0], h.shape[1], self.x_t.shape[-2] // s, self.x_t.shape[-1] // s)
            own = h[..., (r[2] - r[0]) // s : (r[3] - r[0]) // s, (c[2] - c[0]) // s : (c[3] - c[0]) // s]
            low[..., r[2] // s : r[3] // s, c[2] // s : c[3] // s] = own
            del h, own, emb
            self._done_tile()
        self.state.collect = False
        return low

    def phase_b(self, low: torch.Tensor) -> torch.Tensor:
        """Whole map: the rest of the encoder, the middle, the decoder levels >= S (plain GroupNorm)."""
        unet, emb, skips = self.unet, self.unet.embed(self.t, self.x_t.dtype), [low]
        self.state.collect = False
        h = unet.run_enc(low, emb, skips, phase_b_enc(unet, self.split))
        return unet.run_dec(unet.run_mid(h, emb), emb, skips, phase_b_dec(unet, self.split))

    def phase_c(self, glob: torch.Tensor) -> torch.Tensor:
        """Per tile: recompute the encoder's skips, decode from the crop of `glob`, blend into the output."""
        unet, s, out = self.unet, self.s, self.x_t.new_zeros(self.x_t.shape)
        for r, c, w in self.tiles:
            h, emb = self._stem(r, c)
            self.state.collect = False  # the encoder's statistics were settled in phase A
            skips = []
            unet.run_enc(h, emb, skips, phase_a(unet, self.split)[:-1])
            self.state.collect = True
            h = unet.run_dec(glob[..., r[0] // s : r[1] // s, c[0] // s : c[1] // s], emb, skips,
                             phase_c_dec(unet, self.split))  # fmt: skip
            out[..., r[0] : r[1], c[0] : c[1]] += w * unet.head(h)  # w: on x_t's device, in its dtype
            del h, emb, skips
            self._done_tile()
        self.state.collect = False
        return out

    def _done_tile(self) -> None:
        if self.trim:
            release_host_memory()

    def _stem(self, r: Span, c: Span):
        f = self.f
        self.state.crop, self.state.own = (r[0], r[1], c[0], c[1]), (r[2], r[3], c[2], c[3])
        x, z = self.x_t[..., r[0] : r[1], c[0] : c[1]], self.z[..., r[0] // f : r[1] // f, c[0] // f : c[1] // f]
        return self.unet.stem(x, self.t, z)


_LIBC = None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
_GLIBC_DEFAULT = 128 * 1024  # both thresholds' glibc default (the mmap one then adapts upwards)


def _libc():
    """glibc, or False (not Linux, or another C library)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                _LIBC = libc
            except (OSError, AttributeError):
                pass
    return _LIBC


def release_host_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim(0)`); False where
    there is no such call (not Linux, or another C library)."""
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
    return bool(libc)


@contextlib.contextmanager
def lean_host_heap(enabled: bool = True, threshold: int = 1 << 20):
    """While inside: buffers of `threshold` bytes or more get their own pages (mmap) that go back
    to the system when freed, and free heap tops are returned above `threshold`. glibc otherwise
    raises its mmap threshold after large frees and keeps the freed memory, so a tiled decode's
    resident memory grows well past one tile's working set. Afterwards both thresholds are set
    back to glibc's default 128 KiB (the mmap threshold then no longer adapts upwards); does
    nothing where the user set them (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) or off glibc."""
    user_set = any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    libc = _libc() if enabled and not user_set else False
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    try:
        yield
    finally:
        if libc:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT)
            libc.malloc_trim(0)


def _round_up(n: int, unit: int) -> int:
    return math.ceil(n / unit) * unit
