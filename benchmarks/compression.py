"""VAE vs ε-VAE on Fashion-MNIST at the presets' compression and at 2x more compression.

    python benchmarks/compression.py [--arms vae-1x,eps-1x,vae-2x,eps-2x,eps-2x-f8] [--steps N]
                                     [--limit N] [--out results/compression] [--quick]

Every arm trains with the engine (`epsvae.train`) for the same number of steps (default:
the presets' full budget), then `epsvae.evaluate` measures reconstructions of the test
split: PSNR, SSIM and fd_domain (Fréchet distance in the offline feature network's space;
not Inception FID) at 1 and 3 decoding steps over three seeds. 1x is the presets' 8x8x2
latent (8x compression of 32x32x1); 2x halves the latent channels (8x8x1, 16x);
2x-f8 reaches 16x by fewer positions instead (f8, 4x4x4), the paper's way for generation.
Writes OUT/compression.json and prints a table. `--quick` shrinks everything to a
smoke test that runs in seconds.
"""

from __future__ import annotations

from _common import PAPER_RECIPE, POOL_DISC, add_row, arm_row, parse, print_table, save

ARMS = {  # name -> (preset, overrides)
    "vae-1x": ("vae-fmnist", [*POOL_DISC]),  # the VAE as measured (the pool head: PAPER_RECIPE's)
    "eps-1x": ("eps-fmnist", [*PAPER_RECIPE]),  # the paper's recipe (its perceptual weight), as measured
    "vae-2x": ("vae-fmnist", [*POOL_DISC, "model.encoder.latent_channels=1"]),
    "eps-2x": ("eps-fmnist", [*PAPER_RECIPE, "model.encoder.latent_channels=1"]),
    # the paper's generation claim as it means it: 2x compression by fewer latent positions
    # (f8, 4x4x4 = 64 numbers, 4x fewer positions than 8x8x2), not by fewer channels
    "eps-2x-f8": (
        "eps-fmnist",
        [*PAPER_RECIPE, "model.encoder.channel_mult=[1,2,2,2]", "model.encoder.latent_channels=4"],
    ),
}


def main() -> None:
    add = lambda ap: ap.add_argument("--arms", default=",".join(ARMS))  # noqa: E731
    args, limit, seeds, out, result = parse(__doc__, "results/compression", add)
    for arm in args.arms.split(","):
        preset, overrides = ARMS[arm]
        add_row(result, arm_row(arm, preset, overrides, args, limit, seeds))
        save(result, out / "compression.json")  # after every arm
    print_table(result)


if __name__ == "__main__":
    main()
