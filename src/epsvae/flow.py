"""Rectified-flow math as small pure functions (PAPER.md section 3).

Convention: t in [0, 1], t = 0 is data and t = 1 is noise. With noise scaling γ the
data enters the path scaled down, which lowers the SNR at every t:

    x_t = (1 - t) γ x0 + t ε                      (interpolation)
    v   = dx_t/dt = ε - γ x0                      (velocity target)
    x0  = (x_t - t v) / γ                         (one-step estimate from any t)

The network sees x_t / sqrt(((1 - t) γ)^2 + t^2) so its input keeps unit variance
(for unit-variance data). It predicts v (the paper's), or, with prediction 'x0', the clean
image, turned into v = (x_t - γ x0_hat) / max(t, t_min): every call of a few-step decode
then starts from an image, and the noise at t = 1 need not be copied through the network.
Samplers integrate dx = v dt from t = 1 to t = 0 on a time grid given as a tensor and
return the state at the last grid point (γ x0 at t = 0); they share one signature,
k-diffusion style, so new ones can sit beside Euler. They run under the caller's grad
mode (decoding differentiates through them when asked).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (N, ...), t (N,)) -> v


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) to broadcast against `like`."""
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """x_t = (1 - t) γ x0 + t ε."""
    tb = _bcast(t, x0)
    return (1 - tb) * gamma * x0 + tb * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """v = ε - γ x0, the (constant) velocity of the straight path."""
    return noise - gamma * x0


