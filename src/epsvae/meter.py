"""A training run's logs: loss terms averaged per interval, stats.jsonl, TensorBoard and a progress bar.

Terms are added as device tensors and summed on the device; nothing is copied to the host
until a stats row is written (every `log_every` steps), so logging never makes a GPU step
wait. A row holds the averages over every rank, i.e. over the global batch. Validation
rows (`write_row`) go to the same stats.jsonl and TensorBoard.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

from .rundir import append_text


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Meter:
    """Per-interval averages of logged terms (each term over the times it was added)."""

    def __init__(self, run_dir: Path, device: torch.device, main: bool):
        self.run_dir, self.device, self.main = run_dir, device, main
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.by_t: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (sums, counts) per t-bin
        self.bar = self.writer = None

    def open(self, initial_step: int, total: int | None, desc: str | None, progress: bool) -> None:
        if not self.main:
            return
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial_step, unit="step", dynamic_ncols=True, desc=desc)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run's TensorBoard drops events logged after its checkpoint
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=initial_step or None)
        except ImportError:
            print("[train] tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def add_by_t(self, name: str, per: torch.Tensor, t: torch.Tensor, bins: int = 5) -> None:
        """Accumulate a per-sample loss (N,) in `bins` equal bins of t in [0, 1); logged as `name`."""
        idx = (t.detach().float() * bins).long().clamp(0, bins - 1)
        sums, counts = self.by_t.get(name) or (torch.zeros(bins, device=t.device), torch.zeros(bins, device=t.device))
        sums = sums.index_add(0, idx, per.detach().float())
        counts = counts.index_add(0, idx, torch.ones_like(per, dtype=torch.float))
        self.by_t[name] = (sums, counts)

    def averages(self) -> dict[str, float]:
        """This interval's averages over every rank (one host copy for all terms). Collective:
        under DDP every rank must call it (they do: at the same log steps)."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = _all_mean(torch.stack([self.sums[k].to(self.device) for k in keys])).cpu().tolist()
        return {k: v / self.counts[k] for k, v in zip(keys, values, strict=True)}

    def flush(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write this interval's stats row (main rank) and start a new interval; returns the row."""
        row: dict[str, Any] = {"step": step, **extra, **self.averages()}
        for name, (sums, counts) in self.by_t.items():
            sums, counts = _all_mean(sums).tolist(), _all_mean(counts).tolist()
            row[name] = [round(s / c, 5) if c else None for s, c in zip(sums, counts, strict=True)]
        self.write_row(row)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row.get('loss', 0.0):.4f}", img_s=f"{row.get('images_per_s', 0):.0f}")
        self.sums, self.counts, self.by_t = {}, {}, {}
        return row

    def write_row(self, row: dict[str, Any], images: dict[str, torch.Tensor] | None = None) -> None:
        """One stats row (it must hold 'step') to stats.jsonl and TensorBoard, main rank only."""
        if not self.main:
            return
        append_text(self.run_dir / "stats.jsonl", json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, row["step"])
            for k, v in (images or {}).items():  # (N, C, H, W) in [-1, 1]
                self.writer.add_images(k, (v.float().cpu().clamp(-1, 1) + 1) / 2, row["step"])

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over DDP ranks (itself without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t


def budget_desc(minutes: float | None, t0: float) -> str | None:
    """The progress bar's label under a time budget: when it ends."""
    if minutes is None:
        return None
    return f"{minutes:g} min budget (stops by {time.strftime('%H:%M', time.localtime(t0 + 60 * minutes))})"
