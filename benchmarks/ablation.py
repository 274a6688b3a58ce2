"""The paper's cumulative ablation at our scale (PAPER.md section 5), ε-VAE on Fashion-MNIST.

    python benchmarks/ablation.py [--steps N] [--limit N] [--out results/ablation] [--quick]

velocity loss only (γ = 1, uniform grid) -> + perceptual on x0_hat -> + trajectory GAN
-> + γ = 0.6 -> + reversed-log grid (the last arm re-evaluates the previous model with
the paper's grid; nothing is retrained). Every trained arm has the same budget; each is
evaluated at 1 and 3 decoding steps over three seeds.
"""

from __future__ import annotations

from _common import arm_row, parse, print_table, save

BASE = ["model.flow.gamma=1.0", "train.loss.perceptual_weight=0", "train.loss.adv_weight=0"]
ARMS = [  # (name, overrides, evaluation grid)
    ("velocity only", BASE, "uniform"),
    ("+ perceptual", BASE[:1] + ["train.loss.adv_weight=0"], "uniform"),
    ("+ trajectory GAN", BASE[:1], "uniform"),
    ("+ gamma 0.6", [], "uniform"),
    ("+ reversed-log grid", [], "reversed-log"),
]


def main() -> None:
    args, limit, seeds, out, result = parse(__doc__, "results/ablation")
    for name, overrides, grid in ARMS:  # the last arm's config is arm 3's: the same run, re-evaluated
        result["rows"].append(arm_row(name, "eps-fmnist", overrides, args, limit, seeds, grid=grid))
        save(result, out / "ablation.json")
    print_table(result)


if __name__ == "__main__":
    main()