def x0_estimate(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """One-step estimate x0_hat = (x_t - t v) / γ; exact when v is the true velocity."""
    return (x_t - _bcast(t, x_t) * v) / gamma


PREDICTIONS = ("velocity", "x0")  # what the decoder network outputs


def output_to_velocity(
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    gamma: float = 1.0,
    prediction: str = "velocity",
    t_min: float = 0.05,
) -> torch.Tensor:
    """The velocity from the network's output: itself ('velocity'), or with 'x0' (the network
    predicts the clean image) v = (x_t - γ x0_hat) / max(t, t_min), so that `x0_estimate`
    gives back x0_hat for t >= t_min. The clip keeps v finite near t = 0 (JiT, Li & He 2025)."""
    if prediction == "velocity":
        return out
    if prediction != "x0":
        raise ValueError(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")
    return (x_t - gamma * out) / _bcast(t.clamp(min=t_min), x_t)


def input_scale(t: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """1 / std(x_t) for unit-variance data: 1 / sqrt(((1 - t) γ)^2 + t^2), shape (N,)."""
    return torch.rsqrt(((1 - t) * gamma) ** 2 + t**2)


# --------------------------------------------------------------------------- training time samplers


def sample_t_logit_normal(
    n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """t = sigmoid(m + s * N(0, 1)), shape (n,) (SD3's logit-normal; PAPER.md section 3)."""
    z = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(mean + std * z)


def sample_t_uniform(n: int, generator: torch.Generator | None = None, device=None, **_: float) -> torch.Tensor:
    """t ~ U(0, 1), shape (n,)."""
    return torch.rand(n, generator=generator, device=device)


def sample_t(name: str, n: int, mean: float = 0.0, std: float = 1.0, generator=None, device=None) -> torch.Tensor:
    if name == "logit-normal":
        return sample_t_logit_normal(n, mean, std, generator, device)
    if name == "uniform":
        return sample_t_uniform(n, generator, device)
    raise ValueError(f"unknown time sampler {name!r}; use 'logit-normal' or 'uniform'")


def sample_t_mixed(
    name: str,
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    uniform_mix: float = 0.0,
    grid_points: torch.Tensor | None = None,
    grid_mix: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Training times that also put mass where few-step decoding evaluates, shape (n,).

    Each t comes from `name` (e.g. logit-normal, shifted by `mean`), except that, per
    sample, with probability `uniform_mix` it is U(0, 1) instead, and with probability
    `grid_mix` one of `grid_points` (the inference grid's non-zero times, uniformly).
    With both fractions 0 this is `sample_t`, drawing exactly the same numbers (so runs
    started before these options continue unchanged).
    """
    t = sample_t(name, n, mean, std, generator, device)
    if not uniform_mix and not grid_mix:
        return t
    if uniform_mix < 0 or grid_mix < 0 or uniform_mix + grid_mix > 1:
        raise ValueError(f"uniform_mix {uniform_mix} and grid_mix {grid_mix} must be >= 0 with a sum <= 1")
    u = torch.rand(n, generator=generator, device=device)
    t = torch.where(u < uniform_mix, torch.rand(n, generator=generator, device=device), t)
    if grid_mix:
        if grid_points is None or grid_points.numel() == 0:
            raise ValueError("grid_mix needs the grid's non-zero points")
        pts = grid_points.to(device=t.device, dtype=t.dtype)
        pick = pts[torch.randint(len(pts), (n,), generator=generator, device=device)]
        t = torch.where((u >= uniform_mix) & (u < uniform_mix + grid_mix), pick, t)
    return t


# --------------------------------------------------------------------------- inference grids


def grid_reversed_log(steps: int, m: float = 1.0, n: float = 100.0) -> torch.Tensor:
    """The paper's reversed-logarithm grid, (steps + 1,) from 1 (noise) to 0 (data).

    t_i = (log m - log(u_i (m - n) + n)) / (log m - log n), u_i = i / steps.
    With m = 1, n = 100: steps=3 gives 1, 0.9130, 0.7657, 0. It spends the steps near
    t = 1, where one step from pure noise has the most to decide.
    """
    _check_steps(steps)
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    t = (math.log(m) - torch.log(u * (m - n) + n)) / (math.log(m) - math.log(n))
    return t.float()


def grid_uniform(steps: int) -> torch.Tensor:
    """Evenly spaced grid, (steps + 1,) from 1 to 0."""
    _check_steps(steps)
    return torch.linspace(1.0, 0.0, steps + 1)


def grid_matched(steps: int, t_mean: float = 0.0) -> torch.Tensor:
    """The uniform grid moved to a shifted logit-normal training t: t_i = sigmoid(logit(u_i) + t_mean)
    = s u_i / (1 + (s - 1) u_i) with s = exp(t_mean), (steps + 1,) from exactly 1 to exactly 0.

    The shift that turns logit-normal(0, std) into logit-normal(t_mean, std) applied to the
    uniform grid (SD3's time shift with s = exp(t_mean)): the grid stands to the shifted
    training t as the uniform grid stands to the centred one. t_mean = 0 is the uniform grid;
    t_mean = 0.8, 3 steps gives 1, 0.8166, 0.5267, 0.
    """
    _check_steps(steps)
    if not math.isfinite(t_mean):
        raise ValueError(f"t_mean must be finite, got {t_mean!r}")
    u = torch.arange(steps, -1, -1, dtype=torch.float64) / steps
    s = math.exp(t_mean)
    return (s * u / (1 + (s - 1) * u)).float()


GRIDS = ("reversed-log", "uniform", "matched")  # inference time grids, by name


def make_grid(name: str, steps: int, t_mean: float = 0.0) -> torch.Tensor:
    """A named grid; `t_mean` (the training logit-normal's mean) only moves 'matched'."""
    if name == "reversed-log":
        return grid_reversed_log(steps)
    if name == "uniform":
        return grid_uniform(steps)
    if name == "matched":
        return grid_matched(steps, t_mean)
    raise ValueError(f"unknown time grid {name!r}; use {', '.join(repr(g) for g in GRIDS)}")


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


# --------------------------------------------------------------------------- samplers


def sample_euler(
    velocity: VelocityFn,
    x: torch.Tensor,
    ts: torch.Tensor,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Euler on dx = v dt along `ts` (decreasing); one network call per step.

    `callback(i, t, x)` sees the state after each step.
    """
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        v = velocity(x, t.expand(x.shape[0]).to(x.device))
        x = x + (t_next - t).to(x.dtype) * v
        if callback is not None:
            callback(i, t_next, x)
    return x


def sample_heun(
    velocity: VelocityFn,
    x: torch.Tensor,
    ts: torch.Tensor,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Heun's second-order method (EDM Alg. 1); the last step, to t = 0, is plain Euler."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        dt = (t_next - t).to(x.dtype)
        v = velocity(x, t.expand(x.shape[0]).to(x.device))
        x_euler = x + dt * v
        if t_next > 0:
            v2 = velocity(x_euler, t_next.expand(x.shape[0]).to(x.device))
            x = x + dt * 0.5 * (v + v2)
        else:
            x = x_euler
        if callback is not None:
            callback(i, t_next, x)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}
