"""Runs that never lose or mix work, and bad input that gets one clear line (README: "Guarantees").

Fault injection (kill -9 during checkpoint writes, SIGINT/SIGTERM, a full disk, a second run
into the same directory, tampered configs and latent sets) and a table of bad arguments,
each asserting a non-zero exit, a one-line message and no traceback. `benchmarks/faults.py`
repeats the kill -9 test many more times.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from epsvae import EpsilonVAE
from epsvae.checkpoint import load_checkpoint
from epsvae.cli import main
from epsvae.rundir import RunLock

from conftest import tiny_config
from helpers import TINY

PY = [sys.executable, "-m", "epsvae"]
SLOW_FSYNC = (
    "import os, sys, time; fsync = os.fsync; os.fsync = lambda fd: (time.sleep(0.3), fsync(fd))[1]; "
    "from epsvae.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _train_args(out, *extra):
    return ["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(out), *TINY, *extra]


def _train(out, *extra):
    return main(_train_args(out, *extra))


def _cli(argv, capsys):
    """(exit code, stderr) of `epsvae ARGV` in-process; argparse's exit counts as a return."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_line_error(code, err):
    """A clear refusal: non-zero exit, no traceback, and the message is one line (argparse adds its usage)."""
    assert code not in (0, None), err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "error" in lines[0], err
    return lines[0]


def _model_bytes(run):
    return (run / "model" / "model.safetensors").read_bytes()


def _stat_steps(run):
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


# --------------------------------------------------------------------------- one run per directory


def test_a_second_run_into_the_same_directory_is_refused_and_stale_locks_are_taken_over(fmnist, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}))
        line = _one_line_error(*_cli(_train_args(run, "--steps", "1"), capsys))
        assert f"in use by another run (pid {sleeper.pid}" in line
        assert not (run / "config.json").exists()  # nothing written by the refused run
    finally:
        sleeper.kill()
        sleeper.wait()
    # the process is gone: its lock is stale, taken over with a note, and released at the end
    code = main(_train_args(run, "--steps", "1"))
    assert code == 0
    assert "removing a stale lock" in capsys.readouterr().out
    assert not (run / ".lock").exists()
    # a lock from another host cannot be checked: refused, with what to do
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    assert "if it is not running on elsewhere, delete" in _one_line_error(*_cli(_train_args(run), capsys))


