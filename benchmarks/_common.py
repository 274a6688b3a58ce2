"""What the benchmark scripts share: train an arm with the engine, evaluate it, report."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from epsvae.checkpoint import flatten  # noqa: E402
from epsvae.config import ConfigError, RunConfig, apply_overrides, to_dict  # noqa: E402
from epsvae.engine import RunInterrupted  # noqa: E402
from epsvae.evaluate import FD_NOTES, evaluate, feature_network_path  # noqa: E402
from epsvae.models import WEIGHTS_NAME  # noqa: E402
from epsvae.presets import run_config  # noqa: E402
from epsvae.rundir import RunIOError, cpu_description, write_json  # noqa: E402
from epsvae.train import prepare_run, train  # noqa: E402

# --quick: shrink every network and the budget to a smoke test that runs in seconds
QUICK = [
    "model.encoder.channels=4", "model.decoder.channels=4", "model.decoder.head_channels=4",
    "model.discriminator.channels=4", "train.batch_size=4", "train.loss.disc_start=1", "train.log_every=1",
]  # fmt: skip
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fd_indep (judge by this), fd_indep2 (a second instance of it: a finding holds in both) and
# fd_domain (the loss's own network)
FID_FEATURES = "indep,indep2,features:auto"

# The paper's perceptual weight (PAPER.md), which eps-fmnist's default left on 2026-11-29 for
# 0.1 (docs/presets.md). The studies of the paper's recipe (the ablation, γ, steps, the frozen
# encoder, resolution, compression, generation, the recipe study's variants) pin it: their
# runs keep the keys, and their documented numbers the meaning, they had before. They pin the
# paper-like discriminator too (the pool head, one channel per GroupNorm group), which
# eps-fmnist left on 2026-12-06 for the StyleGAN head (POOL_DISC: at the config's defaults,
# so left out of the run keys).
POOL_DISC = ["model.discriminator.head=pool", "model.discriminator.group_channels=0"]
# eps-fmnist's discriminator since 2026-12-06, as overrides: the arms that add it to another recipe
STYLEGAN_DISC = ["model.discriminator.head=stylegan", "model.discriminator.group_channels=8"]
PAPER_RECIPE = ["train.loss.perceptual_weight=0.5", *POOL_DISC]


def model_dir(path: Path) -> Path:
    """An exported model directory, or a run directory's `model/` when it holds one."""
    return path / "model" if (path / "model" / "config.json").is_file() else path


def cpu_machine() -> str:
    """'CPU (model; kernel flags; N cores)': trainings reproduce bitwise only on one CPU type
    (docs/results.md, "Training reproduces per CPU type"), so reports name it."""
    model, flags = cpu_description()
    return f"CPU ({model}; {' '.join(flags) or 'no AVX2/AVX-512/AMX flags listed'}; {os.cpu_count()} cores)"


def new_result() -> dict:
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": torch.cuda.get_device_name() if DEVICE == "cuda" else cpu_machine(),
        "torch": torch.__version__,
        "rows": [],
    }


# Config keys added after the runs in a shared cache were keyed (the cache of e061dd9, before
# train.frozen_encoder existed): left out of the digest while at their defaults, which
# reproduce the training from before they existed, so those runs are still found. (Runs keyed
# between 41533be and e3437cf, with frozen_encoder in their digest, get new names.) A key
# added to the configs later goes here too.
LATER_KEYS = (
    "train.frozen_encoder", "train.distill_from", "train.distill_steps", "train.loss.adv_ramp",
    "train.loss.adv_weighting", "train.loss.r1_heuristic", "train.loss.distill_weight",
    "model.discriminator.group_channels", "model.discriminator.head", "model.discriminator.mbstd_group",
    "model.flow.t_uniform_mix", "model.flow.t_grid_mix", "model.decoder.arch", "model.decoder.dit_hidden",
    "model.decoder.dit_depth", "model.decoder.dit_heads", "model.decoder.dit_patch", "model.decoder.dit_mlp_ratio",
    "model.flow.prediction", "model.flow.t_min", "model.decoder.padding_mode",
)  # fmt: skip


