"""Which recipe terms earn their place: variants of eps-fmnist over training seeds, judged by fd_indep.

    python benchmarks/recipe.py [--variants base,disc-stylegan,...] [--train-seeds 0,1] [--grids reversed-log,uniform]
                                [--steps N] [--limit N] [--out results/recipe] [--quick] [--train-only]
                                [--trained-only] [--reevaluate] [--jobs N]

Every variant is eps-fmnist (or the VAE) with a few overrides, trained with the presets'
budget once per training seed (`train.seed`), then evaluated on the test split at 3 decoding
steps on each grid and at 1 step once (on the first grid: one step is t = 1 to 0 on any
grid): PSNR, SSIM, fd_indep (no loss trained on its network: the measure to judge by) and
fd_domain (the perceptual loss's network; flatters the models trained against it). The table
gives each variant's mean over training seeds with the spread (max - min) / 2, and fd_indep
as a multiple of the VAE's (the goal: at most 0.6x with a PSNR at least the VAE's, at 3
steps). Variants (VARIANTS below) cover the discriminator (GroupNorm width, StyleGAN and
patch heads), the adversarial weight (adaptive, ramp-in, off), R1 (StyleGAN2-ADA heuristic),
the training t distribution (shifted logit-normal, uniform and grid-point mixtures), γ, the
perceptual weight, and bf16 autocast on the CPU (`train.mixed_precision=bf16`, a speed
switch: the check is that quality is unchanged).

`--jobs N` trains the unfinished (variant, seed) runs in N processes at once before
evaluating (a GPU machine: one Fashion-MNIST run keeps an H200 far from busy; each process
gets the machine's cores / N threads unless OMP_NUM_THREADS is set; logs in OUT/logs).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import PAPER_RECIPE as P
from _common import POOL_DISC, STYLEGAN_DISC, arm_row, is_trained, parse, prepare_feature_networks, save

from epsvae.evaluate import FD_NOTES

VARIANTS: dict[str, tuple[str, list[str]]] = {  # name -> (preset, overrides)
    # the study varies the paper's recipe (PAPER_RECIPE: its perceptual weight, which the
    # eps-fmnist preset left for 0.1); "preset" is eps-fmnist as it is now (the StyleGAN
    # discriminator head since 2026-12-06: the arms measured against the pool head before pin it);
    # "vae" is the baseline as the studies measured it (the pool head, which vae-fmnist left
    # on 2026-12-07: its runs keep their keys), "vae-disc-stylegan" vae-fmnist as it is now
    "vae": ("vae-fmnist", POOL_DISC),
    "base": ("eps-fmnist", [*P]),
    "preset": ("eps-fmnist", []),
    "disc-groups8": ("eps-fmnist", [*P, "model.discriminator.group_channels=8"]),
    "disc-stylegan": ("eps-fmnist", [*P, *STYLEGAN_DISC]),
    "disc-patch": ("eps-fmnist", [*P, "model.discriminator.head=patch", "model.discriminator.group_channels=8"]),
    "adv-adaptive": ("eps-fmnist", [*P, "train.loss.adv_weighting=adaptive"]),
    "adv-ramp": ("eps-fmnist", [*P, "train.loss.adv_ramp=500"]),
    "adv-off": ("eps-fmnist", [*P, "train.loss.adv_weight=0"]),
    "r1-ada": ("eps-fmnist", [*P, "train.loss.r1_heuristic=true"]),
    "t-shift": ("eps-fmnist", [*P, "model.flow.t_mean=0.8"]),
    "t-uniform-mix": ("eps-fmnist", [*P, "model.flow.t_uniform_mix=0.3"]),
    "t-grid-mix": ("eps-fmnist", [*P, "model.flow.t_grid_mix=0.3"]),
    "gamma1": ("eps-fmnist", [*P, "model.flow.gamma=1.0"]),
    "pweight01": ("eps-fmnist", [*P, "train.loss.perceptual_weight=0.1"]),
    "pweight01-gamma1": ("eps-fmnist", [*P, "train.loss.perceptual_weight=0.1", "model.flow.gamma=1.0"]),
    # against "preset-disc-pool" (the preset it was measured beside): the same recipe and budget
    "dit-decoder": ("eps-fmnist-dit", POOL_DISC),
    "bf16": ("eps-fmnist", [*P, "train.mixed_precision=bf16"]),  # issue 13's CPU speed-up: the same quality?
    # arms of the preset itself (perceptual weight 0.1), judged against the preset they were
    # measured beside ("preset-disc-pool" for those that pin POOL_DISC): does the term still pay
    # on the recipe users get?
    "preset-t-grid-mix": ("eps-fmnist", [*POOL_DISC, "model.flow.t_grid_mix=0.3"]),
    "preset-t-uniform-mix": ("eps-fmnist", [*POOL_DISC, "model.flow.t_uniform_mix=0.3"]),
    "preset-disc-stylegan": ("eps-fmnist", STYLEGAN_DISC),  # = "preset" since 2026-12-06 (the same runs)
    "preset-disc-pool": ("eps-fmnist", POOL_DISC),  # "preset" until 2026-12-06 (the same runs)
    # the decoder network outputs the clean image (flow.prediction, not in the paper): does
    # the photo decoder's cleaner decode carry over to the speckle on black backgrounds?
    "preset-x0": ("eps-fmnist", [*POOL_DISC, "model.flow.prediction=x0"]),
    # the same on the preset as it is now (the StyleGAN head): x0 was measured beside the pool head only
    "preset-sg-x0": ("eps-fmnist", ["model.flow.prediction=x0"]),
    # the baseline with the preset's discriminator: is the StyleGAN head's gain the diffusion
    # decoder's, or would the VAE it is compared with take it as well? (vae-fmnist took it on
    # 2026-12-07: the same runs as vae-fmnist at its defaults)
    "vae-disc-stylegan": ("vae-fmnist", STYLEGAN_DISC),
    # the weighting of the adversarial term on the preset as it is now (the StyleGAN head),
    # judged against "preset" (= "preset-disc-stylegan", the same runs): VQGAN's adaptive
    # weight, a ramp-in instead of the hard switch, StyleGAN2-ADA's R1 weight, the patch head
    "preset-adv-adaptive": ("eps-fmnist", ["train.loss.adv_weighting=adaptive"]),
    "preset-adv-ramp": ("eps-fmnist", ["train.loss.adv_ramp=500"]),
    "preset-r1-ada": ("eps-fmnist", ["train.loss.r1_heuristic=true"]),
    "preset-disc-patch": ("eps-fmnist", ["model.discriminator.head=patch"]),
    # the shifted logit-normal t (median sigmoid(0.8) = 0.69; 6.5% of t above 0.91 where
    # the logit-normal puts 1%): more training where the one-step decode and reversed-log's
    # first two calls evaluate; the preset's grid-point and uniform mixtures are measured above
    "preset-t-shift": ("eps-fmnist", ["model.flow.t_mean=0.8"]),
    # half the shift (median sigmoid(0.4) = 0.60; 2.8% of t above 0.91): does the one-step
    # gain come with less of the middle-t loss that kept 0.8's 3-step distance level?
    "preset-t-shift-04": ("eps-fmnist", ["model.flow.t_mean=0.4"]),
    # a shift above 0.8 (median sigmoid(1.2) = 0.77; 13% of t above 0.91): the one-step gain
    # grew from 0.4 to 0.8; does it keep growing, and at what cost to the 3-step decode?
    "preset-t-shift-12": ("eps-fmnist", ["model.flow.t_mean=1.2"]),
}
METRICS = ("psnr", "ssim", "fd_indep", "fd_indep2", "fd_domain")


def summarize(rows: list[dict]) -> dict:
    """Per decode setting: mean and half-range over training seeds of each metric (decode-seed means)."""
    out: dict[str, dict] = {}
    for key in rows[0]["eval"]["results"]:
        per = {
            m: [r["eval"]["results"][key][m]["mean"] for r in rows if m in r["eval"]["results"][key]] for m in METRICS
        }
        out[key] = {
            m: {"mean": statistics.fmean(v), "half_range": (max(v) - min(v)) / 2, "per_seed": v}
            for m, v in per.items()
            if v
        }
    return out


def train_in_parallel(names: list[str], train_seeds: list[int], args) -> list[str]:
    """Train every unfinished (variant, seed) run, `args.jobs` processes at a time (each this
    script with --train-only for one run, its output in OUT/logs/VARIANT-sSEED.log); returns the
    runs whose process failed. The feature networks are trained first, here, so that no two
    processes train the same one."""
    todo = [(n, s) for n in names for s in train_seeds if not is_trained(VARIANTS[n][0], arm_sets(n, s), args)]
    if not todo:
        return []
    for name, seed in todo:
        prepare_feature_networks(VARIANTS[name][0], arm_sets(name, seed), args)
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    common = ["--train-only", "--out", str(args.out), "--runs", str(args.runs), *(f"--set={o}" for o in args.set)]
    common += (["--steps", str(args.steps)] if args.steps else []) + (["--quick"] if args.quick else [])

    def one(arm: tuple[str, int]) -> int:
        name, seed = arm
        cmd = [sys.executable, __file__, "--variants", name, "--train-seeds", str(seed), *common]
        with open(logs / f"{name}-s{seed}.log", "w") as log:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    print(f"[recipe] training {len(todo)} runs, {args.jobs} at a time (logs in {logs})")
    with ThreadPoolExecutor(args.jobs) as pool:
        codes = list(pool.map(one, todo))
    failed = [f"{n} s{s}" for (n, s), code in zip(todo, codes, strict=True) if code != 0]
    for tag in failed:
        print(f"[{tag}] training failed: see {logs / tag.replace(' ', '-')}.log")
    return failed


def arm_sets(name: str, seed: int) -> list[str]:
    """A variant's overrides for one training seed (the seed is part of the run's key)."""
    return [*VARIANTS[name][1], f"train.seed={seed}"]


def main() -> None:
    def add(ap) -> None:
        ap.add_argument("--variants", default=",".join(VARIANTS))
        ap.add_argument("--train-seeds", default="0,1")
        ap.add_argument("--grids", default="reversed-log,uniform", help="evaluation grids (ε-VAE variants)")
        ap.add_argument(
            "--trained-only",
            action="store_true",
            help="evaluate only the (variant, seed) runs that have finished training, listing the others "
            "(a study in progress: its table so far, while other processes train the rest)",
        )
        ap.add_argument("--jobs", type=int, default=1, help="train this many (variant, seed) runs at once, "
                        "each in its own process (a big machine; module docstring)")  # fmt: skip

    args, limit, seeds, out, result = parse(__doc__, "results/recipe", add)
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    grids = [g.strip() for g in args.grids.split(",")]
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1 and not args.trained_only:
        failed = train_in_parallel(names, train_seeds, args)
        if failed:
            result["failed"] = failed
        if args.train_only:
            raise SystemExit(1 if failed else 0)
        args.trained_only = True  # the table: the runs that finished (a failed one is listed, not retried)
    result["summary"] = []
    for name in names:
        preset = VARIANTS[name][0]
        finished = {}  # decided once per (variant, seed): a run finishing between grids joins no table
        for gi, grid in enumerate(grids if preset.startswith("eps") else [None]):
            # one decoding step is the same on every grid (t = 1 to 0): decode it on the first grid only
            steps = (1, 3) if gi == 0 else (3,)
            rows = []
            for s in train_seeds:
                tag, sets = f"{name} s{s}", arm_sets(name, s)
                if args.trained_only and s not in finished:
                    finished[s] = is_trained(preset, sets, args)
                if args.trained_only and not finished[s]:
                    if gi == 0:
                        print(f"[{tag}] not trained yet: left out")
                        result.setdefault("not_trained", []).append(tag)
                    continue
                row = arm_row(tag, preset, sets, args, limit, seeds, decode_steps=steps, grid=grid)
                if row is not None:
                    rows.append(row)
                    result["rows"].append({**row, "variant": name, "train_seed": s})
            if rows:
                result["summary"].append({"variant": name, "grid": grid, "results": summarize(rows)})
                save(result, out / "recipe.json")
            if args.train_only:
                break  # one grid trains the runs; the others only evaluate
    print_summary(result)
    if result["summary"]:
        save(result, out / "recipe.json")  # again: the runs not trained yet of the last variants
        (out / "recipe.md").write_text(markdown(result))
    if result.get("failed"):
        raise SystemExit(f"{len(result['failed'])} run(s) failed to train: {', '.join(result['failed'])}")


def vae_fd(result: dict, metric: str = "fd_indep") -> float | None:
    """The VAE variant's mean `metric` over its training seeds (the goal's reference), if it was measured."""
    vae = next((s for s in result["summary"] if s["variant"] == "vae"), None)
    stat = vae["results"]["deterministic"].get(metric) if vae else None
    return stat["mean"] if stat else None


def _ratio(m: dict, metric: str, ref: float | None) -> str:
    return f"{m[metric]['mean'] / ref:.2f}" if ref and metric in m else "-"


def _cell(stat: dict | None, digits: int) -> str:
    """'mean ± half-range' over training seeds; the mean alone from one seed (no spread to show)."""
    if stat is None:
        return "-"
    spread = f" ± {stat['half_range']:.{digits}f}" if len(stat["per_seed"]) > 1 else ""
    return f"{stat['mean']:.{digits}f}{spread}"


def markdown(result: dict) -> str:
    """The summary as a docs table: mean ± half the range over training seeds, each seed's fd_indep,
    and fd_indep and fd_indep2 as multiples of the VAE's mean (when the VAE is among the variants)."""
    ref, ref2 = vae_fd(result), vae_fd(result, "fd_indep2")
    lines = [
        f"{result['machine']}, {result['date']}: `{result['command']}`",
        "",
        "| variant | grid | steps | seeds | PSNR (dB) | SSIM | fd_indep | x VAE | fd_indep per seed "
        "| fd_indep2 | x VAE | fd_domain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        for key, m in s["results"].items():
            fd = m.get("fd_indep")
            per = ", ".join(f"{v:.4f}" for v in fd["per_seed"]) if fd else "-"
            steps = "-" if key == "deterministic" else key
            cells = [s["variant"], s["grid"] or "-", steps, len(m["psnr"]["per_seed"]), _cell(m.get("psnr"), 2),
                     _cell(m.get("ssim"), 3), _cell(fd, 4), _ratio(m, "fd_indep", ref), per,
                     _cell(m.get("fd_indep2"), 4), _ratio(m, "fd_indep2", ref2),
                     _cell(m.get("fd_domain"), 4)]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "± is half the range over training seeds (none shown for one seed); each seed's value is the mean "
              "over decoding seeds."]  # fmt: skip
    if result.get("not_trained"):
        lines.append(f"Not trained yet, left out: {', '.join(result['not_trained'])}.")
    return "\n".join(lines) + "\n"


