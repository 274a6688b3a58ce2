"""Plots for docs/results.md from the benchmark scripts' JSON, unedited.

    python benchmarks/plots.py RESULT.json [RESULT.json ...] --out docs/
    python benchmarks/plots.py --recon VAE_MODEL EPS_MODEL [--data fashion-mnist] --out docs/
    python benchmarks/plots.py A.json B.json --combine compression_all --out docs/

Each file is drawn by its kind (its name's first word): compression (bars, and quality
against compression), steps, gamma (quality against γ), ablation (bars, or quality over the
arms with one line per grid where arms were decoded on several), resolution, generation.
Quality panels show PSNR, fd_indep (Fréchet distance in the independent network's space, the
measure no training loss uses) and, where the file has it, fd_domain (in the perceptual loss's
own network's space), with the spread over decoding seeds; none of them is Inception FID.
`--recon` draws the same test images reconstructed by a VAE and by an ε-VAE at 1 and 3
decoding steps (seed 0), one row each.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_NAMES = {
    "psnr": "PSNR (dB), higher is better",
    "fd_indep": "fd_indep, lower is better",
    "fd_domain": "fd_domain (the loss's own network), lower is better",
}


def _points(row: dict):
    return row["eval"]["results"].items()  # (decoding steps or 'deterministic', metrics)


def metrics_of(result: dict) -> list[tuple[str, str]]:
    """The quality panels a result file has: PSNR, then fd_indep and fd_domain where measured."""
    first = next(iter(_points(result["rows"][0])))[1]
    return [(k, name) for k, name in METRIC_NAMES.items() if k in first]


def bars(result: dict, title: str, path: Path) -> None:
    """One bar per (arm, decoding steps), for PSNR and the Fréchet distances."""
    metrics = metrics_of(result)
    labels, values = [], {k: [] for k, _ in metrics}
    for row in result["rows"]:
        for steps, m in _points(row):
            arm = textwrap.fill(row["arm"], 9)  # long arm names wrap instead of running into the next
            labels.append(f"{arm}\n{'VAE' if steps == 'deterministic' else steps + ' step'}")
            for k, _ in metrics:
                values[k].append((m[k]["mean"], m[k]["std"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4 * len(metrics), 0.65 * len(metrics) * len(labels)), 4.4))
    for ax, (k, name) in zip(axes, metrics, strict=True):
        ax.bar(range(len(labels)), [v[0] for v in values[k]], yerr=[v[1] for v in values[k]], capsize=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"{title} ({result['machine']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lines_over_steps(result: dict, path: Path) -> None:
    """Quality against decoding steps, one line per grid."""
    metrics = metrics_of(result)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6))
    for row in result["rows"]:
        pts = [(int(s), m) for s, m in _points(row)]
        for ax, (k, name) in zip(axes, metrics, strict=True):
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


def series_over(result: dict, x_of) -> dict[str, list]:
    """{line label: [(x, metrics)]}: the VAE, and ε-VAE at each decoding step count; where the
    rows were decoded on several grids, one line per grid (one for 1 step, where the grid
    does not matter; an x seen twice in a line keeps its first point)."""
    grids = {row["eval"].get("grid") for row in result["rows"] if row["eval"].get("kind") == "epsilon"}
    series: dict[str, list] = {}
    for row in result["rows"]:
        x = x_of(row)
        for steps, m in _points(row):
            kind = "VAE" if steps == "deterministic" else f"ε-VAE, {steps} step"
            if len(grids) > 1 and steps not in ("deterministic", "1"):
                kind += f", {row['eval'].get('grid')}"
            line = series.setdefault(kind, [])
            if all(seen != x for seen, _ in line):
                line.append((x, m))
    return series


def quality_over(
    result: dict, x_of, xlabel: str, title: str, path: Path, log2: bool = False, ticks: list[str] | None = None
) -> None:
    """Quality against a per-row quantity `x_of(row)` (compression, evaluation resolution, γ, or
    an arm's position, named by `ticks`): one line per `series_over` label."""
    series = series_over(result, x_of)
    metrics = metrics_of(result)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6))
    for kind, pts in series.items():
        pts.sort(key=lambda p: p[0])
        for ax, (k, name) in zip(axes, metrics, strict=True):
            ax.errorbar([p[0] for p in pts], [p[1][k]["mean"] for p in pts], yerr=[p[1][k]["std"] for p in pts],
                        marker="o", capsize=3, label=kind)  # fmt: skip
            ax.set_xlabel(xlabel)
            if log2:
                ax.set_xscale("log", base=2)
            if ticks:
                ax.set_xticks(range(len(ticks)), [textwrap.fill(t, 12) for t in ticks], fontsize=7)
            ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} ({result['machine']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def arm_positions(result: dict) -> dict[str, int]:
    """Arm name -> its place in the order the rows first name it (an ablation's x axis)."""
    return {arm: i for i, arm in enumerate(dict.fromkeys(row["arm"] for row in result["rows"]))}


def arms_on_several_grids(result: dict) -> bool:
    """Whether some arm was decoded on more than one grid (then an ablation is drawn over its
    arms, one line per grid; the script's own file, one grid per arm, stays bars)."""
    grids: dict[str, set] = {}
    for row in result["rows"]:
        grids.setdefault(row["arm"], set()).add(row["eval"].get("grid"))
    return any(len(g) > 1 for g in grids.values())


def _gamma(row: dict) -> float:
    """A γ-sweep row's γ (rows written before the field existed carry it in the arm name)."""
    return float(row["gamma"]) if "gamma" in row else float(row["arm"].removeprefix("gamma="))


def generation_bars(result: dict, path: Path) -> None:
    """Fréchet distances of generated samples and end-to-end images/s, one bar per arm."""
    arms = [f"{r['arm']}\n{'x'.join(map(str, r['latent_shape']))}" for r in result["rows"]]
    panels = [(k, f"generation {k}, lower is better") for k in ("fd_indep", "fd_domain") if k in result["rows"][0]]
    panels.append(("images_per_s", "images/s end to end"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, name) in zip(axes, panels, strict=True):
        ax.bar(range(len(arms)), [r[key] for r in result["rows"]])
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"DiT on autoencoder latents ({result['machine']}, {result['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def recon_grid(vae_dir: str, eps_dir: str, data: str, path: Path, n: int = 12) -> None:
    """Originals, VAE, ε-VAE 1 step and 3 steps on the first `n` test images."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from epsvae import load_pretrained
    from epsvae.data import load_batch, open_dataset
    from epsvae.images import save_grid

    vae, eps = load_pretrained(vae_dir), load_pretrained(eps_dir)
    x = load_batch(open_dataset(data, "test", eps.config.image_size, eps.config.image_channels), list(range(n)))[0]
    with torch.no_grad():
        rows = [x, vae.decode(vae.encode(x))]
        z = eps.encode(x)
        rows += [eps.decode(z, steps=s, generator=torch.Generator().manual_seed(0)) for s in (1, 3)]
    save_grid(rows, path, scale=3 if x.shape[-1] <= 64 else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--recon", nargs=2, metavar=("VAE_MODEL", "EPS_MODEL"), help="draw a reconstruction grid")
    ap.add_argument("--data", default="fashion-mnist", help="dataset of the reconstruction grid")
    ap.add_argument("--name", default="reconstructions", help="file name (no suffix) of the reconstruction grid")
    ap.add_argument("--combine", metavar="NAME", help="draw the rows of all RESULT files as one figure NAME.png")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = [(Path(name).stem, json.loads(Path(name).read_text())) for name in args.results]
    if args.combine and inputs:  # rows of several runs of one benchmark (e.g. 1x and 2x arms) in one figure
        merged = {**inputs[0][1], "rows": [row for _, result in inputs for row in result["rows"]]}
        merged["command"] = " + ".join(result["command"] for _, result in inputs)
        inputs = [(args.combine, merged)]
    for stem, result in inputs:
        if stem.startswith("steps"):
            lines_over_steps(result, out / f"{stem}.png")
        elif stem.startswith("generation"):
            generation_bars(result, out / f"{stem}.png")
        elif stem.startswith("gamma"):  # one arm per γ: quality against γ, one line per step count
            quality_over(result, _gamma, "noise scaling γ", "quality vs γ", out / f"{stem}.png")
        elif stem.startswith("ablation") and arms_on_several_grids(result):
            pos = arm_positions(result)  # some arm decoded on several grids: one line per grid over the arms
            quality_over(result, lambda r, pos=pos: pos[r["arm"]], "cumulative ablation (each arm adds one ingredient)",
                         "ablation, both grids", out / f"{stem}.png", ticks=list(pos))  # fmt: skip
        elif stem.startswith("resolution"):  # trained at one size, evaluated at several
            quality_over(result, lambda r: r["eval"]["resolution"], "evaluation resolution (px)",
                         "quality vs resolution, trained at 32 px", out / f"{stem}.png", log2=True)  # fmt: skip
        else:
            bars(result, stem.split("_")[0], out / f"{stem}.png")
            if stem.startswith("compression") and len({r["compression"] for r in result["rows"]}) > 1:
                quality_over(result, lambda r: r["compression"], "compression (image values / latent values)",
                             "quality vs compression", out / f"{stem}_vs_compression.png", log2=True)  # fmt: skip
        print(f"{stem} -> {out / (stem + '.png')}")
    if args.recon:
        recon_grid(*args.recon, args.data, out / f"{args.name}.png")
        print(f"reconstructions -> {out / (args.name + '.png')}")


if __name__ == "__main__":
    main()
