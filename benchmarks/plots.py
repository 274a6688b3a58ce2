"""Plots for docs/results.md from the benchmark scripts' JSON, unedited.

    python benchmarks/plots.py RESULT.json [RESULT.json ...] --out docs/

Each file is drawn by its kind (the rows' shape): compression, steps, gamma, ablation,
resolution. Quality panels show PSNR and fd_domain (Fréchet distance in the domain
feature network's space, not Inception FID) with the spread over decoding seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [("psnr", "PSNR (dB), higher is better"), ("fd_domain", "fd_domain, lower is better")]


def _points(row: dict):
    return row["eval"]["results"].items()  # (decoding steps or 'deterministic', metrics)


def bars(result: dict, title: str, path: Path) -> None:
    """One bar per (arm, decoding steps), for PSNR and fd_domain."""
    labels, values = [], {k: [] for k, _ in METRICS}
    for row in result["rows"]:
        for steps, m in _points(row):
            labels.append(f"{row['arm']}\n{'VAE' if steps == 'deterministic' else steps + ' step'}")
            for k, _ in METRICS:
                values[k].append((m[k]["mean"], m[k]["std"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(labels)), 4))
    for ax, (k, name) in zip(axes, METRICS, strict=True):
        ax.bar(range(len(labels)), [v[0] for v in values[k]], yerr=[v[1] for v in values[k]], capsize=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"{title} ({result['machine']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lines_over_steps(result: dict, path: Path) -> None:
    """Quality against decoding steps, one line per grid."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for row in result["rows"]:
        pts = [(int(s), m) for s, m in _points(row)]
        for ax, (k, name) in zip(axes, METRICS, strict=True):
            ax.errorbar(
                [p[0] for p in pts],
                [p[1][k]["mean"] for p in pts],
                yerr=[p[1][k]["std"] for p in pts],
                marker="o",
                capsize=3,
                label=row["arm"],
            )
            ax.set_xlabel("decoding steps")
            ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"quality vs decoding steps ({result['machine']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.results:
        result = json.loads(Path(name).read_text())
        stem = Path(name).stem
        if stem.startswith("steps"):
            lines_over_steps(result, out / f"{stem}.png")
        else:
            bars(result, stem.split("_")[0], out / f"{stem}.png")
        print(f"{name} -> {out / (stem + '.png')}")


if __name__ == "__main__":
    main()
