"""What every training loop here shares: Accelerate, the run directory, checkpoints, EMA, logs.

The autoencoder loop (`epsvae.train`) and the latent generator loop (`epsvae.generation`)
each build their networks and define one step; `Engine` does the rest the same way for
both: per-step seeds from (seed, rank, step) so a resumed run continues exactly, atomic
checkpoints, warm-up learning rate, EMA with warm-up, finite-loss checks on every rank,
stats.jsonl + TensorBoard + a progress bar, and a final.json summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
SKIPPED = "skipped_images.txt"


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the last good checkpoint is left as it was."""

    epsvae_user_error = True


def atomic_save(obj, path: Path) -> None:
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


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or a ConfigError naming it (a truncated or hand-edited file is not a traceback)."""
    from .config import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); is this {what}?") from None


def resumable(run_dir: str | Path) -> bool:
    """A run directory holds a run to resume once it has a checkpoint; a config.json alone
    (a start that failed before its first checkpoint) does not bind the next start."""
    return (Path(run_dir) / "config.json").is_file() and (Path(run_dir) / CHECKPOINT).is_file()


def step_seed(seed: int, rank: int, step: int) -> int:
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Engine:
    """One run directory's training machinery. `tc` is any config with the TrainConfig basics
    (seed, steps, batch_size, mixed_precision, grad_clip, ema, ema_warmup, warmup, log_every,
    ckpt_every, sample_every)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], tc, progress: bool = True):
        from accelerate import Accelerator

        self.tc = tc
        mp = tc.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() else "no"
        self.mixed_precision = mp
        # cpu=True lets Accelerate set up gloo under torchrun on machines without a GPU
        self.accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        acc = self.accelerator
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        self.main = acc.is_main_process
        self.run_dir = Path(run_dir)
        self.ckpt_path = self.run_dir / CHECKPOINT
        self.config = config
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", config)
        self.step, self.seconds_before = 0, 0.0
        self.progress = progress
        self.sums: dict[str, float] = {}
        self.count = 0
        self.extra: dict[str, Any] = {"skipped_images": 0}  # added to every stats row (running totals)
        self.by_t: dict[str, list[list[float]]] = {}  # name -> [sum, count] per t-bin, this interval

    # ------------------------------------------------------------------ state

    def restore(self, parts: dict[str, Any]) -> bool:
        """Load modules and optimisers from the run's checkpoint, if there is one (returns whether)."""
        from .models import check_state_dict

        if not self.ckpt_path.is_file():
            return False
        state = load_checkpoint(self.run_dir)
        for key, obj in parts.items():
            if key not in state:
                raise ValueError(f"{self.ckpt_path} has no {key!r}: it was written by another kind of run")
            if isinstance(obj, torch.nn.Module):
                check_state_dict(obj, state[key], source=f"{self.ckpt_path} [{key}]")
        for key, obj in parts.items():
            obj.load_state_dict(state[key])
        self.step = int(state["step"])
        self.seconds_before = float(state.get("seconds", 0.0))
        if self.main:
            print(f"[train] resuming {self.run_dir} at step {self.step}")
        return True

    def start(self, minutes: float | None = None) -> None:
        """Call right before the loop: starts the clock, the meter and the progress bar.

        Under a time budget the bar counts steps without a total (its ETA would be the
        preset's full length, not the budget's) and says when the budget ends."""
        self.start_step, self.t0 = self.step, time.time()
        self.last_log, self.last_step = self.t0, self.step
        self.bar = None
        if self.main and self.progress:
            from tqdm import tqdm

            total = None if minutes is not None else self.tc.steps
            desc = (
                f"{minutes:g} min budget (stops by {time.strftime('%H:%M', time.localtime(self.t0 + 60 * minutes))})"
                if minutes is not None
                else None
            )
            self.bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True, desc=desc)
        self.writer = None
        if self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                print("[train] tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")

    def stop_clock(self) -> None:
        """Call right after the loop: what follows (export, grids) is not training time."""
        self.t_end = time.time()

    def total_seconds(self) -> float:
        """Training wall time over all sessions (a finished run resumed adds nothing)."""
        if self.step == self.start_step:
            return self.seconds_before
        return self.seconds_before + (getattr(self, "t_end", None) or time.time()) - self.t0

    def save(self, parts: dict[str, Any]) -> None:
        if self.main:
            state = {k: v.state_dict() for k, v in parts.items()}
            state.update(
                step=self.step,
                seconds=self.total_seconds(),
                rng=torch.get_rng_state(),
                config=json.dumps(self.config),
            )
            atomic_save(state, self.ckpt_path)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ one step

    def seed_step(self) -> torch.Generator:
        """Reseed torch and return a generator for this (seed, rank, step)."""
        seed = step_seed(self.tc.seed, self.rank, self.step)
        torch.manual_seed(seed)
        return torch.Generator(device=self.device).manual_seed(seed)

    def warmup_lr(self, pairs: list[tuple[torch.optim.Optimizer, float]]) -> float:
        scale = min(1.0, (self.step + 1) / max(1, self.tc.warmup))
        for optimizer, base_lr in pairs:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * scale
        return scale

    def optimize(self, loss: torch.Tensor, terms: dict, module, opt) -> None:
        """One optimiser step on `loss`, after checking (on every rank) that it is finite."""
        self.check_finite(loss, terms)
        opt.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.tc.grad_clip:
            self.accelerator.clip_grad_norm_(module.parameters(), self.tc.grad_clip)
        opt.step()

    def check_finite(self, loss: torch.Tensor, terms: dict) -> None:
        bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
        if self.world > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            kept = (
                f"the last good checkpoint {self.ckpt_path} is intact"
                if self.ckpt_path.is_file()
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"non-finite loss at step {self.step} ({values}); training stopped, {kept}. "
                "Lower the learning rate, raise warm-up or grad clipping, or check the data."
            )

    @torch.no_grad()
    def ema_update(self, ema: torch.nn.Module, model: torch.nn.Module) -> None:
        decay = min(self.tc.ema, (1 + self.step) / (10 + self.step)) if self.tc.ema_warmup else self.tc.ema
        torch._foreach_lerp_([p for p in ema.parameters()], [p.detach() for p in model.parameters()], 1.0 - decay)

    def note_skipped(self, names: list[str]) -> None:
        """Count unreadable images and name them in RUN/skipped_images.txt (one line each, any rank)."""
        if not names:
            return
        self.extra["skipped_images"] += len(names)
        with open(self.run_dir / SKIPPED, "a") as f:  # short O_APPEND writes: ranks do not interleave lines
            f.write("".join(f"{self.step}\t{name}\n" for name in names))

    def write_row(self, row: dict[str, float], images: dict[str, torch.Tensor] | None = None) -> None:
        """An extra stats row at the current step (validation), to stats.jsonl and TensorBoard (main rank)."""
        if not self.main:
            return
        with open(self.run_dir / "stats.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **row}) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                self.writer.add_scalar(k, v, self.step)
            for k, v in (images or {}).items():  # (N, C, H, W) in [-1, 1]
                self.writer.add_images(k, (v.float().cpu().clamp(-1, 1) + 1) / 2, self.step)

    def record(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def record_by_t(self, name: str, per: torch.Tensor, t: torch.Tensor, bins: int = 5) -> None:
        """Accumulate a per-sample loss (N,) in `bins` equal bins of t; logged as `name`."""
        from .losses import loss_by_t

        acc = self.by_t.setdefault(name, [[0.0, 0.0] for _ in range(bins)])
        for b, (total, count) in enumerate(loss_by_t(per.detach(), t, bins)):
            acc[b][0] += total
            acc[b][1] += count

    def end_step(self, lr: float) -> tuple[bool, bool]:
        """Advance the step, write a stats row when due; returns (checkpoint due, samples due)."""
        tc = self.tc
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
            if "loss" in self.sums:
                self.bar.set_postfix(loss=f"{self.sums['loss'] / max(self.count, 1):.4f}", refresh=False)
        if self.step % tc.log_every == 0 or self.step == tc.steps:
            now = time.time()
            ips = (self.step - self.last_step) * tc.batch_size * self.world / max(now - self.last_log, 1e-9)
            row = {
                "step": self.step,
                "lr": lr,
                "images_per_s": round(ips, 2),
                "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            }
            row.update(self.extra)
            row.update({k: v / max(self.count, 1) for k, v in self.sums.items()})
            for name, acc in self.by_t.items():
                row[name] = [round(total / count, 5) if count else None for total, count in acc]
            if self.main:
                with open(self.run_dir / "stats.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if self.writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k != "step":
                            self.writer.add_scalar(k, v, self.step)
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{row.get('loss', 0.0):.4f}", img_s=f"{ips:.0f}", refresh=True)
            self.sums, self.count, self.by_t = {}, 0, {}
            self.last_log, self.last_step = now, self.step
        return self.step % tc.ckpt_every == 0, self.step % tc.sample_every == 0

    def out_of_time(self, minutes: float | None) -> bool:
        """Past the time budget? Every rank gets the same answer (else one would stop while
        another waits for it in the next step's all-reduce)."""
        if minutes is None:
            return False
        late = torch.tensor([float(time.time() - self.t0 > 60 * minutes)], device=self.device)
        if self.world > 1:
            late = self.accelerator.reduce(late, reduction="sum")
        return bool(late.item() > 0)

    # ------------------------------------------------------------------ the end

    def export_due(self, summary: dict) -> bool:
        """Export model/ after a session that trained, or if it is missing: a finished run started
        again leaves model/ (and the latent statistics encode-dataset may have put there) alone."""
        from .models import WEIGHTS_NAME

        missing = not (self.run_dir / "model" / WEIGHTS_NAME).is_file()
        return self.main and bool(summary["steps_this_session"] or missing)

    def finish(self, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> dict:
        """Close the logs and write final.json (rank digests prove the ranks stayed in sync)."""
        from accelerate.utils import gather_object

        if self.bar is not None:
            self.bar.close()
        summary = {
            "step": self.step,
            "steps_this_session": self.step - self.start_step,
            "seconds": round((getattr(self, "t_end", None) or time.time()) - self.t0, 1),
            "total_seconds": round(self.total_seconds(), 1),
            "world_size": self.world,
            "effective_batch_size": self.tc.batch_size * self.world,
            "rank_param_digests": gather_object([param_digest(model)]),
            "device": str(self.device),
            "mixed_precision": self.mixed_precision,
            "skipped_images": self.extra["skipped_images"],  # this rank's, this session's
            **(extra or {}),
        }
        if self.extra["skipped_images"]:
            print(f"[train] skipped {self.extra['skipped_images']} unreadable image(s): see {self.run_dir / SKIPPED}")
        if self.main:
            write_json_atomic(self.run_dir / "final.json", summary)
            if self.writer is not None:
                self.writer.close()
        return summary

    def close(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
