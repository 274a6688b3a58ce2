"""Noise scaling γ in {1.0, 0.8, 0.6, 0.4}: ε-VAE on Fashion-MNIST, same budget for every arm.

    python benchmarks/gamma.py [--gammas 1.0,0.8,0.6,0.4] [--steps N] [--limit N] [--out results/gamma] [--quick]

Each arm trains `eps-fmnist` with `model.flow.gamma` set, then is evaluated at 1 and 3
decoding steps (reversed-log grid) over three seeds. PAPER.md section 3: γ = 0.6 is best.
"""

from __future__ import annotations

from _common import add_row, arm_row, parse, print_table, save


def main() -> None:
    add = lambda ap: ap.add_argument("--gammas", default="1.0,0.8,0.6,0.4")  # noqa: E731
    args, limit, seeds, out, result = parse(__doc__, "results/gamma", add)
    for gamma in args.gammas.split(","):
        overrides = [f"model.flow.gamma={gamma}"]
        row = arm_row(f"gamma={gamma}", "eps-fmnist", overrides, args, limit, seeds, gamma=float(gamma))
        add_row(result, row)
        save(result, out / "gamma.json")
    print_table(result, "γ")


if __name__ == "__main__":
    main()
