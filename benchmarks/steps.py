"""Decoding steps 1, 2, 3, 5, 10 with the reversed-log and the uniform grid (one trained ε-VAE).

    python benchmarks/steps.py [--model DIR] [--steps N] [--limit N] [--out results/steps] [--quick]

Without --model it trains `eps-fmnist` (the presets' budget, or --steps) into OUT/eps.
PAPER.md section 3: quality is best at 1-3 steps and drops beyond 3 (a consequence of
the adversarial term); the reversed-log grid beats the uniform one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import DEVICE, common_args, eval_arm, eval_settings, new_result, print_table, save, train_arm

from epsvae.models import read_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a trained ε-VAE run directory (with model/ inside)")
    ap.add_argument("--data", default="fashion-mnist", help="dataset spec the model is evaluated on")
    ap.add_argument("--decode-steps", default="1,2,3,5,10")
    common_args(ap, "results/steps")
    args = ap.parse_args()
    limit, seeds = eval_settings(args)
    out, result = Path(args.out), new_result()
    if args.model:
        run, trained = Path(args.model), None
    else:
        run = out / "eps"
        _, summary, seconds = train_arm(run, "eps-fmnist", [], args.steps, args.quick)
        trained = {"train_steps": summary["step"], "train_seconds": seconds}
    cfg = read_config(run / "model")
    decode_steps = [int(s) for s in args.decode_steps.split(",")]

    for grid in ("reversed-log", "uniform"):
        report = eval_arm(run, args.data, limit, decode_steps, seeds, grid=grid)
        result["rows"].append(
            {
                "arm": grid,
                "train_steps": (trained or {}).get("train_steps", -1),
                "eval": report,
                "model": str(run),
                "latent_shape": list(cfg.latent_shape),
                "device": DEVICE,
            }
        )
        save(result, out / "steps.json")
    print_table(result, "grid")


if __name__ == "__main__":
    main()
