"""What every training loop here shares: Accelerate, the run directory, checkpoints, EMA, logs.

The autoencoder loop (`epsvae.train`) and the latent generator loop (`epsvae.generation`)
each build their networks and define one step; `Engine` does the rest the same way for
both: the global batch split over processes and micro-batches (gradient accumulation),
per-step randomness that does not depend on that split, so a resumed run continues
exactly (with any number of processes), atomic checkpoints, warm-up learning rate, EMA
with warm-up, finite-loss checks on every rank without a host sync per step, stats.jsonl
+ TensorBoard + a progress bar (`epsvae.meter`), and a final.json summary.

Batch semantics (as in the paper): `batch_size` is the global batch of one optimiser
step. Each of the W processes takes a contiguous 1/W of it, in micro-batches of
`micro_batch_size` (default: the whole share), and gradients are accumulated over
them; so 8 GPUs, or 1 GPU with 8 micro-batches, train on the same batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CHECKPOINT, atomic_save, check_same_run, load_checkpoint
from .meter import Meter, budget_desc, peak_memory_mb
from .rundir import (
    RunIOError,
    RunLock,
    append_session,
    append_text,
    check_run_dir,
    clean_leftovers,
    describe,
    machine_change,
    session_record,
    truncate_rows,
    write_json,
)

SKIPPED = "skipped_images.txt"


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the last good checkpoint is left as it was."""

    epsvae_user_error = True


def step_seed(seed: int, rank: int, step: int) -> int:
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def batch_plan(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) for a global batch over `world` processes."""
    from .config import ConfigError

    if batch_size < 1 or batch_size % world:
        raise ConfigError(
            f"train.batch_size {batch_size} (the global batch) must be a positive multiple of the {world} processes"
        )
    share = batch_size // world
    micro = micro_batch_size or share
    if micro < 1 or share % micro:
        raise ConfigError(
            f"each of the {world} processes takes {share} images of the global batch {batch_size}; "
            f"train.micro_batch_size {micro} must divide it"
        )
    return micro, share // micro


def _allow_new_precision(mp: str) -> None:
    """Accelerate keeps one mixed-precision setting per process and refuses another: a second
    run in the same process (a notebook, a sweep) with another precision would fail. In a
    single process, forget the old setting; under a distributed launch keep Accelerate's refusal."""
    from accelerate.state import AcceleratorState, PartialState

    old = AcceleratorState._shared_state.get("_mixed_precision")
    if old is not None and old != mp and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX). Without them
    oneDNN emulates bf16, and a training step is far slower than in fp32 (docs/cpu_step.md)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def emulated_bf16_warning(mp: str, device: torch.device) -> str | None:
    """The message for bf16 autocast on a CPU that only emulates bf16, else None."""
    if mp != "bf16" or device.type != "cpu" or native_bf16_cpu():
        return None
    return (
        "[train] warning: bf16 autocast on a CPU without bf16 instructions (no AVX512-BF16 or AMX): "
        "PyTorch emulates it, and eps-fmnist's training step ran 9x slower than in fp32 on a 2-core "
        "AVX2 CPU (docs/cpu_step.md); train.mixed_precision=no (or auto) trains in fp32"
    )


