"""The paper's cumulative ablation at our scale (PAPER.md section 5), ε-VAE on Fashion-MNIST.

    python benchmarks/ablation.py [--steps N] [--limit N] [--out results/ablation] [--quick]

velocity loss only (γ = 1, uniform grid) -> + perceptual on x0_hat -> + trajectory GAN
-> + γ = 0.6 -> + reversed-log grid (the last arm re-evaluates the previous model with
the paper's grid; nothing is retrained). Every trained arm has the same budget; each is
evaluated at 1 and 3 decoding steps over three seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import common_args, eval_arm, eval_settings, new_result, print_table, save, train_arm

BASE = ["model.flow.gamma=1.0", "train.loss.perceptual_weight=0", "train.loss.adv_weight=0"]
ARMS = [  # (name, overrides, evaluation grid)
    ("velocity only", BASE, "uniform"),
    ("+ perceptual", BASE[:1] + ["train.loss.adv_weight=0"], "uniform"),
    ("+ trajectory GAN", BASE[:1], "uniform"),
    ("+ gamma 0.6", [], "uniform"),
    ("+ reversed-log grid", [], "reversed-log"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap, "results/ablation")
    args = ap.parse_args()
    limit, seeds = eval_settings(args)
    out, result = Path(args.out), new_result()
    for i, (name, overrides, grid) in enumerate(ARMS):
        run = out / f"arm{min(i, 3)}"  # the last arm reuses arm 3's model
        cfg, summary, seconds = train_arm(run, "eps-fmnist", overrides, args.steps, args.quick)
        report = eval_arm(run, cfg.train.data, limit, [1, 3], seeds, grid=grid)
        result["rows"].append(
            {
                "arm": name,
                "overrides": overrides,
                "grid": grid,
                "train_steps": summary["step"],
                "train_seconds": seconds,
                "eval": report,
            }
        )
        save(result, out / "ablation.json")
    print_table(result)


if __name__ == "__main__":
    main()
