"""Loss terms as small functions (PAPER.md section 4). Each returns a scalar (or (N,) where noted).

ε-VAE:  L = L_velocity + 0.5 L_perceptual(x0_hat, x0) + 0.5 L_adv(trajectory pair)
VAE:    L = L1(x_hat, x)  + 0.5 L_perceptual(x_hat, x)   + 0.5 L_adv(image)
Discriminator: non-saturating loss, lazy R1 on real inputs (StyleGAN2's regularisation).

Options beyond the paper (LossConfig): the adversarial weight can ramp in over
`adv_ramp` steps, and be scaled VQGAN-style by the ratio of gradient norms at the
decoder's last layer (`adv_weighting='adaptive'`); the R1 weight can follow
StyleGAN2-ADA's heuristic (`r1_heuristic`). Logits may be per image (N,) or per patch
(N, P); every loss averages over all of them.
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
    """E[|grad_x D(x)|^2] over real inputs (Mescheder et al. 2018); `real_inputs` must require grad.

    D(x) is the image's logit, or the mean of its patch logits (N, P): the same scale as one
    pooled logit, as the adversarial losses average over patches too."""
    per_image = real_logits.reshape(len(real_logits), -1).mean(1)
    (grad,) = torch.autograd.grad(per_image.sum(), real_inputs, create_graph=True)
    return _wide(grad).pow(2).flatten(1).sum(1).mean()


def adaptive_weight(other: torch.Tensor, adv: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's adaptive weight: |grad_w other| / (|grad_w adv| + 1e-4) at the decoder's last layer w,
    clamped to [0, 1e4] and detached (Esser et al. 2021, eq. 7)."""
    (g_other,) = torch.autograd.grad(other, last_layer, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adv, last_layer, retain_graph=True)
    return (_wide(g_other).norm() / (_wide(g_adv).norm() + 1e-4)).clamp(0.0, 1e4).detach()


def r1_weight(lc, image_size: tuple[int, int], batch_size: int) -> float:
    """The R1 weight of a run: `r1_weight`, or StyleGAN2-ADA's 0.0002 * H * W / batch with `r1_heuristic`."""
    if lc.r1_heuristic:
        return 0.0002 * image_size[0] * image_size[1] / batch_size
    return lc.r1_weight


def adv_ramp(lc, step: int) -> float:
    """The adversarial weight's multiplier at `step`: 0 before `disc_start`, then a linear ramp over
    `adv_ramp` steps (1 at once when 0)."""
    if not lc.adv_weight or step < lc.disc_start:
        return 0.0
    return 1.0 if lc.adv_ramp <= 0 else min(1.0, (step - lc.disc_start + 1) / lc.adv_ramp)


def disc_pair(image: torch.Tensor, x_t: torch.Tensor | None) -> torch.Tensor:
    """The discriminator's input. ε-VAE: (x0 or x0_hat, x_t) on channels (trajectory matching).
    VAE: (image, zeros), so the same discriminator judges plain images."""
    return torch.cat([image, x_t if x_t is not None else torch.zeros_like(image)], dim=1)


# --------------------------------------------------------------------------- one step's losses


def autoencoder_loss(
    model, x, lc, perceptual=None, disc=None, adv_on=False, generator=None, draws=None, adv_scale=1.0, target=None
):
    """(weighted loss, {term: value}, forward output) of one autoencoder step.

    `model` may be DDP-wrapped; `disc` must be the unwrapped discriminator: it is
    frozen for this call, so the loss trains the autoencoder alone. The forward's
    randomness comes from `draws` (`Autoencoder.draw`, sliced) or else `generator`.
    `adv_scale` multiplies the adversarial weight (the ramp-in, see `adv_ramp`); with
    `lc.adv_weighting == 'adaptive'` it is further scaled by `adaptive_weight`, recorded
    as the term `adv_lambda` (not part of the loss). The adversarial part of the loss as weighted
    (adv_weight * scale * adv) is recorded as `adv_weighted`, so a log reader can subtract it from
    `loss` (with the adaptive weight it can dominate `loss`). `target(out)` (distillation) gives, without
    a graph, the images the one-step estimate should match: the term `distill`, an MSE.
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
        if target is not None:
            with torch.no_grad():
                goal = target(out)
            terms["distill"] = F.mse_loss(_wide(recon), _wide(goal))
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
        "distill": lc.distill_weight,
    }
    loss = sum(weights[k] * v for k, v in terms.items() if k in weights)
    if "adv" in terms:
        adv_w = lc.adv_weight * adv_scale
        if lc.adv_weighting == "adaptive":  # without a graph (evaluation) the ratio is undefined: 1
            lam = adaptive_weight(loss, terms["adv"], raw.last_layer) if torch.is_grad_enabled() else 1.0
            adv_w = adv_w * lam
            terms["adv_lambda"] = torch.as_tensor(lam, dtype=torch.float32)
        weighted = adv_w * terms["adv"]
        terms["adv_weighted"] = weighted.detach()
        loss = loss + weighted
    if "kl" in terms:
        loss = loss + lc.kl_weight * terms["kl"]
    return loss, terms, out


def discriminator_loss(disc, x, out, lc, r1_step: bool, autocast=contextlib.nullcontext, r1_weight=None):
    """(loss, {term: value}) of one discriminator step on real and fake pairs.

    ε-VAE: real (x0, x_t), fake (x0_hat, x_t), conditioned on t (trajectory matching).
    VAE: real x, fake x_hat. The autoencoder's outputs are detached: this loss trains
    the discriminator alone. R1 (lazy, every `r1_every` steps, on every `r1_subsample`-th
    pair) is computed in fp32. `r1_weight` (default `lc.r1_weight`) is the run's weight,
    see `r1_weight()`.
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
        weight = lc.r1_weight if r1_weight is None else r1_weight
        loss = loss + 0.5 * weight * lc.r1_every * terms["r1"]
    terms["disc"] = loss
    return loss, terms