def config_digest(cfg: RunConfig) -> str:
    """10 hex digits of the run config, without the LATER_KEYS that are at their defaults."""
    data, defaults = to_dict(cfg), flatten(to_dict(RunConfig()))
    for key in LATER_KEYS:
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node[part]
        if last in node and node[last] == defaults[key]:
            del node[last]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(runs: Path, preset: str, overrides: list[str], steps: int | None) -> Path:
    """Where an arm's run lives: keyed by a digest of its full config, so that benchmarks
    asking for the same training (e.g. the ablation's last arm and γ = 0.6) share one run."""
    return runs / f"{preset}-{config_digest(arm_config(preset, overrides, steps))}"


def arm_config(preset: str, overrides: list[str], steps: int | None) -> RunConfig:
    """An arm's full config: the preset with its overrides and step count. A bad override (a
    --set or a variant's) is a one-line exit naming the arm, not a traceback."""
    try:
        cfg = run_config(preset)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
    except ConfigError as e:
        raise _bad_config(preset, overrides, e) from None
    if steps is not None:
        cfg.train.steps = steps
    return cfg


def _arm_settings(overrides: list[str], steps: int | None, quick: bool) -> tuple[list[str], int | None]:
    """An arm's overrides and steps as trained: --quick adds the tiny networks and 3 steps."""
    return overrides + (QUICK if quick else []), 3 if quick else steps


