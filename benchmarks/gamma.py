"""Noise scaling γ in {1.0, 0.8, 0.6, 0.4}: ε-VAE on Fashion-MNIST, same budget for every arm.

    python benchmarks/gamma.py [--gammas 1.0,0.8,0.6,0.4] [--steps N] [--limit N] [--out results/gamma] [--quick]

Each arm trains `eps-fmnist` with `model.flow.gamma` set, then is evaluated at 1 and 3
decoding steps (reversed-log grid) over three seeds. PAPER.md section 3: γ = 0.6 is best.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import common_args, eval_arm, eval_settings, new_result, print_table, save, train_arm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gammas", default="1.0,0.8,0.6,0.4")
    common_args(ap, "results/gamma")
    args = ap.parse_args()
    limit, seeds = eval_settings(args)
    out, result = Path(args.out), new_result()
    for gamma in args.gammas.split(","):
        run = out / f"gamma{gamma}"
        cfg, summary, seconds = train_arm(run, "eps-fmnist", [f"model.flow.gamma={gamma}"], args.steps, args.quick)
        report = eval_arm(run, cfg.train.data, limit, [1, 3], seeds)
        result["rows"].append(
            {"arm": f"gamma={gamma}", "train_steps": summary["step"], "train_seconds": seconds, "eval": report}
        )
        save(result, out / "gamma.json")
    print_table(result, "γ")


if __name__ == "__main__":
    main()
