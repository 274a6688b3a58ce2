"""One-step decoding by distillation: the student's 1 step against its teacher's 1 and 3 steps.

    python benchmarks/distill.py --teacher RUN_DIR [--teacher-steps 3] [--steps N] [--limit N]
                                 [--out results/distill] [--quick] [--train-only]

Trains `epsvae distill` of the teacher (a trained ε-VAE run directory, e.g. the compression
benchmark's eps-1x) with the teacher run's preset recipe into OUT/student, then evaluates on
the test split: the teacher at 1 and TEACHER_STEPS steps, the student at 1 step (PSNR,
SSIM, fd_indep, fd_domain, decoding images/s, over decoding seeds). The goal: the
student's one step at least as good as the teacher's TEACHER_STEPS on fd_indep, at a
third of the decoding cost.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import QUICK, eval_arm, parse, print_table, save

from epsvae.config import ConfigError
from epsvae.train import prepare_distill, train


def main() -> None:
    def add(ap) -> None:
        ap.add_argument("--teacher", required=True, help="a trained ε-VAE run directory (with model/ inside)")
        ap.add_argument("--teacher-steps", type=int, default=3)

    args, limit, seeds, out, result = parse(__doc__, "results/distill", add)
    teacher = Path(args.teacher)
    student = out / "student"
    overrides = [*args.set, f"train.distill_steps={args.teacher_steps}"]
    if args.quick:
        overrides += [o for o in QUICK if not o.startswith("model.")]  # the model is the teacher's
    preset = json.loads((teacher / "config.json").read_text()).get("preset")  # the teacher's recipe
    try:
        cfg = prepare_distill(student, teacher / "model", preset, overrides, steps=3 if args.quick else args.steps)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f"distill of {teacher}: {e}") from None
    train(student, cfg, progress=False)
    final = json.loads((student / "final.json").read_text())
    print(f"[distill] student trained: {student} (step {final['step']}, {final.get('total_seconds', 0):.0f} s)")
    if args.train_only:
        return
    data = cfg.train.data
    for name, run, steps in (
        ("teacher", teacher, [1, args.teacher_steps]),
        ("student (distilled)", student, [1]),
    ):
        report = eval_arm(run, data, limit, steps, seeds, reuse=not args.reevaluate)
        row = {"arm": name, "run": str(run), "train_steps": final["step"] if run == student else "-", "eval": report}
        if run == student:
            row["train_seconds"] = final.get("total_seconds", final["seconds"])
        result["rows"].append(row)
        save(result, out / "distill.json")
    print_table(result)


if __name__ == "__main__":
    main()
