"""Decoding steps 1, 2, 3, 5, 10 with the reversed-log and the uniform grid (one trained ε-VAE).

    python benchmarks/steps.py [--model DIR] [--steps N] [--limit N] [--out results/steps] [--quick]

Without --model it trains `eps-fmnist` (the presets' budget, or --steps) into the shared
runs directory (--runs), or finds it there when another benchmark trained it.
PAPER.md section 3: quality is best at 1-3 steps and drops beyond 3 (a consequence of
the adversarial term); the reversed-log grid beats the uniform one.
"""

from __future__ import annotations

from pathlib import Path

from _common import PAPER_RECIPE, eval_arm, parse, print_table, save, train_arm


def main() -> None:
    def add(ap) -> None:
        ap.add_argument("--model", help="a trained ε-VAE run directory (with model/ inside)")
        ap.add_argument("--data", default="fashion-mnist", help="dataset spec the model is evaluated on")
        ap.add_argument("--decode-steps", default="1,2,3,5,10")

    args, limit, seeds, out, result = parse(__doc__, "results/steps", add)
    if args.model:
        if args.set:
            raise SystemExit("--set changes the arm to train; with --model nothing is trained")
        run, train_steps = Path(args.model), "-"
    else:
        sets = [*PAPER_RECIPE, *args.set]  # the paper's recipe, as measured
        run, _, _, train_steps = train_arm(args.runs, "eps-fmnist", sets, args.steps, args.quick)
    decode_steps = [int(s) for s in args.decode_steps.split(",")]
    for grid in ("reversed-log", "uniform"):
        report = eval_arm(run, args.data, limit, decode_steps, seeds, grid=grid, reuse=not args.reevaluate)
        row = {"arm": grid, "model": str(run), "overrides": args.set, "train_steps": train_steps, "eval": report}
        result["rows"].append(row)
        save(result, out / "steps.json")
    print_table(result, "grid")


if __name__ == "__main__":
    main()
