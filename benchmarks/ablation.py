"""The paper's cumulative ablation at our scale (PAPER.md section 5), ε-VAE on Fashion-MNIST.

    python benchmarks/ablation.py [--arms 1,2,3,4,5] [--grid reversed-log|uniform] [--steps N] [--limit N]
                                  [--out results/ablation] [--quick] [--train-only]

velocity loss only (γ = 1, uniform grid) -> + perceptual on x0_hat -> + trajectory GAN
-> + γ = 0.6 -> + reversed-log grid (the last arm re-evaluates the previous model with
the paper's grid; nothing is retrained). Every trained arm has the same budget; each is
evaluated at 1 and 3 decoding steps over three seeds, on the arm's grid (ARMS) unless
`--grid` decodes every chosen arm on one grid (arm 5 is then arm 4 again): run once per
grid to see each ingredient on both.
"""

from __future__ import annotations

from _common import PAPER_RECIPE, add_row, arm_row, parse, print_table, save

from epsvae.flow import GRIDS

BASE = ["model.flow.gamma=1.0", "train.loss.perceptual_weight=0", "train.loss.adv_weight=0"]
ARMS = [  # (name, overrides, evaluation grid)
    ("velocity only", BASE, "uniform"),
    ("+ perceptual", BASE[:1] + ["train.loss.adv_weight=0"], "uniform"),
    ("+ trajectory GAN", BASE[:1], "uniform"),
    ("+ gamma 0.6", [], "uniform"),
    ("+ reversed-log grid", [], "reversed-log"),
]


def main() -> None:
    def add(ap) -> None:
        ap.add_argument("--arms", default="1,2,3,4,5", help="which arms, 1-based, in order")
        ap.add_argument("--grid", choices=GRIDS, default=None, help="decode every arm on it (default: the arm's)")

    args, limit, seeds, out, result = parse(__doc__, "results/ablation", add)
    picks = [s.strip() for s in args.arms.split(",")]
    if not all(p.isdigit() and 1 <= int(p) <= len(ARMS) for p in picks):
        raise SystemExit(f"--arms takes 1-based indices up to {len(ARMS)}, e.g. 1,2; got {args.arms!r}")
    chosen = [ARMS[int(p) - 1] for p in picks]
    for name, overrides, grid in chosen:  # the last arm's config is arm 4's: the same run, re-evaluated
        sets = [*PAPER_RECIPE, *overrides]  # the paper's recipe, term by term
        add_row(result, arm_row(name, "eps-fmnist", sets, args, limit, seeds, grid=args.grid or grid))
        save(result, out / "ablation.json")
    print_table(result)


if __name__ == "__main__":
    main()