def test_two_concurrent_trainings_one_wins(fmnist, tmp_path):
    """Two processes started together on one directory: exactly one trains, the other is refused."""
    run = tmp_path / "r"
    procs = [
        subprocess.Popen([*PY, *_train_args(run, "--steps", "10")], stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    refused = next(err for c, err in results if c == 2)
    assert "in use by another run" in refused and "Traceback" not in refused
    assert _stat_steps(run) == list(range(1, 11))  # one run's rows, not two interleaved


def test_lock_file_is_exclusive(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    a.acquire()
    with pytest.raises(ValueError, match="in use by another run"):
        b.acquire()
    a.release()
    b.acquire()
    b.release()
    assert not (tmp_path / ".lock").exists()


# --------------------------------------------------------------------------- the directory holds one run


def test_resume_compares_the_checkpoints_own_config(fmnist, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(run, "--steps", "2") == 0
    saved = json.loads((run / "config.json").read_text())
    # hand-edited recipe: refused, config.json left as the user edited it (not rewritten)
    edited = json.loads(json.dumps(saved))
    edited["train"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(edited))
    line = _one_line_error(*_cli(_train_args(run, "--steps", "3"), capsys))
    assert "not the config its checkpoint was trained with (train.lr: 0.0002 in the checkpoint, 0.5 now)" in line
    # deleted config.json: resumed with the checkpoint's own config, and config.json restored
    (run / "config.json").unlink()
    assert main(["train", "--out", str(run), "--steps", "3", "--no-progress"]) == 0
    assert "using the config stored in the checkpoint" in capsys.readouterr().out
    restored = json.loads((run / "config.json").read_text())
    assert restored["train"] == {**saved["train"], "steps": 3}
    # --steps below the step reached: refused before anything is rewritten
    before = (run / "config.json").read_bytes()
    assert "is at step 3; --steps 2 is below it" in _one_line_error(*_cli(_train_args(run, "--steps", "2"), capsys))
    assert (run / "config.json").read_bytes() == before
    # a resume on another kind of machine continues, with a note naming what changed
    lines = (run / "sessions.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert [json.loads(line)["step"] for line in lines] == [0, 2]
    lines[-1] = json.dumps({**last, "cpu": "Some Other CPU", "cpu_flags": ["avx2"], "threads": 99})
    (run / "sessions.jsonl").write_text("\n".join(lines) + "\n{cut by a kill")
    assert main(["train", "--out", str(run), "--steps", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resumes at step 3 on another kind of machine (cpu 'Some Other CPU' -> {last['cpu']!r}" in out
    assert f"threads 99 -> {torch.get_num_threads()}" in out  # on a CPU the thread count changes the sums too
    assert "no longer bitwise as one uninterrupted run would" in out
    assert json.loads((run / "sessions.jsonl").read_text().splitlines()[-1])["step"] == 3


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda c: [c], "expected a mapping of config keys, got list"),
        (lambda c: {**c, "model": {**c["model"], "encoder": {**c["model"]["encoder"], "channels": -4}}},
         "model.encoder.channels must be at least 1, got -4"),
        (lambda c: {**c, "model": {k: v for k, v in c["model"].items() if k != "flow"}},
         "config section(s) model.flow missing"),
        (lambda c: {**c, "train": {**c["train"], "ema": 2.0}}, "train.ema must be in (0, 1), got 2.0"),
        (lambda c: {**c, "train": {**c["train"], "ckpt_every": 0}}, "train.ckpt_every must be at least 1"),
        (lambda c: {**c, "train": {**c["train"], "lr": "fast"}}, "train.lr: expected a number"),
    ],
)  # fmt: skip
def test_a_tampered_run_config_is_refused(fmnist, tmp_path, capsys, tamper, message):
    run = tmp_path / "r"
    assert _train(run, "--steps", "1") == 0
    checkpoint = (run / "checkpoint.pt").read_bytes()
    (run / "config.json").write_text(json.dumps(tamper(json.loads((run / "config.json").read_text()))))
    assert message in _one_line_error(*_cli(["train", "--out", run, "--steps", "2", "--no-progress"], capsys))
    assert (run / "checkpoint.pt").read_bytes() == checkpoint


def test_out_must_be_a_run_directory(fmnist, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(run, "--steps", "1") == 0
    model = run / "model"
    config = (model / "config.json").read_bytes()
    line = _one_line_error(*_cli(_train_args(model, "--steps", "1"), capsys))
    assert "holds an exported model" in line
    assert (model / "config.json").read_bytes() == config  # not overwritten
    (tmp_path / "file").write_text("x")
    assert "is a file, not a directory" in _one_line_error(*_cli(_train_args(tmp_path / "file"), capsys))
    latents = tmp_path / "lat"
    latents.mkdir()
    (latents / "meta.json").write_text("{}")
    assert "holds a latent set" in _one_line_error(*_cli(_train_args(latents), capsys))


def test_nothing_is_written_through_a_planted_link(fmnist, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(run, "--steps", "1") == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("stats.jsonl", "final.json"):
        target = run / name
        target.unlink()
        target.symlink_to(victim)
        assert "is a symbolic link" in _one_line_error(*_cli(_train_args(run, "--steps", "2"), capsys))
        target.unlink()
    (run / "samples" / "step0000002.png").symlink_to(victim)
    assert "is a symbolic link" in _one_line_error(*_cli(_train_args(run, "--steps", "2"), capsys))
    assert victim.read_text() == "precious"


def test_an_interrupted_export_is_redone_and_stale_stats_rows_dropped(fmnist, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, "--steps", "2") == 0
    assert _train(b, "--steps", "3") == 0
    # b killed between its last checkpoint (step 3) and the export: model/ still from step 2
    shutil.rmtree(b / "model")
    shutil.copytree(a / "model", b / "model")
    with open(b / "stats.jsonl", "a") as f:  # rows of steps the checkpoint never reached, and a cut line
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + '{"step": 5, "lo')
    (b / ".checkpoint.pt.999.deadbeef.tmp").write_bytes(b"half a checkpoint")
    (b / "checkpoint.pt.tmp").write_bytes(b"an older version's leftover")
    (b / "model" / ".model.safetensors.999.deadbeef.tmp").write_bytes(b"half an export")
    assert _train(b, "--steps", "4") == 0
    assert json.loads((b / "model" / "config.json").read_text())["_step"] == 4
    assert _stat_steps(b) == [1, 2, 3, 4]
    assert not list(b.glob("*.tmp")) and not list(b.glob(".*.tmp")) and not list(b.glob("model/.*.tmp"))
    # killed after its first stats row and before its first checkpoint: the fresh start drops that row
    d = tmp_path / "d"
    d.mkdir()
    (d / "stats.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert _train(d, "--steps", "2") == 0
    assert _stat_steps(d) == [1, 2]
    # a finished run started again re-exports only when model/ is behind its checkpoint
    c = tmp_path / "c"
    assert _train(c, "--steps", "2") == 0
    exported = json.loads((c / "model" / "config.json").read_text())
    (c / "model" / "config.json").write_text(json.dumps({**exported, "_step": 1}))  # behind the checkpoint
    assert _train(c, "--steps", "2") == 0
    assert json.loads((c / "model" / "config.json").read_text())["_step"] == 2
    # up to date (e.g. with latent statistics encode-dataset added): left alone
    (c / "model" / "config.json").write_text(json.dumps({**exported, "latent_mean": [0.0, 0.0]}))
    assert _train(c, "--steps", "2") == 0
    assert json.loads((c / "model" / "config.json").read_text())["latent_mean"] == [0.0, 0.0]


# --------------------------------------------------------------------------- signals and kill -9


def _wait_for(predicate, proc, timeout=240.0):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read() if proc.stderr else ''}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.005)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_write_a_checkpoint_then_exit(fmnist, tmp_path, sig, code):
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [*PY, *_train_args(run, "--steps", "100000", "--set", "train.ckpt_every=100000")],
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (run / "stats.jsonl").exists() and len(_stat_steps(run)) >= 2, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read()
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"{signal.Signals(sig).name} at step" in last and "run the same command to resume" in last
    step = int(last.split("at step ")[1].split(":")[0])
    assert step >= 2 and load_checkpoint(run)["step"] == step  # nothing lost beyond the current step
    assert not (run / ".lock").exists()
    assert main(_train_args(run, "--steps", str(step + 1))) == 0
    assert _stat_steps(run) == list(range(1, step + 2))


def test_kill_9_during_checkpoint_writes_loses_nothing(fmnist, tmp_path):
    """A few kills in CI (benchmarks/faults.py runs many): every resume continues exactly, so the final
    model is bitwise the uninterrupted one, and no temporary file or lock is left behind."""
    steps, every = 8, ["--set", "train.ckpt_every=1"]
    assert _train(tmp_path / "ref", "--steps", str(steps), *every) == 0
    run, kills = tmp_path / "r", 0
    for _attempt in range(3):
        # fsync held open for 0.3 s, so the kill lands while a checkpoint's temporary file exists
        proc = subprocess.Popen([sys.executable, "-c", SLOW_FSYNC, *_train_args(run, "--steps", str(steps), *every)])
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 240:
            if list(run.glob(".checkpoint.pt.*.tmp")) and (run / "checkpoint.pt").exists():
                proc.kill()
                kills += 1
                break
            time.sleep(0.002)
        proc.wait()
    assert kills == 3
    assert load_checkpoint(run)["step"] < steps
    assert main(_train_args(run, "--steps", str(steps), *every)) == 0
    assert _model_bytes(run) == _model_bytes(tmp_path / "ref")
    assert _stat_steps(run) == list(range(1, steps + 1))
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()


# --------------------------------------------------------------------------- full disk


def _resume_under(run, preexec):
    return subprocess.run(
        [*PY, *_train_args(run, "--steps", "2")], preexec_fn=preexec, capture_output=True, text=True, timeout=300
    )


def test_a_file_size_limit_while_checkpointing_is_one_line_and_keeps_the_checkpoint(fmnist, tmp_path):
    import resource

    run = tmp_path / "r"
    assert _train(run, "--steps", "1") == 0
    before = (run / "checkpoint.pt").read_bytes()
    limit = len(before) // 2  # the new checkpoint cannot be written; everything else can

    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _resume_under(run, preexec)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "file too large writing" in last and "checkpoint.pt; the previous checkpoint.pt is intact" in last
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_a_full_disk_is_said_in_one_line(fmnist, tmp_path):
    """On a small tmpfs (where this machine lets the test mount one): ENOSPC, the old checkpoint intact."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = tmp_path / "r"
    assert _train(run, "--steps", "1") == 0
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    room = size + len((run / "checkpoint.pt").read_bytes()) // 2 + 64 * 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        shutil.copytree(run, mnt / "r")
        before = (mnt / "r" / "checkpoint.pt").read_bytes()
        proc = _resume_under(mnt / "r", None)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "no space left on device writing" in last and "the previous checkpoint.pt is intact" in last
        assert (mnt / "r" / "checkpoint.pt").read_bytes() == before
        assert not list((mnt / "r").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_read_only_output_is_one_line(fmnist, tmp_path, capsys):
    """A read-only directory (root ignores permissions, so as root: a read-only tmpfs where one can be mounted)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
        if mounted.returncode:
            pytest.skip(f"running as root and cannot mount a read-only tmpfs ({mounted.stderr.decode().strip()})")
        expected, undo = "read-only file system creating", ["umount", str(ro)]
    else:
        ro.chmod(0o555)
        expected, undo = "permission denied creating", ["chmod", "755", str(ro)]
    try:
        assert expected in _one_line_error(*_cli(_train_args(ro / "r", "--steps", "1"), capsys))
    finally:
        subprocess.run(undo, check=False)


# --------------------------------------------------------------------------- bad arguments and bad files


@pytest.fixture
def model_dir(fmnist, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ae"
    EpsilonVAE(tiny_config(size=32)).save_pretrained(path)
    return path


def test_bad_arguments_fail_in_one_line(model_dir, tmp_path, capsys):
    m, out = str(model_dir), str(tmp_path / "o.json")
    empty = tmp_path / "empty.npz"
    np.savez(empty, samples=np.zeros((0, 1, 32, 32), np.uint8), labels=np.zeros((0,), np.int64))
    rows = [  # (argv, expected text in the message)
        (_train_args(tmp_path / "a", "--batch-size", "0"), "must be a positive integer, got 0"),
        (_train_args(tmp_path / "a", "--steps", "-5"), "must be a positive integer, got -5"),
        (_train_args(tmp_path / "a", "--minutes", "-1"), "must be a positive finite number"),
        (_train_args(tmp_path / "a", "--minutes", "nan"), "must be a positive finite number"),
        (_train_args(tmp_path / "a", "--set", "train.ema=2.0"), "train.ema must be in (0, 1)"),
        (_train_args(tmp_path / "a", "--set", "train.log_every=0"), "train.log_every must be at least 1"),
        (_train_args(tmp_path / "a", "--set", "train.sample_every=0"), "train.sample_every must be at least 1"),
        (_train_args(tmp_path / "a", "--set", "train.loss.r1_every=0"), "train.loss.r1_every must be at least 1"),
        (_train_args(tmp_path / "a", "--set", "model.decoder.channels=-8"), "must be at least 1"),
        (["eval", "--model", m, "--data", "fashion-mnist", "--out", out, "--limit", "-5"], "positive integer"),
        (["eval", "--model", m, "--data", "fashion-mnist", "--out", out, "--seeds", ""], "needs at least one value"),
        (["eval", "--model", m, "--data", "fashion-mnist", "--out", out, "--steps", "0"], "at least 1"),
        (["eval", "--model", m, "--data", "fashion-mnist", "--out", out, "--device", "bogus"], "unknown device"),
        (["reconstruct", "--model", m, "--data", "fashion-mnist", "--out", out, "--limit", "0"], "positive integer"),
        (["sample", "--dit", str(tmp_path), "--out", out, "--cfg", "nan"], "must be a finite number"),
        (["sample", "--dit", str(tmp_path), "--out", out, "--n", "0"], "positive integer"),
        (["encode-dataset", "--model", m, "--data", "fashion-mnist", "--out", out, "--limit", "0"], "positive"),
        (["export", str(tmp_path / "none"), "--out", str(tmp_path / "x")], "no training checkpoint"),
        (["eval-gen", "--samples", str(empty), "--data", "fashion-mnist"], "with N >= 2"),
        (["eval", "--model", str(tmp_path / "none"), "--data", "fashion-mnist", "--out", out], "not an epsvae model"),
    ]
    for argv, expected in rows:
        line = _one_line_error(*_cli(argv, capsys))
        assert expected in line, (argv, line)


def test_checkpoint_without_ema_and_non_finite_outputs(model_dir, fmnist, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(run, "--steps", "1") == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["ema"]
    torch.save(state, run / "checkpoint.pt")
    assert "holds no EMA weights" in _one_line_error(*_cli(["export", run, "--out", tmp_path / "x"], capsys))
    # NaN weights: an error, not black images with exit 0
    model = EpsilonVAE.from_pretrained(model_dir)
    with torch.no_grad():
        next(model.decoder.parameters()).fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan")
    argv = ["reconstruct", "--model", tmp_path / "nan", "--data", "fashion-mnist", "--out", tmp_path / "r.npz"]
    assert "hold NaN or infinite pixels" in _one_line_error(*_cli([*argv, "--limit", "4"], capsys))
    assert not (tmp_path / "r.npz").exists()
    argv = ["eval", "--model", tmp_path / "nan", "--data", "fashion-mnist", "--out", tmp_path / "e.json"]
    assert "hold NaN or infinite pixels" in _one_line_error(*_cli([*argv, "--limit", "4", "--seeds", "0"], capsys))
    # a NaN in a custom time grid
    z = torch.zeros(1, 2, 16, 16)
    with pytest.raises(ValueError, match="custom grid"):
        model.decode(z, grid=torch.tensor([1.0, float("nan"), 0.0]))


def _tamper_latents(lat, kind):
    meta = json.loads((lat / "meta.json").read_text())
    z = np.load(lat / "latents.npy")
    y = np.load(lat / "labels.npy")
    if kind == "meta-missing-key":
        del meta["latent_std"]
    elif kind == "meta-list":
        meta = [meta]
    elif kind == "meta-bad-shape":
        meta["latent_shape"] = [2, 16]
    elif kind == "float64":
        z = z.astype(np.float64)
    elif kind == "4x4-as-16x16":
        z = np.ascontiguousarray(z[:, :, :4, :4])
    elif kind == "count":
        meta["count"] += 5
    elif kind == "labels-99":
        y[0] = 99
    elif kind == "labels-float":
        y = y.astype(np.float32)
    elif kind == "std-zero":
        meta["latent_std"] = [0.0] * len(meta["latent_std"])
    elif kind == "truncated":
        (lat / "latents.npy").write_bytes((lat / "latents.npy").read_bytes()[:100])
        z = None
    elif kind == "pickle":
        z = np.array([{"x": 1}], dtype=object)
    elif kind == "channels":
        z = np.ascontiguousarray(np.concatenate([z, z], axis=1))
        meta["latent_shape"][0] *= 2
        meta["latent_mean"] *= 2
        meta["latent_std"] *= 2
    (lat / "meta.json").write_text(json.dumps(meta))
    if z is not None:
        np.save(lat / "latents.npy", z, allow_pickle=True)
    np.save(lat / "labels.npy", y)


KINDS = {
    "meta-missing-key": "lacks latent_std",
    "meta-list": "must hold a JSON object",
    "meta-bad-shape": "latent_shape must be three positive integers",
    "float64": "holds float64",
    "4x4-as-16x16": ", 2, 4, 4); its meta.json says float32",
    "count": "the set is damaged or was edited",
    "labels-99": "to 99, outside -1 (none)",
    "labels-float": "expected int64",
    "std-zero": "positive std",
    "truncated": "not a readable .npy array",
    "pickle": "not a readable .npy array",
    "channels": "4 latent channels",
}


def test_tampered_latent_sets_and_generator_configs_are_refused(model_dir, tmp_path, capsys):
    lat = tmp_path / "lat"
    assert main(["encode-dataset", "--model", str(model_dir), "--data", "fashion-mnist", "--out", str(lat)]) == 0
    for kind, expected in KINDS.items():
        bad = tmp_path / f"lat-{kind}"
        shutil.copytree(lat, bad)
        _tamper_latents(bad, kind)
        argv = ["train-dit", "--ae", model_dir, "--latents", bad, "--out", tmp_path / f"dit-{kind}", "--steps", "1"]
        line = _one_line_error(*_cli(argv, capsys))
        assert expected in line, (kind, line)
    # a generator config without its autoencoder record
    from epsvae.config import DiTConfig, to_dict
    from epsvae.generation import LatentGenerator
    from epsvae.models import write_pretrained

    gen = LatentGenerator(DiTConfig(hidden=16, depth=1, heads=2, latent_channels=2, latent_size=16))
    write_pretrained(tmp_path / "gen", gen, to_dict(gen.config))
    argv = ["sample", "--dit", tmp_path / "gen", "--n", "2", "--out", tmp_path / "s.npz"]
    assert "lacks its autoencoder record" in _one_line_error(*_cli(argv, capsys))


def test_resume_check_ignores_fields_added_since_the_checkpoint(tmp_path):
    """A checkpoint written before a config field existed resumes (the field's default applies, as
    for config.json); a field whose value differs does not."""
    from epsvae.checkpoint import check_same_run

    now = {"train": {"lr": 0.1, "steps": 9, "new_field": 3}}
    old = {"step": 2, "config": json.dumps({"train": {"lr": 0.1, "steps": 4}})}
    check_same_run(tmp_path, old, now, steps=9)
    with pytest.raises(ValueError, match="train.lr: 0.2 in the checkpoint, 0.1 now"):
        check_same_run(tmp_path, {**old, "config": json.dumps({"train": {"lr": 0.2}})}, now, steps=9)
    with pytest.raises(ValueError, match="is at step 2; --steps 1 is below it"):
        check_same_run(tmp_path, old, now, steps=1)
