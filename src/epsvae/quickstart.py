"""The embedded default run: train eps-fmnist on the CPU, then show and measure what it learnt.

`epsvae quickstart` trains (or resumes) a run for a time budget, then reconstructs
held-out Fashion-MNIST test images with the step-0 weights (1 decoding step) and with
the trained EMA weights (1 and 3 steps), and writes a PNG grid and a metrics table:
PSNR and fd_indep, the Fréchet distance in the independent network's feature space
(a network no training loss uses, so the model cannot have been optimised for it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .data import load_batch, open_dataset
from .engine import native_bf16_cpu
from .evaluate import feature_extractors
from .images import save_grid
from .metrics import FeatureStats, fid_from_stats, psnr
from .models import build_model, load_pretrained
from .train import prepare_run, train


@torch.no_grad()
def _measure(model, x: torch.Tensor, steps: int, embed, real: FeatureStats, seed: int = 0) -> tuple[torch.Tensor, dict]:
    x_hat = torch.cat(
        [
            model.decode(model.encode(chunk), steps=steps, generator=torch.Generator().manual_seed(seed + i))
            for i, chunk in enumerate(x.split(250))
        ]
    ).clamp(-1, 1)
    fake = FeatureStats.of_images(embed, x_hat)
    return x_hat, {"psnr_db": psnr(x_hat, x).mean().item(), "fd_indep": fid_from_stats(real, fake)}


def quickstart_precision(precision: str = "auto") -> str:
    """train.mixed_precision for the quickstart. 'auto': the engine's default (bf16 on a GPU), except
    on a CPU with native bf16, where bf16 autocast makes a training step 1.6x cheaper at the same
    quality (docs/cpu_step.md)."""
    if precision != "auto" or torch.cuda.is_available():
        return precision
    return "bf16" if native_bf16_cpu() else "no"


def budget_hint(summary: dict, tc, out: Path, preset: str = "eps-fmnist") -> list[str]:
    """When the time budget stopped the run early: how far it got, at what pace, and how to go on
    (a slow CPU may stop a 10-minute quickstart inside the learning-rate warm-up)."""
    step, done = summary["step"], summary.get("steps_this_session", 0)
    if step >= tc.steps or not done:
        return []
    pace = summary["seconds"] / done
    where = []
    if step < tc.warmup:
        where.append(f"still in the learning rate's {tc.warmup}-step warm-up")
    if step < tc.loss.disc_start and tc.loss.adv_weight > 0:
        where.append(f"before the adversarial term starts at step {tc.loss.disc_start}")
    return [
        "",
        f"The time budget stopped training at step {step} of the preset's {tc.steps} ({pace:.2f} s per step "
        f"on this machine{'; ' + ', '.join(where) if where else ''}). The same command resumes the run "
        f"({out}) for another budget"
        + ("; the README's quickstart table shows what 769-1027 steps reach." if preset == "eps-fmnist" else "."),
    ]


def quickstart(
    out: str | Path = "runs/quickstart",
    minutes: float | None = 10.0,
    steps: int | None = None,
    preset: str = "eps-fmnist",
    n_eval: int = 500,
    precision: str = "auto",
    overrides: list[str] | None = None,
) -> dict:
    """Train `preset` for `minutes` (or `steps`) in `out`, or resume it there, then report PSNR and
    fd_indep of the step-0 and trained weights on `n_eval` test images. `overrides` ("key=value",
    as `epsvae train --set`) apply to a new run; a resumed run keeps its config and precision."""
    out = Path(out)
    resumed = (out / "config.json").is_file()  # a resumed run keeps the precision it started with
    overrides = [] if resumed else [*(overrides or []), f"train.mixed_precision={quickstart_precision(precision)}"]
    cfg = prepare_run(out, preset, overrides, steps=steps)
    if resumed and precision != "auto" and precision != cfg.train.mixed_precision:
        print(f"[quickstart] {out} resumes in the precision it started with ({cfg.train.mixed_precision}); "
              f"--precision {precision} applies to a new --out")  # fmt: skip
    t0 = time.time()
    summary = train(out, cfg, minutes=minutes if steps is None else None)
    train_s = time.time() - t0
    trained = load_pretrained(out / "model")
    torch.manual_seed(cfg.train.seed)  # the engine's initial weights: same seed, same construction
    initial = build_model(cfg.model).eval()
    test = open_dataset(cfg.train.data, "test", cfg.model.image_size, cfg.model.image_channels)
    x, _ = load_batch(test, list(range(min(n_eval, len(test)))))
    embed = feature_extractors("indep", cfg.train.data, cfg.model.image_size, cfg.model.image_channels)["fd_indep"]
    real = FeatureStats.of_images(embed, x)
    multi = cfg.model.kind == "epsilon"
    arms = [("step 0", initial, 1), ("trained", trained, 1)] + ([("trained", trained, 3)] if multi else [])
    rows, grid = [], [x[:12]]
    for label, model, n_steps in arms:
        x_hat, metrics = _measure(model, x, n_steps, embed, real)
        grid.append(x_hat[:12])
        rows.append({"weights": label, "decode_steps": n_steps, **metrics})
    save_grid(grid, out / "reconstructions.png", scale=3)
    result = {
        "preset": preset,
        "trained_steps": summary["step"],
        "train_seconds_this_call": round(train_s, 1),
        "images_seen": summary["step"] * summary["effective_batch_size"],
        "eval_images": len(x),
        "eval_split": "test",
        "fd_indep": "Fréchet distance in the independent network's features (no training loss uses it; not FID)",
        "fd_indep_network": getattr(embed, "network", None),
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
        "device": summary["device"],
        "mixed_precision": cfg.train.mixed_precision,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# {preset}: {summary['step']} steps ({result['images_seen']} images, "
        f"mixed precision {cfg.train.mixed_precision}), {len(x)} test images",
        "",
        "| weights | decode steps | PSNR (dB) | fd_indep |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['weights']} | {r['decode_steps']} | {r['psnr_db']:.2f} | {r['fd_indep']:.4f} |")
    lines += [
        "",
        "fd_indep: Fréchet distance in the independent network's feature space (no training loss uses it; not FID);"
        f" network {result['fd_indep_network']} (distances from other networks do not compare).",
        f"Grid: {out / 'reconstructions.png'} (rows: originals, then the rows above in order).",
    ]
    lines += budget_hint(summary, cfg.train, out, preset)
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result
