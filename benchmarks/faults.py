"""kill -9 at random moments, many times: does a run that is killed and resumed over and over end
bitwise equal to one that never was, with no temporary file, lock or duplicate stats row left?

    python benchmarks/faults.py [--kills 40] [--steps 30] [--data fashion-mnist] [--out results/faults]
                                [--quick]

Each kill lands either at a random moment of a training process (start-up, steps, checkpoint
writes, the export) or, in every other attempt, while a checkpoint's temporary file exists
(the writer's fsync is held open for 0.3 s so the kill cannot miss it). After every kill the
run is resumed by the next attempt; at the end it is trained to completion and compared with
an uninterrupted run of the same config. An attempt that finishes before its kill starts the
run over; only the kills since then count. Writes OUT/faults.json. The tests run 3 such kills
(tests/test_faults.py); this is the long version.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from _common import new_result, save

SLOW_FSYNC = (
    "import os, sys, time; fsync = os.fsync; os.fsync = lambda fd: (time.sleep(0.3), fsync(fd))[1]; "
    "from epsvae.cli import main; sys.exit(main(sys.argv[1:]))"
)
TINY = ["--set", "model.encoder.channels=8", "--set", "model.decoder.channels=8", "--set",
        "model.decoder.head_channels=8", "--set", "model.discriminator.channels=8", "--set", "train.warmup=2",
        "--set", "train.log_every=1", "--set", "train.ckpt_every=1", "--set", "train.loss.disc_start=1",
        "--batch-size", "8", "--no-progress"]  # fmt: skip


def train_args(out: Path, data: str, steps: int) -> list[str]:
    return ["train", "--preset", "eps-fmnist", "--data", data, "--out", str(out), "--steps", str(steps), *TINY]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/faults")
    ap.add_argument("--quick", action="store_true", help="2 kills, 4 steps")
    args = ap.parse_args()
    kills, steps = (2, 4) if args.quick else (args.kills, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    result = new_result()
    py = [sys.executable, "-m", "epsvae"]

    ref, run = out / "reference", out / "killed"
    for d in (ref, run):
        subprocess.run(["rm", "-rf", str(d)], check=True)
    t0 = time.time()
    subprocess.run([*py, *train_args(ref, args.data, steps)], check=True, capture_output=True)
    clean_seconds = time.time() - t0

    events = []
    compared: list[dict] = []  # the kills of the run compared at the end (since the last restart)
    while len(compared) < kills:
        during_write = len(compared) % 2 == 1
        cmd = [sys.executable, "-c", SLOW_FSYNC] if during_write else py
        proc = subprocess.Popen([*cmd, *train_args(run, args.data, steps)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        # a resumed run has less left to do than a fresh one: the kill comes within 60% of a whole run
        deadline = time.time() + rng.uniform(0.5, 0.6 * clean_seconds)
        tmp_seen = False
        while proc.poll() is None:
            tmp_seen = bool(list(run.glob(".*.tmp")))
            if (during_write and tmp_seen and (run / "checkpoint.pt").exists()) or (
                not during_write and time.time() > deadline
            ):
                proc.kill()
                break
            time.sleep(0.002)
        code = proc.wait()
        if code == 0:  # finished before the kill: start over (the kills so far no longer count)
            events.append({"killed": False, "finished": True})
            compared = []
            subprocess.run(["rm", "-rf", str(run)], check=True)
            continue
        if code != -9:
            raise SystemExit(f"attempt {len(events)} failed by itself (exit {code}): {proc.stderr.read()[-2000:]}")
        step = None
        if (run / "checkpoint.pt").exists():
            import torch

            step = int(torch.load(run / "checkpoint.pt", weights_only=True, mmap=True)["step"])
        events.append({"killed": True, "during_write": tmp_seen, "checkpoint_step": step})
        compared.append(events[-1])
        where = "during a checkpoint write" if tmp_seen else "elsewhere"
        print(f"kill {len(compared)}/{kills}: {where}, at step {step}")
    done = subprocess.run([*py, *train_args(run, args.data, steps)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the final resume failed: {done.stderr[-2000:]}")

    same = (ref / "model" / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    steps_logged = [r["step"] for r in rows if "loss" in r]
    leftovers = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == ".lock")
    result["rows"].append({
        "kills": len(compared),  # those of the compared run (attempts before a restart do not count)
        "kills_during_checkpoint_writes": sum(e["during_write"] for e in compared),
        "attempts_that_finished_first": sum(e.get("finished", False) for e in events),
        "steps": steps,
        "final_model_bitwise_equal": same,
        "stats_rows_exactly_once": steps_logged == list(range(1, steps + 1)),
        "leftovers": leftovers,
        "events": events,
    })  # fmt: skip
    save(result, out / "faults.json")
    row = result["rows"][0]
    print(
        f"{row['kills']} kills ({row['kills_during_checkpoint_writes']} during checkpoint writes): final model "
        f"bitwise equal: {same}; stats rows once each: {row['stats_rows_exactly_once']}; leftovers: {leftovers}"
    )
    if not (same and row["stats_rows_exactly_once"] and not leftovers):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
