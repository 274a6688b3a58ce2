"""A run directory's integrity: one run per directory, atomic durable writes, nothing outside it.

What a training run promises about its directory (README, "Guarantees"):
- a lock (`RUN/.lock`: pid, host, start time) so two processes never train into the same
  directory; a lock whose process is gone (same host) is stale and taken over with a note;
- nothing is written through a symbolic link: entries the run writes must be regular files
  or directories inside it, and every file is opened with O_NOFOLLOW;
- every file that must stay whole (checkpoint, config, summaries, exports) is written to a
  unique temporary name beside it, fsynced, then renamed over the old one, so an
  interruption or a full disk leaves the previous version intact; leftovers from killed
  writers are removed at the next start;
- an OS error is one line that says what failed and where (`RunIOError`);
- `RUN/sessions.jsonl`: one line per training session (step, time, host, CPU model and the
  instruction sets that pick its kernels, GPU, PyTorch, processes, threads), so a run resumed
  on another kind of machine (or, on a CPU, with another thread count) says so: a resume is
  bitwise identical only on the same kind of machine, PyTorch build and, on a CPU, number of
  threads (docs/results.md, "Training reproduces per CPU type").
"""

from __future__ import annotations

import errno
import json
import os
import platform
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

LOCK = ".lock"
TMP_SUFFIX = ".tmp"
# what a training run writes directly under its directory (a planted link at any of these is refused)
SESSIONS = "sessions.jsonl"
RUN_ENTRIES = ("config.json", "checkpoint.pt", "stats.jsonl", "final.json", "skipped_images.txt", "samples", "tb",
               "model", SESSIONS, LOCK)  # fmt: skip
# CPU flags that change which kernels PyTorch's CPU backends pick (oneDNN, the vectorised ops):
# two CPUs that differ in these round differently, so their trainings part after a few steps
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
# what must match for a resumed session to continue bitwise as an uninterrupted run would
# (on a CPU the thread count too: 3 steps of eps-fmnist on 1 and on 2 threads differ in their weights)
SAME_MACHINE_KEYS = ("cpu", "cpu_flags", "gpu", "torch")
SAME_CPU_KEYS = ("threads",)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (in use, holds something else, unsafe entries)."""


class RunIOError(RuntimeError):
    """An OS error while writing run files, said in one line; what was there before is intact."""

    epsvae_user_error = True


def describe(exc: BaseException, path: Path | str, action: str = "writing") -> str:
    """'no space left on device writing RUN/checkpoint.pt' from an OSError (or torch's wrapper of one)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = os.strerror(exc.errno).lower()
    else:  # torch's zip writer reports a failed write() as RuntimeError("... file write failed")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "write failed" in reason or "enforce fail" in reason:
            reason = _guess_write_failure(Path(path))
    return f"{reason} {action} {path}"


def _guess_write_failure(path: Path) -> str:
    try:
        if os.statvfs(path.parent).f_bavail == 0:
            return os.strerror(errno.ENOSPC).lower()
    except OSError:
        pass
    return "the file system refused the write (disk full or a file-size limit?)"


# --------------------------------------------------------------------------- safe files


def _open_new(path: Path, mode: str = "wb") -> IO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, mode)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO], Any], binary: bool = True) -> Path:
    """Write `path` whole or not at all: `write(f)` fills a unique temporary file beside it, which is
    fsynced and renamed over `path` (the rename replaces a symbolic link, never follows it).

    On failure the temporary file is removed and a RunIOError says what failed; `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with _open_new(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise RunIOError(f"{describe(exc, path)}{kept}") from None
    _fsync_dir(path.parent)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(data, indent=2) + "\n"), binary=False)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def append_text(path: str | Path, text: str) -> None:
    """Append to a log file (stats rows, skipped images); O_NOFOLLOW: a planted link is an error."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(text)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(
                f"{path} is a symbolic link; epsvae writes only regular files in a run directory"
            ) from None
        raise RunIOError(describe(exc, path)) from None


def clean_leftovers(directory: Path) -> list[str]:
    """Remove temporary files of writers that were killed mid-write (ours: `.NAME.PID.XXXX.tmp`,
    and the fixed `NAME.tmp` names of older versions). Returns their names."""
    removed = []
    for where in (directory, directory / "model"):  # the run's own files and its export
        for p in list(where.glob(f".*{TMP_SUFFIX}")) + list(where.glob(f"*{TMP_SUFFIX}")):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(str(p.relative_to(directory)))
    return sorted(set(removed))


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and its KERNEL_FLAGS (Linux's /proc/cpuinfo; elsewhere what
    `platform` knows, without flags)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown", [f for f in KERNEL_FLAGS if f in flags]