def print_summary(result: dict) -> None:
    if not result.get("summary"):
        return
    ref, ref2 = vae_fd(result), vae_fd(result, "fd_indep2")
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")
    w = max(16, *(len(s["variant"]) + 2 for s in result["summary"]))  # the variant column fits the longest name
    print(f"{'variant':<{w}}{'grid':<14}{'dec':>4}{'PSNR':>15}{'SSIM':>16}{'fd_indep':>16}{'x VAE':>7}"
          f"{'fd_indep2':>16}{'x VAE':>7}{'fd_domain':>16}")  # fmt: skip
    for s in result["summary"]:
        for key, m in s["results"].items():
            cell = lambda k: f"{m[k]['mean']:.4f}±{m[k]['half_range']:.4f}" if k in m else "-"  # noqa: E731, B023
            print(f"{s['variant']:<{w}}{str(s['grid'] or '-'):<14}{key[:4]:>4}{cell('psnr'):>15}{cell('ssim'):>16}"
                  f"{cell('fd_indep'):>16}{_ratio(m, 'fd_indep', ref):>7}{cell('fd_indep2'):>16}"
                  f"{_ratio(m, 'fd_indep2', ref2):>7}{cell('fd_domain'):>16}")  # fmt: skip
    print("mean ± half the range over training seeds; fd_indep x VAE: the goal is <= 0.6 at 3 steps with PSNR >= VAE's")
    print("\n".join(FD_NOTES.values()))


if __name__ == "__main__":
    main()
