"""The training engine: one loop for ε-VAE and the VAE baseline, one CPU to many GPUs.

Hugging Face Accelerate over PyTorch DDP. A run directory holds `config.json` (the
resolved RunConfig), `checkpoint.pt` (full training state, written atomically),
`stats.jsonl`, TensorBoard logs, sample grids and, at the end, `model/` (EMA weights
as safetensors + config). Starting `train` on an existing run directory resumes it:
every step reseeds from (seed, rank, step) and reads the batch addressed by its step,
so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import resource
import time
from pathlib import Path

import torch

from . import losses
from .config import ConfigError, RunConfig, apply_overrides, from_dict, parse_value, to_dict
from .data import BatchStream, StepBatches, open_dataset
from .images import save_grid
from .models import Autoencoder, build_discriminator, build_model, check_state_dict
from .perceptual import build_perceptual

CHECKPOINT = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the last good checkpoint is left as it was."""

    epsvae_user_error = True


# --------------------------------------------------------------------------- run directory


def prepare_run(
    run_dir: str | Path,
    preset: str | None = None,
    overrides: list[str] | None = None,
    data: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
) -> RunConfig:
    """The run's config: loaded from `run_dir` when it exists (resume), else built from `preset`.

    A resumed run may change only its length (`steps`); anything else would make the
    continuation differ from the run that was started.
    """
    from .presets import run_config

    path = Path(run_dir) / "config.json"
    requested = {k: v for k, v in {"train.data": data, "train.batch_size": batch_size}.items() if v is not None}
    for item in overrides or []:
        key, _, value = item.partition("=")
        requested[key.strip()] = parse_value(value.strip())
    if path.is_file():
        cfg = from_dict(RunConfig, json.loads(path.read_text()))
        if preset is not None and cfg.preset not in (None, preset):
            raise ConfigError(f"{run_dir} is a run of preset {cfg.preset!r}, not {preset!r}; use another --out")
        if requested:
            changed = apply_overrides(cfg, requested)
            if changed != cfg:
                raise ConfigError(
                    f"{run_dir} already holds a run with another config; only --steps may change on resume "
                    f"(asked: {', '.join(requested)}). Use a new --out for a new run."
                )
    else:
        if preset is None:
            raise ConfigError(f"{run_dir} holds no run to resume: give --preset to start one")
        cfg = apply_overrides(run_config(preset), requested) if requested else run_config(preset)
    if steps is not None:
        cfg.train.steps = steps
    if cfg.train.data is None:
        raise ConfigError("no dataset: pass --data (fashion-mnist, folder:PATH or skimage-photos)")
    return cfg


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise assorted pickle/zip errors
        raise ValueError(f"{path} is not a readable epsvae training checkpoint ({type(exc).__name__}: {exc})") from None


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write the EMA weights of a run's latest checkpoint as a model directory."""
    cfg = from_dict(RunConfig, json.loads((Path(run_dir) / "config.json").read_text()))
    state = load_checkpoint(run_dir)
    model = build_model(cfg.model)
    check_state_dict(model, state["ema"], source=f"{Path(run_dir) / CHECKPOINT} [ema]")
    model.load_state_dict(state["ema"])
    return model.save_pretrained(out)


# --------------------------------------------------------------------------- helpers


def _step_seed(seed: int, rank: int, step: int) -> int:
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def _param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Meter:
    """Sums of loss terms over a logging interval."""

    def __init__(self, bins: int = 5):
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.by_t = [[0.0, 0.0] for _ in range(self.bins)]

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1


# --------------------------------------------------------------------------- the loop