class Engine:
    """One run directory's training machinery. `tc` is any config with the TrainConfig basics
    (seed, steps, batch_size, micro_batch_size, mixed_precision, grad_clip, ema, ema_warmup,
    warmup, log_every, ckpt_every, sample_every)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], tc, progress: bool = True):
        from accelerate import Accelerator

        self.tc = tc
        mp = tc.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() else "no"
        self.mixed_precision = mp
        _allow_new_precision(mp)
        # cpu=True lets Accelerate set up gloo under torchrun on machines without a GPU
        self.accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        acc = self.accelerator
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        self.main = acc.is_main_process
        self.micro, self.accum = batch_plan(tc.batch_size, getattr(tc, "micro_batch_size", None), self.world)
        self.share = tc.batch_size // self.world  # this process's images per step
        if self.main and (msg := emulated_bf16_warning(mp, self.device)):
            print(msg)
        if self.device.type == "cuda":  # TF32 for the fp32 matmuls and convolutions that autocast leaves
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.run_dir = Path(run_dir)
        self.ckpt_path = self.run_dir / CHECKPOINT
        self.config = config
        self.lock = RunLock(self.run_dir)
        self.signal: int | None = None  # SIGINT/SIGTERM received: checkpoint at the step's end, then exit
        self._old_handlers: dict[int, Any] = {}
        if self.main:  # one run per directory, nothing written through links (epsvae.rundir)
            check_run_dir(self.run_dir)
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunIOError(describe(exc, self.run_dir, "creating")) from None
            self.lock.acquire()
            try:
                clean_leftovers(self.run_dir)
                if self.ckpt_path.is_file():  # refuse a mismatched resume before any network is built
                    check_same_run(self.run_dir, load_checkpoint(self.run_dir, mmap=True), self.config, self.tc.steps)
            except BaseException:
                self.lock.release()
                raise
        self.step, self.seconds_before = 0, 0.0
        self.progress = progress
        self.meter = Meter(self.run_dir, self.device, self.main)
        self.extra: dict[str, Any] = {"skipped_images": 0}  # added to every stats row (running totals)
        self.bad = torch.zeros((), device=self.device)  # non-finite losses since the last check
        self.checked_step = 0

    # ------------------------------------------------------------------ state

    def restore(self, parts: dict[str, Any]) -> bool:
        """Load modules and optimisers from the run's checkpoint, if there is one (returns whether)."""
        from .models import check_state_dict

        if not self.ckpt_path.is_file():
            self._write_config()
            if self.main:  # rows of an attempt killed before its first checkpoint: this start redoes them
                dropped = truncate_rows(self.run_dir / "stats.jsonl", 0)
                if dropped:
                    print(f"[train] dropped {dropped} stats row(s) of an attempt that ended before any checkpoint")
            return False
        state = load_checkpoint(self.run_dir)
        check_same_run(self.run_dir, state, self.config, self.tc.steps)
        for key, obj in parts.items():
            if key not in state:
                raise ValueError(f"{self.ckpt_path} has no {key!r}: it was written by another kind of run")
            if isinstance(obj, torch.nn.Module):
                check_state_dict(obj, state[key], source=f"{self.ckpt_path} [{key}]")
        for key, obj in parts.items():
            obj.load_state_dict(state[key])
        self.step = self.checked_step = int(state["step"])
        self.seconds_before = float(state.get("seconds", 0.0))
        self._write_config()
        if self.main:
            print(f"[train] resuming {self.run_dir} at step {self.step}")
            dropped = truncate_rows(self.run_dir / "stats.jsonl", self.step)
            if dropped:
                print(f"[train] dropped {dropped} stats row(s) written after the checkpoint's step {self.step}")
            before = state.get("world_size", self.world)
            if before != self.world:  # same global batches and randomness; sums in another order
                print(
                    f"[train] the run used {before} process(es) and continues with {self.world}: the same global "
                    "batches and noise, so the same training up to floating-point summation order"
                )
        return True

    def _write_config(self) -> None:
        if self.main:
            write_json(self.run_dir / "config.json", self.config)

    def start(self, minutes: float | None = None) -> None:
        """Call right before the loop: starts the clock, the meter and the progress bar.

        Under a time budget the bar counts steps without a total (its ETA would be the
        preset's full length, not the budget's) and says when the budget ends."""
        self.start_step, self.t0 = self.step, time.time()
        if self.main:
            self._record_session()
        self._catch_signals()
        self.last_log, self.last_step = self.t0, self.step
        total = None if minutes is not None else self.tc.steps
        self.meter.open(self.step, total, budget_desc(minutes, self.t0), self.progress)

    def _record_session(self) -> None:
        """Append this session to RUN/sessions.jsonl; a resume on another kind of machine (CPU
        model or kernel flags, GPU, PyTorch; on a CPU also the thread count) says so: training
        continues, but it is bitwise the uninterrupted run's only on the same kind of machine."""
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        now = session_record(self.step, self.device.type, gpu, self.world, torch.get_num_threads(), torch.__version__)
        before = append_session(self.run_dir, now)
        if self.step > 0 and (change := machine_change(before, now)):
            print(
                f"[train] {self.run_dir} resumes at step {self.step} on another kind of machine ({change}): "
                "it continues, but no longer bitwise as one uninterrupted run would (RUN/sessions.jsonl)"
            )

    def stop_clock(self) -> None:
        """Call right after the loop: what follows (export, grids) is not training time."""
        self.t_end = time.time()

    def total_seconds(self) -> float:
        """Training wall time over all sessions (a finished run resumed adds nothing)."""
        if self.step == self.start_step:
            return self.seconds_before
        return self.seconds_before + (getattr(self, "t_end", None) or time.time()) - self.t0

    def save(self, parts: dict[str, Any]) -> None:
        """Write the checkpoint (main rank), after checking every loss since the last check was finite."""
        self.verify()
        if self.main:
            state = {k: v.state_dict() for k, v in parts.items()}
            state.update(
                step=self.step,
                seconds=self.total_seconds(),
                rng=torch.get_rng_state(),
                config=json.dumps(self.config),
                world_size=self.world,
            )
            atomic_save(state, self.ckpt_path)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ one step

    def seed_step(self) -> torch.Generator:
        """The step's generator, the same on every rank (seeded by (seed, step)): the whole global
        batch's randomness is drawn from it and sliced, so no sample's noise depends on how the
        batch is split. Torch's own generator is reseeded per (seed, rank, step) for the rest
        (dropout, if a config turns it on)."""
        torch.manual_seed(step_seed(self.tc.seed, self.rank, self.step))
        return torch.Generator(device=self.device).manual_seed(step_seed(self.tc.seed, -1, self.step))

    def my_share(self, draws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's slice of per-sample tensors drawn for the whole global batch."""
        lo = self.rank * self.share
        return {k: v[lo : lo + self.share] for k, v in draws.items()}

    def micro_batches(self, *parts):
        """Split this rank's share (tensors, or dicts of tensors) into micro-batches: yields (i, parts_i)."""
        for i in range(self.accum):
            sl = slice(i * self.micro, (i + 1) * self.micro)
            yield i, tuple({k: v[sl] for k, v in p.items()} if isinstance(p, dict) else p[sl] for p in parts)

    def no_sync(self, module, i: int):
        """Skip DDP's gradient all-reduce on every micro-batch but the last (wrap forward and backward)."""
        if i == self.accum - 1 or not hasattr(module, "no_sync"):
            return contextlib.nullcontext()
        return module.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one micro-batch's mean loss (scaled so the step sees the global mean)."""
        self.bad = self.bad + (~torch.isfinite(loss.detach().float())).float()  # checked without a host sync
        self.accelerator.backward(loss / self.accum)

    def step_optimizer(self, module, opt) -> None:
        if self.tc.grad_clip:
            self.accelerator.clip_grad_norm_(module.parameters(), self.tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def verify(self) -> None:
        """Raise if any loss since the last check was not finite (on any rank); the checkpoint is left intact."""
        bad = self.bad.reshape(1)
        if self.world > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            values = ", ".join(f"{k}={v:.4g}" for k, v in self.meter.averages().items())
            kept = (
                f"the last good checkpoint {self.ckpt_path} is intact"
                if self.ckpt_path.is_file()
                else "no checkpoint was written"
            )
            first, last = self.checked_step, self.step - 1  # the steps (0-based) since the last check
            where = f"at step {last}" if last <= first else f"between steps {first} and {last}"
            raise TrainingDiverged(
                f"non-finite loss {where} ({values}); training stopped, {kept}. "
                "Lower the learning rate, raise warm-up or grad clipping, or check the data."
            )
        self.checked_step = self.step

    def warmup_lr(self, pairs: list[tuple[torch.optim.Optimizer, float]]) -> float:
        scale = min(1.0, (self.step + 1) / max(1, self.tc.warmup))
        for optimizer, base_lr in pairs:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * scale
        return scale

    @torch.no_grad()
    def ema_update(self, ema: torch.nn.Module, model: torch.nn.Module) -> None:
        decay = min(self.tc.ema, (1 + self.step) / (10 + self.step)) if self.tc.ema_warmup else self.tc.ema
        torch._foreach_lerp_([p for p in ema.parameters()], [p.detach() for p in model.parameters()], 1.0 - decay)

    def note_skipped(self, names: list[str]) -> None:
        """Count unreadable images and name them in RUN/skipped_images.txt (one line each, any rank)."""
        if not names:
            return
        self.extra["skipped_images"] += len(names)
        # short O_APPEND writes: ranks do not interleave lines
        append_text(self.run_dir / SKIPPED, "".join(f"{self.step}\t{name}\n" for name in names))

    def record(self, terms: dict[str, torch.Tensor]) -> None:
        """Add loss terms (device tensors) to this interval's averages."""
        self.meter.add(terms)

    def record_by_t(self, name: str, per: torch.Tensor, t: torch.Tensor, bins: int = 5) -> None:
        """Accumulate a per-sample loss (N,) in `bins` equal bins of t; logged as `name`."""
        self.meter.add_by_t(name, per, t, bins)

    def write_row(self, row: dict[str, float], images: dict[str, torch.Tensor] | None = None) -> None:
        """An extra stats row at the current step (validation), to stats.jsonl and TensorBoard (main rank)."""
        self.meter.write_row({"step": self.step, **row}, images)

    def end_step(self, lr: float) -> tuple[bool, bool]:
        """Advance the step; write a stats row when due (after checking the losses were finite);
        returns (checkpoint due, samples due)."""
        tc = self.tc
        self.step += 1
        self.meter.tick()
        if self.step % tc.log_every == 0 or self.step == tc.steps:
            self.verify()
            now = time.time()
            ips = (self.step - self.last_step) * tc.batch_size / max(now - self.last_log, 1e-9)
            extra = {"lr": lr, "images_per_s": round(ips, 2), "peak_memory_mb": round(peak_memory_mb(self.device), 1)}
            self.meter.flush(self.step, {**extra, **self.extra})
            self.last_log, self.last_step = now, self.step
        return self.step % tc.ckpt_every == 0, self.step % tc.sample_every == 0

    def should_stop(self, minutes: float | None) -> bool:
        """Past the time budget, or asked to stop by SIGINT/SIGTERM? Every rank gets the same
        answer (else one would stop while another waits for it in the next step's all-reduce):
        with several processes a signal is looked at on log steps, where all ranks meet anyway."""
        late = minutes is not None and time.time() - self.t0 > 60 * minutes
        if self.world == 1:
            return late or self.signal is not None
        if minutes is None and self.step % self.tc.log_every:
            return False
        flags = torch.tensor([float(late), float(self.signal is not None)], device=self.device)
        if self.world > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        if flags[1].item() > 0 and self.signal is None:
            self.signal = signal.SIGTERM  # another rank was stopped
        return bool(flags.sum().item() > 0)

    def _catch_signals(self) -> None:
        """SIGINT/SIGTERM end the current step, write a checkpoint and exit (a second one exits at once)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self.signal is not None:  # asked twice: stop now (the last checkpoint is intact)
                self._restore_signals()
                raise KeyboardInterrupt
            self.signal = signum
            if self.main:
                print(
                    f"\n[train] {signal.Signals(signum).name}: stopping after this step with a checkpoint", flush=True
                )

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    def exit_if_interrupted(self) -> None:
        """After the loop: if a signal stopped it (and the checkpoint is written), close and raise RunInterrupted."""
        if self.signal is None:
            return
        self.meter.close()
        self.release()
        raise RunInterrupted(self.signal, self.step, self.ckpt_path)

    # ------------------------------------------------------------------ the end

    def export_due(self, summary: dict) -> bool:
        """Export model/ when it is missing or its recorded step is not the checkpoint's (also after a
        kill between the last checkpoint and the export); an up-to-date model/ (and the latent
        statistics encode-dataset may have put there) is left alone."""
        from .models import WEIGHTS_NAME

        if not (self.run_dir / "model" / WEIGHTS_NAME).is_file():
            return self.main
        try:
            exported = json.loads((self.run_dir / "model" / "config.json").read_text()).get("_step")
        except (OSError, json.JSONDecodeError, AttributeError):
            exported = None
        if exported is None:  # an export from before exports recorded their step
            return self.main and bool(summary["steps_this_session"])
        return self.main and exported != self.step  # e.g. killed between the last checkpoint and the export

    def finish(self, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> dict:
        """Close the logs and write final.json (rank digests prove the ranks stayed in sync)."""
        from accelerate.utils import gather_object

        self.meter.close()
        summary = {
            "step": self.step,
            "steps_this_session": self.step - self.start_step,
            "seconds": round((getattr(self, "t_end", None) or time.time()) - self.t0, 1),
            "total_seconds": round(self.total_seconds(), 1),
            "world_size": self.world,
            "effective_batch_size": self.tc.batch_size,
            "micro_batch_size": self.micro,
            "accumulation_steps": self.accum,
            "rank_param_digests": gather_object([param_digest(model)]),
            "device": str(self.device),
            "mixed_precision": self.mixed_precision,
            "skipped_images": self.extra["skipped_images"],  # this rank's, this session's
            **(extra or {}),
        }
        if self.extra["skipped_images"]:
            print(f"[train] skipped {self.extra['skipped_images']} unreadable image(s): see {self.run_dir / SKIPPED}")
        if self.main:
            write_json(self.run_dir / "final.json", summary)
        return summary

    def close(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        self.release()

    def release(self) -> None:
        """Give back the run directory (lock, signal handlers); safe to call more than once."""
        self._restore_signals()
        self.lock.release()


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after writing a checkpoint; exit code 128 + signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint written to {checkpoint}; run the same command to resume")