def train_arm(runs: Path, preset: str, overrides: list[str], steps: int | None, quick: bool):
    """Train (or resume, or find finished) one arm; returns (run dir, RunConfig, training seconds).

    The seconds are the engine's wall time for the whole run, read back from its final.json,
    so an arm another benchmark already trained reports the time it took then."""
    overrides, steps = _arm_settings(overrides, steps, quick)
    run = run_dir(runs, preset, overrides, steps)
    try:
        cfg = prepare_run(run, preset, overrides, steps=steps)
    except ConfigError as e:
        raise _bad_config(preset, overrides, e) from None
    if not _finished(run):  # a finished run is read back, not opened by the trainer again
        try:
            train(run, cfg, progress=False)
        except RunInterrupted as exc:  # SIGINT/SIGTERM: the checkpoint is written; the same command resumes
            print(f"[{run.name}] {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
    final = json.loads((run / "final.json").read_text())
    return run, cfg, final.get("total_seconds", final["seconds"]), final["step"]


def is_trained(preset: str, overrides: list[str], args) -> bool:
    """Whether the run that `arm_row` would use (the same arguments) has finished its steps
    (final.json at the configured step), without training anything."""
    overrides, steps = _arm_settings(overrides + args.set, args.steps, args.quick)
    return _finished(run_dir(args.runs, preset, overrides, steps))


def prepare_feature_networks(preset: str, overrides: list[str], args) -> None:
    """Train (once, in this process) every automatic feature network an arm uses: its perceptual
    loss's (fd_domain's) and the evaluation's, so that parallel trainings never train one twice."""
    overrides, steps = _arm_settings(overrides + args.set, args.steps, args.quick)
    cfg = arm_config(preset, overrides, steps)
    res, chans = cfg.train.resolution or cfg.model.image_size, cfg.model.image_channels
    for spec in FID_FEATURES.split(","):
        feature_network_path(spec, cfg.train.data, res, chans)
    if cfg.train.loss.perceptual == "features:auto":
        feature_network_path("features:auto", cfg.train.data, res, chans)


def _bad_config(preset: str, overrides: list[str], error: ConfigError) -> SystemExit:
    """A bad --set (or variant), or a run directory holding another config: say which arm and why."""
    return SystemExit(f"{preset} with {' '.join(overrides)}: {error}")


def _finished(run: Path) -> bool:
    """Whether the run reached its configured steps (final.json at config.json's step) and exported
    its model at that step; anything unreadable or missing counts as not finished (the trainer then
    resumes, or exports what a kill after the last checkpoint left unexported)."""
    try:
        cfg_steps = json.loads((run / "config.json").read_text())["train"]["steps"]
        step = json.loads((run / "final.json").read_text())["step"]
        exported = json.loads((run / "model" / "config.json").read_text()).get("_step", step)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return step >= cfg_steps and exported == step and (run / "model" / WEIGHTS_NAME).is_file()


def _tree_digest(*paths: Path, pattern: str = "*", exclude: set[Path] = frozenset()) -> str:
    """sha256 over the names and bytes of every file matching `pattern` under `paths` (directories),
    but those in `exclude`."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(f for f in root.rglob(pattern) if f.is_file() and f not in exclude)
        for f in files:
            h.update(f.relative_to(root.parent).as_posix().encode() + b"\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                    h.update(block)
    return h.hexdigest()


def eval_key(run: Path, data: str, limit, steps, seeds, grid, resolution) -> str:
    """What an evaluation's numbers depend on: the exported model's files, the data and settings,
    both feature networks' files, the device, torch, and the source of the epsvae package (any
    change to it makes a new key: a cached report is only reused by the code that produced it)."""
    model_cfg = json.loads((run / "model" / "config.json").read_text())
    res, chans = resolution or model_cfg["image_size"], model_cfg["image_channels"]
    nets = [Path(feature_network_path(spec, data, res, chans)) for spec in FID_FEATURES.split(",")]
    settings = {
        "data": data, "limit": limit, "steps": list(steps), "seeds": list(seeds), "grid": grid,
        "resolution": resolution, "features": FID_FEATURES, "device": DEVICE, "torch": torch.__version__,
    }  # fmt: skip
    parts = [json.dumps(settings, sort_keys=True), _tree_digest(run / "model"), _tree_digest(*nets), source_digest()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@functools.cache
def source_digest() -> str:
    """The epsvae package's source (its .py files but presets.py), once per process: part of every
    `eval_key`. The presets only say what a new run trains; an exported model's evaluation reads
    its own config.json, so a changed preset default keeps the kept evaluations of finished runs."""
    src = Path(__file__).resolve().parents[1] / "src" / "epsvae"
    return _tree_digest(src, pattern="*.py", exclude={src / "presets.py"})


def eval_arm(
    run: Path,
    data: str,
    limit: int | None,
    steps: list[int],
    seeds: list[int],
    grid: str | None = None,
    resolution: int | None = None,
    reuse: bool = True,
) -> dict:
    """PSNR, SSIM, fd_indep, fd_indep2 and fd_domain of the test split per decoding step count, over seeds.

    fd_indep (the independent network's space) is the measure to judge by, and fd_indep2 (a
    second instance of that network) says whether a finding holds beyond one instance; fd_domain, in the
    perceptual loss's own network's space, stays beside it for comparison with older results.

    Each report is kept in the run's evals/ under `eval_key` and reused (with `cached_from`: the
    file and the date it was measured) when the same evaluation is asked again, e.g. when a
    two-seed table is rebuilt after a new seed finished; `reuse=False` (--reevaluate) measures anew."""
    cache = run / "evals" / f"{eval_key(run, data, limit, steps, seeds, grid, resolution)}.json"
    if reuse and cache.is_file():
        try:
            kept = json.loads(cache.read_text())
            print(f"[{run.name}] evaluation reused from {cache} (measured {kept['date']})")
            return {**kept["report"], "cached_from": {"file": str(cache), "date": kept["date"]}}
        except (OSError, ValueError, KeyError) as e:  # unreadable: measure again and rewrite it
            print(f"[{run.name}] ignoring an unreadable cached evaluation {cache}: {e}", file=sys.stderr)
    report = evaluate(
        run / "model",
        data,
        "test",
        limit,
        steps,
        seeds,
        ["psnr", "ssim", "fid"],
        FID_FEATURES,
        device=DEVICE,
        grid=grid,
        resolution=resolution,
    )
    kept = {"date": time.strftime("%Y-%m-%d"), "machine": new_result()["machine"], "report": report}
    try:
        cache.parent.mkdir(exist_ok=True)
        write_json(cache, kept)  # atomic: a killed evaluation leaves no half-written report
    except (OSError, RunIOError) as e:  # e.g. a read-only run directory: the report is still returned
        print(f"[{run.name}] could not keep the evaluation in {cache}: {e}", file=sys.stderr)
    return report


def save(result: dict, path: Path) -> None:
    if not result["rows"]:  # --train-only: nothing evaluated, nothing to write
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def add_row(result: dict, row: dict | None) -> None:
    if row is not None:
        result["rows"].append(row)


def print_table(result: dict, label: str = "arm") -> None:
    if not result["rows"]:
        return
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")
    print(
        f"{label:<22}{'steps':>7}{'dec':>5}{'PSNR':>16}{'SSIM':>17}{'fd_indep':>18}{'fd_indep2':>18}{'fd_domain':>18}"
        f"{'dec img/s':>11}"
    )
    for r in result["rows"]:
        for k, m in r["eval"]["results"].items():
            cell = lambda name: f"{m[name]['mean']:.4f}±{m[name]['std']:.4f}" if name in m else "-"  # noqa: E731, B023
            print(
                f"{r['arm']:<22}{r['train_steps']:>7}{k[:4]:>5}{cell('psnr'):>16}{cell('ssim'):>17}"
                f"{cell('fd_indep'):>18}{cell('fd_indep2'):>18}{cell('fd_domain'):>18}{m['decode_images_per_s']:>11.0f}"
            )
    print("\n".join(FD_NOTES.values()))


def parse(doc: str, out: str, add=None):
    """Parse the shared options (plus `add(parser)`'s); returns (args, limit, seeds, out dir, empty result)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if add is not None:
        add(ap)
    ap.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the presets')")
    ap.add_argument("--limit", type=int, default=None, help="test images to evaluate (default: all 10k)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=out)
    ap.add_argument("--runs", default=None, help="trained arms, shared between benchmarks (default: OUT/../runs)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override added to every arm after the arm's own, e.g. --set train.loss.adv_weight=2 "
        "(repeatable; recorded in each row's overrides, and part of the run cache's key)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny models, 3 steps, 16 images")
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="train the arms into the run cache and stop (e.g. one process per arm on a big machine); "
        "a later run without it evaluates them without retraining",
    )
    ap.add_argument(
        "--reevaluate",
        action="store_true",
        help="measure every evaluation anew instead of reusing the report kept in the run's evals/ "
        "(kept reports are only reused for the same model files, settings and epsvae source)",
    )
    args = ap.parse_args()
    args.runs = Path(args.runs) if args.runs else Path(args.out).parent / "runs"
    limit, seeds = (16, [0]) if args.quick else (args.limit, [int(s) for s in args.seeds.split(",")])
    return args, limit, seeds, Path(args.out), new_result()


def arm_row(
    name: str,
    preset: str,
    overrides: list[str],
    args,
    limit,
    seeds,
    decode_steps=(1, 3),
    grid: str | None = None,
    resolution: int | None = None,
    **extra,
) -> dict | None:
    """Train (or find) one arm, evaluate it, and return its result row (None under --train-only)."""
    overrides = overrides + args.set
    run, cfg, seconds, step = train_arm(args.runs, preset, overrides, args.steps, args.quick)
    if args.train_only:
        print(f"[{name}] trained: {run} (step {step}, {seconds:.0f} s)")
        return None
    report = eval_arm(run, cfg.train.data, limit, list(decode_steps), seeds, grid, resolution, not args.reevaluate)
    c, h, w = cfg.model.image_shape
    lc, lh, lw = cfg.model.latent_shape
    return {
        "arm": name,
        "preset": preset,
        "overrides": overrides,
        **extra,
        "run": str(run),
        "grid": report["grid"],
        "compression": c * h * w / (lc * lh * lw),
        "train_steps": step,
        "train_seconds": seconds,  # the engine's wall time for the run (whichever benchmark trained it)
        "eval": report,
    }
