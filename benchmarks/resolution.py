"""Resolution generalisation: train at 32x32 on scikit-image photo crops, decode at 2x and 4x.

    python benchmarks/resolution.py [--presets vae-fmnist,eps-fmnist] [--resolutions 32,64,128] [--steps N]
                                    [--limit N] [--out results/resolution] [--quick] [--train-only]

VAE and ε-VAE (the Fashion-MNIST presets' networks, made RGB) train on random crops of
the colour photos bundled with scikit-image at 32x32, then reconstruct fixed test crops
at 32, 64 and 128 pixels with no fine-tuning (PAPER.md section 5: ε-VAE trained at 128
generalises to 256 and 512 better than the VAE). The photos are few: this measures
generalisation across resolution, not across images. The perceptual loss and fd_domain
use a feature network trained to tell the photos' crops apart (`features:auto`).
"""

from __future__ import annotations

from _common import PAPER_RECIPE, add_row, arm_row, parse, print_table, save

RGB_PHOTOS = ["model.image_channels=3", "train.data=skimage-photos"]


def main() -> None:
    def add(ap):
        ap.add_argument("--resolutions", default="32,64,128")
        ap.add_argument("--presets", default="vae-fmnist,eps-fmnist")

    args, limit, seeds, out, result = parse(__doc__, "results/resolution", add)
    for preset in args.presets.split(","):
        for res in [int(r) for r in args.resolutions.split(",")]:  # trains once, then resumes as done
            name = f"{preset.split('-')[0]} @ {res}px"
            sets = [*PAPER_RECIPE, *RGB_PHOTOS]  # the paper's recipe, as measured
            add_row(result, arm_row(name, preset, sets, args, limit, seeds, resolution=res))
            save(result, out / "resolution.json")
    print_table(result)


if __name__ == "__main__":
    main()
