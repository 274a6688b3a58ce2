"""Loss terms as small functions (PAPER.md section 4). Each returns a scalar (or (N,) where noted).

ε-VAE:  L = L_velocity + 0.5 L_perceptual(x0_hat, x0) + 0.5 L_adv(trajectory pair)
VAE:    L = L1(x_hat, x)  + 0.5 L_perceptual(x_hat, x)   + 0.5 L_adv(image)
Discriminator: non-saturating loss, lazy R1 on real inputs (StyleGAN2's regularisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def velocity_mse(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(v_pred.float(), v_target.float())


def velocity_mse_per_sample(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """(N,) per-image MSE, for the loss-by-t diagnostics."""
    return (v_pred.float() - v_target.float()).pow(2).flatten(1).mean(1)


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(x_hat.float(), x.float())
    if kind == "l2":
        return F.mse_loss(x_hat.float(), x.float())
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'l1' or 'l2'")


def generator_adv(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, softplus(-D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_adv(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss, softplus(-D(real)) + softplus(D(fake))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """E[|grad_x D(x)|^2] over real inputs (Mescheder et al. 2018); `real_inputs` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def disc_pair(image: torch.Tensor, x_t: torch.Tensor | None) -> torch.Tensor:
    """The discriminator's input. ε-VAE: (x0 or x0_hat, x_t) on channels (trajectory matching).
    VAE: (image, zeros), so the same discriminator judges plain images."""
    return torch.cat([image, x_t if x_t is not None else torch.zeros_like(image)], dim=1)


def loss_by_t(per_sample: torch.Tensor, t: torch.Tensor, bins: int = 5) -> list[tuple[float, float]]:
    """[(sum, count)] per t-bin of [0, 1): summed so that intervals and ranks can be merged."""
    idx = (t.float() * bins).long().clamp(0, bins - 1)
    sums = torch.zeros(bins, device=t.device).index_add_(0, idx, per_sample.detach().float())
    counts = torch.zeros(bins, device=t.device).index_add_(0, idx, torch.ones_like(per_sample, dtype=torch.float))
    return list(zip(sums.tolist(), counts.tolist(), strict=True))
