"""ε-VAE decoding: from latents and a noise canvas to images, integrating the flow ODE.

`EpsilonVAE.decode` checks its arguments and calls `decode` here, which owns the noise
canvas (drawn once for the whole batch, so slicing the batch does not change it), batch
slices, dtypes (the model's for the network, at least float32 for the sampler's state),
the grad mode, and whether each network call is plain or tiled (epsvae.tiling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import flow
from .config import FlowConfig
from .tiling import NormState, TileConfig, tiled_unet

if TYPE_CHECKING:
    from .models import EpsilonVAE


def resolve_grid(fc: FlowConfig, steps: int | None, grid: str | torch.Tensor | None) -> torch.Tensor:
    """Decoding times, decreasing from 1 to 0: a named grid ('reversed-log', 'uniform', 'matched':
    the uniform grid moved by the config's logit-normal t_mean; default the config's) with
    `steps` steps (default the config's), or a custom tensor, checked."""
    if isinstance(grid, torch.Tensor):
        ts = grid.float().cpu()
        malformed = ts.ndim != 1 or len(ts) < 2 or not torch.isfinite(ts).all()  # NaN compares as False
        if malformed or ts[0] != 1 or ts[-1] != 0 or (ts[1:] >= ts[:-1]).any():
            raise ValueError("a custom grid must be a 1-D decreasing tensor from exactly 1 down to exactly 0")
        return ts
    t_mean = fc.t_mean if fc.t_sampler == "logit-normal" else 0.0
    return flow.make_grid(grid or fc.grid, steps if steps is not None else fc.steps, t_mean)


def decode(
    model: EpsilonVAE,
    z: torch.Tensor,
    ts: torch.Tensor,
    generator: torch.Generator | None = None,
    sampler: str = "euler",
    noise: torch.Tensor | None = None,
    tiling: TileConfig | None = None,
    batch_size: int | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Latents (N, Cz, h, w) -> images (N, C, h*f, w*f) in the model's dtype (see EpsilonVAE.decode)."""
    from .models import randn_like

    if sampler not in flow.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(flow.SAMPLERS)}")
    f = model.downsample
    shape = (z.shape[0], model.config.image_channels, z.shape[2] * f, z.shape[3] * f)
    state_dtype = torch.promote_types(model.dtype, torch.float32)  # fp16/bf16 integrate in fp32
    z = z.to(device=model.device, dtype=model.dtype)
    if noise is None:
        noise = randn_like(z.new_empty(shape, dtype=state_dtype), generator)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    x = noise.to(device=z.device, dtype=state_dtype)
    if tiling is not None and model.config.decoder.arch != "adm":
        raise ValueError(
            f"tiled decoding cuts the ADM U-Net's levels; this model's decoder is {model.config.decoder.arch!r} "
            "(global attention over all patches): decode untiled, with batch_size to bound memory"
        )
    step = batch_size or z.shape[0]
    with torch.set_grad_enabled(grad):
        out = [
            integrate(model, z[i : i + step], x[i : i + step], ts, sampler, tiling) for i in range(0, z.shape[0], step)
        ]
    return (torch.cat(out) / model.config.flow.gamma).to(model.dtype)  # the state at t = 0 is γ x0


def integrate(
    model: EpsilonVAE, z: torch.Tensor, x: torch.Tensor, ts: torch.Tensor, sampler: str, tiling: TileConfig | None
) -> torch.Tensor:
    """From noise x (N, C, H, W) at t = 1 to the state at t = 0 (γ x0) with `sampler` along `ts`."""
    dtype, fc = model.dtype, model.config.flow
    gamma = fc.gamma
    norms = NormState()  # tiled GroupNorm statistics, carried from step to step (a warm start)

    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in = (x_t * flow.input_scale(t, gamma).reshape(-1, 1, 1, 1).to(x_t.dtype)).to(dtype)
        v = model.decoder(x_in, t, z) if tiling is None else tiled_unet(model.decoder, x_in, t, z, tiling, norms)
        if dtype == torch.float16 and not torch.isfinite(v).all():
            raise RuntimeError(
                "the decoder overflowed in float16 (non-finite velocity); decode in bfloat16 or float32 "
                "instead: model.to(torch.bfloat16)"
            )
        return flow.output_to_velocity(v.to(x_t.dtype), x_t, t, gamma, fc.prediction, fc.t_min)

    return flow.SAMPLERS[sampler](velocity, x, ts)