def session_record(step: int, device: str, gpu: str | None, world_size: int, threads: int, torch_version: str) -> dict:
    """One line of RUN/sessions.jsonl: where and with what this session of a run trains."""
    cpu, flags = cpu_description()
    return {
        "step": step,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "device": device,
        "gpu": gpu,
        "torch": torch_version,
        "world_size": world_size,
        "threads": threads,
    }


def append_session(run_dir: Path, row: dict) -> dict | None:
    """Append `row` to RUN/sessions.jsonl and return the last readable line before it (None if
    there is none). A line cut by a kill is skipped, and the new line starts on a line of its own."""
    path = run_dir / SESSIONS
    text = path.read_text(errors="replace") if path.is_file() and not path.is_symlink() else ""
    before = None
    for line in reversed(text.splitlines()):
        try:
            earlier = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(earlier, dict):
            before = earlier
            break
    append_text(path, ("\n" if text and not text.endswith("\n") else "") + json.dumps(row) + "\n")
    return before


def machine_change(before: dict | None, now: dict) -> str | None:
    """What differs between the session a run resumes after and this one, in the keys that
    decide whether the resume is bitwise (None when nothing does, or nothing is known)."""
    if before is None:
        return None
    keys = SAME_MACHINE_KEYS + (SAME_CPU_KEYS if now.get("device") == "cpu" else ())
    diff = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]
    return "; ".join(diff) or None


def truncate_rows(path: Path, step: int) -> int:
    """Drop stats rows past `step` (written after the checkpoint a run resumes from); returns how many."""
    if not path.is_file() or path.is_symlink():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            row_step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):  # a line cut by a kill: not a row
            dropped += 1
            continue
        if isinstance(row_step, int) and row_step > step:
            dropped += 1
        else:
            keep.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        write_text(path, "".join(keep))
    return dropped


# --------------------------------------------------------------------------- the directory


def check_run_dir(run_dir: Path, entries: tuple[str, ...] = RUN_ENTRIES) -> None:
    """Refuse a --out that is a file, an exported model, a latent set, or holds planted links."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a directory")
    if not run_dir.is_dir():
        return
    if (run_dir / "model.safetensors").exists() or _exported_config(run_dir / "config.json"):
        raise RunDirError(
            f"{run_dir} holds an exported model (config.json + model.safetensors), not a training run; "
            "give --out a new directory (an exported model starts a run with --init-from)"
        )
    if (run_dir / "latents.npy").exists() or (run_dir / "meta.json").exists():
        raise RunDirError(f"{run_dir} holds a latent set (latents.npy, meta.json); give --out a new directory")
    for name in entries:
        p = run_dir / name
        if p.is_symlink():
            raise RunDirError(
                f"{p} is a symbolic link (to {os.readlink(p)}); epsvae writes only inside the run directory: "
                "remove the link"
            )
    for sub in ("samples", "tb", "model"):
        for p in (run_dir / sub).glob("*") if (run_dir / sub).is_dir() else ():
            if p.is_symlink():
                raise RunDirError(f"{p} is a symbolic link; epsvae writes only inside the run directory: remove it")


def _exported_config(path: Path) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "_class_name" in data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """`RUN/.lock`, created atomically (O_EXCL) with pid, host and start time; released on exit.

    A lock left by a process that is gone (same host) is stale: it is taken over with a note.
    One from another host cannot be checked and is refused with instructions."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                with _open_new(self.path, "w") as f:
                    f.write(json.dumps(me) + "\n")
                self.held = True
                return
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise RunDirError(f"{self.path} is a symbolic link; remove it") from None
                raise RunIOError(describe(exc, self.path, "creating")) from None
            other = self._read()
            if other is None:  # being written right now, or garbage: look again
                time.sleep(0.2)
                other = self._read()
            where = self.path.parent
            if other and other.get("host") == me["host"] and not _alive(int(other.get("pid", -1))):
                print(f"[train] {where}: removing a stale lock of process {other['pid']} (no longer running)")
                self.path.unlink(missing_ok=True)
                continue
            if other is None:
                raise RunDirError(f"{self.path} exists but is unreadable; if no run uses {where}, delete it")
            host = other.get("host")
            hint = (
                "stop it or use another --out"
                if host == me["host"]
                else f"if it is not running on {host}, delete {self.path}"
            )
            raise RunDirError(
                f"{where} is in use by another run (pid {other.get('pid')} on {host}, since {other.get('started')}); "
                f"{hint}"
            )
        raise RunDirError(f"could not take the lock {self.path}")

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def release(self) -> None:
        if self.held:
            other = self._read()
            if other is None or other.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
