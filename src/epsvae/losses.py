"""Loss terms as small functions (PAPER.md section 4). Each returns a scalar (or (N,) where noted).

ε-VAE:  L = L_velocity + 0.5 L_perceptual(x0_hat, x0) + 0.5 L_adv(trajectory pair)
VAE:    L = L1(x_hat, x)  + 0.5 L_perceptual(x_hat, x)   + 0.5 L_adv(image)
Discriminator: non-saturating loss, lazy R1 on real inputs (StyleGAN2's regularisation).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 autocast outputs are widened; float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def velocity_mse(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(_wide(v_pred), _wide(v_target))


def velocity_mse_per_sample(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """(N,) per-image MSE, for the loss-by-t diagnostics."""
    return (_wide(v_pred) - _wide(v_target)).pow(2).flatten(1).mean(1)


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(_wide(x_hat), _wide(x))
    if kind == "l2":
        return F.mse_loss(_wide(x_hat), _wide(x))
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'l1' or 'l2'")


def generator_adv(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, softplus(-D(fake))."""
    return F.softplus(-_wide(fake_logits)).mean()


def discriminator_adv(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss, softplus(-D(real)) + softplus(D(fake))."""
    return F.softplus(-_wide(real_logits)).mean() + F.softplus(_wide(fake_logits)).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """E[|grad_x D(x)|^2] over real inputs (Mescheder et al. 2018); `real_inputs` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return _wide(grad).pow(2).flatten(1).sum(1).mean()


def disc_pair(image: torch.Tensor, x_t: torch.Tensor | None) -> torch.Tensor:
    """The discriminator's input. ε-VAE: (x0 or x0_hat, x_t) on channels (trajectory matching).
    VAE: (image, zeros), so the same discriminator judges plain images."""
    return torch.cat([image, x_t if x_t is not None else torch.zeros_like(image)], dim=1)


# --------------------------------------------------------------------------- one step's losses


def autoencoder_loss(model, x, lc, perceptual=None, disc=None, adv_on=False, generator=None, draws=None):
    """(weighted loss, {term: value}, forward output) of one autoencoder step.

    `model` may be DDP-wrapped; `disc` must be the unwrapped discriminator: it is
    frozen for this call, so the loss trains the autoencoder alone. The forward's
    randomness comes from `draws` (`Autoencoder.draw`, sliced) or else `generator`.
    """
    raw = getattr(model, "module", model)
    kind = raw.config.kind
    out = model(x, generator=generator, **(draws or {}))
    terms: dict[str, torch.Tensor] = {}
    if kind == "epsilon":
        terms["velocity"] = velocity_mse(out.v_pred, out.v_target)
        recon, x_t, t = out.x0_hat, out.x_t, out.t
        if lc.x0_l1_weight:
            terms["x0_l1"] = recon_loss(recon, x, "l1")
    else:
        recon, x_t, t = out.x_hat, None, torch.zeros(x.shape[0], device=x.device)
        terms["recon"] = recon_loss(recon, x, lc.recon)
    if perceptual is not None and lc.perceptual_weight:
        terms["perceptual"] = perceptual(_wide(recon), _wide(x)).mean()
    if adv_on and disc is not None:
        disc.requires_grad_(False)
        try:
            terms["adv"] = generator_adv(disc(disc_pair(recon, x_t), t))
        finally:
            disc.requires_grad_(True)
    if raw.config.encoder.gaussian:
        terms["kl"] = out.kl
    weights = {
        "velocity": lc.velocity_weight,
        "x0_l1": lc.x0_l1_weight,
        "recon": lc.recon_weight,
        "perceptual": lc.perceptual_weight,
        "adv": lc.adv_weight,
        "kl": lc.kl_weight,
    }
    return sum(weights[k] * v for k, v in terms.items()), terms, out


def discriminator_loss(disc, x, out, lc, r1_step: bool, autocast=contextlib.nullcontext):
    """(loss, {term: value}) of one discriminator step on real and fake pairs.

    ε-VAE: real (x0, x_t), fake (x0_hat, x_t), conditioned on t (trajectory matching).
    VAE: real x, fake x_hat. The autoencoder's outputs are detached: this loss trains
    the discriminator alone. R1 (lazy, every `r1_every` steps, on every `r1_subsample`-th
    pair) is computed in fp32.
    """
    if hasattr(out, "x0_hat"):
        recon, x_t, t = out.x0_hat.detach(), out.x_t.detach(), out.t.detach()
    else:
        recon, x_t, t = out.x_hat.detach(), None, torch.zeros(x.shape[0], device=x.device)
    k = lc.r1_subsample
    real = disc_pair(x, x_t).detach().requires_grad_(r1_step and k == 1)
    with autocast():
        real_logits = disc(real, t)
        fake_logits = disc(disc_pair(recon, x_t), t)
    loss = discriminator_adv(real_logits, fake_logits)
    terms = {"d_real": _wide(real_logits).mean(), "d_fake": _wide(fake_logits).mean()}
    if r1_step:
        if k == 1:
            terms["r1"] = r1_penalty(real_logits, real)
        else:  # every k-th pair: an unbiased estimate of the mean penalty, the double backward k times cheaper
            sub = real[::k].detach().requires_grad_(True)
            with autocast():
                sub_logits = disc(sub, t[::k])
            terms["r1"] = r1_penalty(sub_logits, sub)
        loss = loss + 0.5 * lc.r1_weight * lc.r1_every * terms["r1"]
    terms["disc"] = loss
    return loss, terms