def train(
    run_dir: str | Path,
    cfg: RunConfig,
    minutes: float | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the run in `run_dir` up to `cfg.train.steps`, or for `minutes`. Returns a summary."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    tc, lc, kind = cfg.train, cfg.train.loss, cfg.model.kind
    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    # cpu=True lets Accelerate set up gloo under torchrun on machines without a GPU
    accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    run_dir = Path(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")

    # ---- data
    resolution = tc.resolution or cfg.model.image_size
    dataset = open_dataset(tc.data, "train", resolution, cfg.model.image_channels, strict=tc.strict_data)
    batches = StepBatches(len(dataset), tc.batch_size, world, rank, tc.seed)

    # ---- networks
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model: Autoencoder = build_model(cfg.model)
    disc = build_discriminator(cfg.model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if main:  # features:auto trains its network once; the other ranks wait for the cache
        perceptual = build_perceptual(lc.perceptual, tc.data) if lc.perceptual_weight else None
    accelerator.wait_for_everyone()
    if not main:
        perceptual = build_perceptual(lc.perceptual, tc.data) if lc.perceptual_weight else None
    if perceptual is not None:
        perceptual = perceptual.to(device)
    ema.to(device)
    adam = dict(betas=(tc.beta1, tc.beta2), eps=1e-8)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, **adam)
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc.disc_lr, **adam)
    step, seconds_before = 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.is_file():
        state = load_checkpoint(run_dir)
        for net, key in ((model, "model"), (disc, "disc"), (ema, "ema")):
            check_state_dict(net, state[key], source=f"{ckpt_path} [{key}]")
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        opt_d.load_state_dict(state["opt_d"])
        step = int(state["step"])
        seconds_before = float(state.get("seconds", 0.0))
        if main:
            print(f"[train] resuming {run_dir} at step {step}")
    model, disc, opt, opt_d = accelerator.prepare(model, disc, opt, opt_d)
    raw_model: Autoencoder = accelerator.unwrap_model(model)
    raw_disc = accelerator.unwrap_model(disc)

    # ---- feedback
    writer = None
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            print("[train] tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    fixed = torch.stack([dataset[(i, i)][0] for i in range(min(8, len(dataset)))]).to(device)
    stream = BatchStream(dataset, batches, step, tc.num_workers)
    meter, skipped = _Meter(), 0
    start_step, t0, last_log, last_step = step, time.time(), time.time(), step
    bar = None
    if main and progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, unit="step", dynamic_ncols=True)

    def total_seconds() -> float:  # training wall time over all sessions (a finished run adds nothing)
        return seconds_before + (time.time() - t0 if step > start_step else 0.0)

    def save_checkpoint() -> None:
        if main:
            _atomic_save(
                {
                    "model": raw_model.state_dict(),
                    "disc": raw_disc.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "step": step,
                    "seconds": total_seconds(),
                    "rng": torch.get_rng_state(),
                    "config": json.dumps(to_dict(cfg)),
                },
                ckpt_path,
            )
        accelerator.wait_for_everyone()

    def sample_grid() -> None:
        if not main:
            return
        with torch.no_grad():
            z = ema.encode(fixed)
            if kind == "epsilon":
                g = torch.Generator(device=device)
                rows = [fixed] + [ema.decode(z, steps=s, generator=g.manual_seed(0)) for s in (1, 3)]
            else:
                rows = [fixed, ema.decode(z)]
        save_grid(rows, run_dir / "samples" / f"step{step:07d}.png", scale=2 if fixed.shape[-1] <= 64 else 1)

    if step == 0 and main:
        sample_grid()
    while step < tc.steps:
        if minutes is not None and time.time() - t0 > 60 * minutes:
            break
        seed = _step_seed(tc.seed, rank, step)
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        x, _, n_skipped = next(stream)
        skipped += n_skipped
        x = x.to(device, non_blocking=True)
        lr_scale = min(1.0, (step + 1) / max(1, tc.warmup))
        for optimizer, base_lr in ((opt, tc.lr), (opt_d, tc.disc_lr)):
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_scale
        adv_on = bool(lc.adv_weight) and step >= lc.disc_start

        # ---- autoencoder step (discriminator frozen), then discriminator step (outputs detached)
        with accelerator.autocast():
            loss, terms, out = losses.autoencoder_loss(model, x, lc, perceptual, raw_disc, adv_on, gen)
        _optimize(accelerator, loss, terms, model, opt, tc.grad_clip, step, ckpt_path)
        decay = min(tc.ema, (1 + step) / (10 + step)) if tc.ema_warmup else tc.ema
        _ema_update(ema, raw_model, decay)
        logged = {k: v.item() for k, v in terms.items()}
        if adv_on:
            r1_step = lc.r1_weight > 0 and step % lc.r1_every == 0
            d_loss, d_terms = losses.discriminator_loss(disc, x, out, lc, r1_step, accelerator.autocast)
            _optimize(accelerator, d_loss, d_terms, disc, opt_d, tc.grad_clip, step, ckpt_path)
            logged.update({k: v.item() for k, v in d_terms.items()})
        logged["loss"] = loss.item()
        meter.add(logged)
        if kind == "epsilon":
            per = losses.velocity_mse_per_sample(out.v_pred, out.v_target)
            for b, (s, c) in enumerate(losses.loss_by_t(per, out.t, meter.bins)):
                meter.by_t[b][0] += s
                meter.by_t[b][1] += c
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logged['loss']:.4f}", refresh=False)

        if step % tc.log_every == 0 or step == tc.steps:
            now = time.time()
            ips = (step - last_step) * tc.batch_size * world / max(now - last_log, 1e-9)
            row = {
                "step": step,
                "lr": tc.lr * lr_scale,
                "images_per_s": round(ips, 2),
                "peak_memory_mb": round(_peak_memory_mb(device), 1),
                "skipped_images": skipped,
            }
            row.update({k: v / meter.count for k, v in meter.sums.items()})
            if kind == "epsilon":
                row["velocity_by_t"] = [round(s / c, 5) if c else None for s, c in meter.by_t]
            if main:
                with open(run_dir / "stats.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k != "step":
                            writer.add_scalar(k, v, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}", refresh=True)
            meter.reset()
            last_log, last_step = now, step
        if step % tc.ckpt_every == 0:
            save_checkpoint()
        if step % tc.sample_every == 0 and main:
            sample_grid()

    if bar is not None:
        bar.close()
    save_checkpoint()
    if step % tc.sample_every and main:
        sample_grid()
    digests = gather_object([_param_digest(raw_model)])
    summary = {
        "step": step,
        "steps_this_session": step - start_step,
        "seconds": round(time.time() - t0, 1),
        "total_seconds": round(total_seconds(), 1),
        "world_size": world,
        "effective_batch_size": tc.batch_size * world,
        "rank_param_digests": digests,
        "skipped_images": skipped,
        "device": str(device),
        "mixed_precision": mp,
    }
    if main:
        ema_model = build_model(cfg.model)
        ema_model.load_state_dict({k: v.cpu() for k, v in ema.state_dict().items()})
        ema_model.save_pretrained(run_dir / "model")
        (run_dir / "final.json").write_text(json.dumps(summary, indent=2) + "\n")
        if writer is not None:
            writer.close()
        if skipped:
            print(f"[train] skipped {skipped} unreadable image(s)")
        print(f"[train] step {step}: EMA weights exported to {run_dir / 'model'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _optimize(accelerator, loss, terms, module, opt, grad_clip: float, step: int, ckpt_path: Path) -> None:
    """One optimiser step on `loss`, after checking (on every rank) that it is finite."""
    _check_finite(accelerator, loss, terms, step, ckpt_path)
    opt.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if grad_clip:
        accelerator.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()


def _check_finite(accelerator, loss: torch.Tensor, terms: dict, step: int, ckpt_path: Path) -> None:
    bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() > 0:
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        kept = f"the last good checkpoint {ckpt_path} is intact" if ckpt_path.is_file() else "no checkpoint was written"
        raise TrainingDiverged(
            f"non-finite loss at step {step} ({values}); training stopped, {kept}. "
            "Lower the learning rate, raise warm-up or grad clipping, or check the data."
        )
