"""Noise scaling γ in {1.0, 0.8, 0.6, 0.4}: ε-VAE on Fashion-MNIST, same budget for every arm.

    python benchmarks/gamma.py [--gammas 1.0,0.8,0.6,0.4] [--grid uniform] [--steps N] [--limit N]
                               [--out results/gamma] [--quick]

Each arm trains `eps-fmnist` at the paper's perceptual weight (PAPER_RECIPE) with
`model.flow.gamma` set, then is evaluated at 1 and 3 decoding steps over three seeds, on the
preset's reversed-log grid unless `--grid` says otherwise (γ and the grid interact).
PAPER.md section 3: γ = 0.6 is best.
"""

from __future__ import annotations

from _common import PAPER_RECIPE, add_row, arm_row, parse, print_table, save

from epsvae.flow import GRIDS


def main() -> None:
    def add(ap):
        ap.add_argument("--gammas", default="1.0,0.8,0.6,0.4")
        ap.add_argument("--grid", choices=GRIDS, default=None, help="decoding time grid (default: the preset's)")

    args, limit, seeds, out, result = parse(__doc__, "results/gamma", add)
    for gamma in args.gammas.split(","):
        overrides = [*PAPER_RECIPE, f"model.flow.gamma={gamma}"]  # the paper's recipe, γ varied
        row = arm_row(f"gamma={gamma}", "eps-fmnist", overrides, args, limit, seeds, grid=args.grid, gamma=float(gamma))
        add_row(result, row)
        save(result, out / "gamma.json")
    print_table(result, "γ")


if __name__ == "__main__":
    main()
