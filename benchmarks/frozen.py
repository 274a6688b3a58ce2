"""A decoder for a frozen encoder, on Fashion-MNIST: the VAE's encoder with its own decoder, against a
new ε-VAE decoder trained on the same frozen encoder's latents for the same budget.

    python benchmarks/frozen.py [--steps N] [--limit N] [--out results/frozen] [--quick] [--train-only]

Arm 1 is `vae-fmnist` with the pool discriminator head, as measured (the compression
benchmark's `vae-1x`: the same run when the run cache is shared). Arm 2 is `eps-fmnist
--frozen-encoder ARM1/model`: the encoder, latents and latent statistics are arm 1's and only
the ε-VAE decoder trains. PSNR, SSIM, fd_indep (and fd_domain)
at 1 and 3 decoding steps over three seeds. The question: does a diffusion decoder improve on a
deterministic one for somebody else's latents, as the consistency decoder does for SD's?
"""

from __future__ import annotations

from _common import PAPER_RECIPE, POOL_DISC, _arm_settings, add_row, arm_row, parse, print_table, run_dir, save


def main() -> None:
    args, limit, seeds, out, result = parse(__doc__, "results/frozen")
    # the VAE as measured: the pool discriminator head (PAPER_RECIPE's), which vae-fmnist left on 2026-12-07
    vae = arm_row("VAE (its own decoder)", "vae-fmnist", POOL_DISC, args, limit, seeds)
    add_row(result, vae)
    # the frozen arm needs the VAE's export, which arm_row has trained (or found) by now
    vae_sets = _arm_settings([*POOL_DISC, *args.set], args.steps, args.quick)
    vae_model = (run_dir(args.runs, "vae-fmnist", *vae_sets) / "model").resolve()
    frozen = [*PAPER_RECIPE, f"train.frozen_encoder={vae_model}"]  # the paper's recipe, as measured
    add_row(result, arm_row("ε-decoder, frozen VAE encoder", "eps-fmnist", frozen, args, limit, seeds))
    save(result, out / "frozen.json")
    print_table(result)


if __name__ == "__main__":
    main()
