"""A training run's logged terms, averaged over windows of steps (reads RUN/stats.jsonl).

    python benchmarks/train_stats.py RUN [RUN ...] [--keys d_real,d_fake,adv] [--window 250] [--out FILE.json]

For questions the final metrics cannot answer, e.g. whether the trajectory discriminator
separates real from reconstructed pairs at all (`d_real - d_fake`, the mean logit gap,
is printed whenever both are logged) or how the velocity loss falls per time bin.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_stats(run: Path) -> list[dict]:
    path = run / "stats.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run}: no stats.jsonl (not a training run directory?)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run: skip it, say so
            print(f"{path}:{n}: unreadable line skipped")
    return rows


def windows(rows: list[dict], keys: list[str], window: int) -> list[dict]:
    """Mean of each key over steps (k * window, (k + 1) * window], for the windows that logged it."""
    buckets: dict[int, list[dict]] = {}
    for r in rows:
        buckets.setdefault(max(r["step"] - 1, 0) // window, []).append(r)
    table = []
    for k in sorted(buckets):
        entry = {"steps": f"{k * window + 1}-{(k + 1) * window}"}
        for key in keys:
            vals = [float(r[key]) for r in buckets[k] if key in r and math.isfinite(float(r[key]))]
            entry[key] = sum(vals) / len(vals) if vals else None
        if entry.get("d_real") is not None and entry.get("d_fake") is not None:
            entry["gap"] = entry["d_real"] - entry["d_fake"]
        table.append(entry)
    return table


def _cell(v) -> str:
    return v if isinstance(v, str) else "-" if v is None else f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--keys", default="d_real,d_fake,adv,disc")
    ap.add_argument("--window", type=int, default=250)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.window < 1:
        raise SystemExit("--window must be at least 1")
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    result = {}
    for run in args.runs:
        table = windows(read_stats(run), keys, args.window)
        result[str(run)] = table
        cols = list(dict.fromkeys(c for entry in table for c in entry)) or ["steps"]
        print(f"\n{run}")
        print("".join(f"{c:>12}" for c in cols))
        for entry in table:
            cells = (_cell(entry.get(c)) for c in cols)
            print("".join(f"{c:>12}" for c in cells))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
