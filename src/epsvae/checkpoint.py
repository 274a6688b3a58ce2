"""A run's checkpoint: written whole or not at all, read back with readable errors, and compared
with the run's config.json before anything resumes from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .rundir import atomic_write

CHECKPOINT = "checkpoint.pt"


def atomic_save(obj, path: Path) -> None:
    """torch.save, whole or not at all (fsynced temporary file renamed over `path`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(run_dir: str | Path, mmap: bool = False) -> dict:
    """A run's checkpoint (CPU tensors; `mmap`: tensors read lazily, for looking at step and config)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated or foreign files raise assorted pickle/zip errors
        raise ValueError(f"{path} is not a readable epsvae training checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path} is not an epsvae training checkpoint (no step counter)")
    return state


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
    return (Path(run_dir) / CHECKPOINT).is_file()


def saved_config(run_dir: str | Path, what: str) -> Any:
    """A resumable run's config.json; if it was deleted, the checkpoint's own copy (with a note),
    so a run is never resumed under a recipe it was not trained with."""
    path = Path(run_dir) / "config.json"
    if path.is_file():
        return read_json(path, what)
    state = load_checkpoint(run_dir)
    if "config" not in state:
        from .config import ConfigError

        raise ConfigError(f"{path} is missing and {run_dir}/{CHECKPOINT} is too old to carry its config")
    print(f"[train] {path} is missing: using the config stored in the checkpoint")
    return json.loads(state["config"])


def check_same_run(run_dir: Path, state: dict, config: dict[str, Any], steps: int) -> None:
    """The checkpoint's own config must be config.json's (only the length may differ), and a
    resumed run cannot be asked to stop before the step it has reached."""
    from .config import ConfigError

    step = int(state.get("step", 0))
    if steps < step:
        raise ConfigError(
            f"{run_dir} is at step {step}; --steps {steps} is below it (a run cannot go back: "
            f"give --steps {step} or more, or another --out)"
        )
    if "config" not in state:  # written before checkpoints carried their config
        return
    saved = flatten(json.loads(state["config"]))
    now = flatten(config)
    # keys the checkpoint does not know are fields added to the config since (at their defaults)
    diff = [k for k in sorted(saved) if k != "train.steps" and k in now and saved[k] != now[k]]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ConfigError(
            f"{run_dir}/config.json is not the config its checkpoint was trained with ({shown}{more}); "
            "restore it, or start a new run with another --out"
        )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out
