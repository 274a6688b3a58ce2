"""Every benchmark script runs end to end in its smoke mode (the full runs live in docs/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compression_quick(fmnist, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compression.py"), "--quick", "--arms", "vae-1x,eps-2x",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "compression.json").read_text())
    assert [r["arm"] for r in result["rows"]] == ["vae-1x", "eps-2x"]
    assert [r["compression"] for r in result["rows"]] == [8.0, 16.0]
    assert list(result["rows"][1]["eval"]["results"]) == ["1", "3"]
    assert "fd_domain" in proc.stdout
    plot = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "plots.py"),
            str(out / "compression.json"),
            "--out",
            str(tmp_path / "plots"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "plots" / "compression.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "compression_vs_compression.png").stat().st_size > 1000
    models = [str(Path(r["run"]) / "model") for r in result["rows"]]
    recon = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plots.py"), "--recon", *models, "--out", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert recon.returncode == 0, recon.stderr[-2000:]
    assert (tmp_path / "plots" / "reconstructions.png").stat().st_size > 1000
    runs = [r["run"] for r in result["rows"]]
    gap = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "psnr_gap.py"), "--quick", "--vae", runs[0], "--eps", runs[1],
         "--out", str(tmp_path / "gap")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gap.returncode == 0, gap.stderr[-2000:]
    rows = json.loads((tmp_path / "gap" / "psnr_gap.json").read_text())["rows"]
    assert [(r["model"], r["weights"], r["average_of"]) for r in rows] == [
        ("vae", "ema", 1), ("vae", "raw", 1), ("eps", "ema", 1), ("eps", "raw", 1), ("eps", "ema", 2)
    ]  # fmt: skip


def _quick(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fd_indep" in proc.stdout and "not FID" in proc.stdout
    return json.loads((out / f"{script}.json").read_text())


def test_plot_series_one_line_per_grid():
    """A γ sweep decoded on two grids plots one line per grid for 2+ steps, one for 1 step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plots import series_over

    def row(gamma, grid, fd1, fd3):
        results = {"1": {"fd_indep": {"mean": fd1, "std": 0}}, "3": {"fd_indep": {"mean": fd3, "std": 0}}}
        return {"gamma": gamma, "eval": {"kind": "epsilon", "grid": grid, "results": results}}

    rows = [row(1.0, "reversed-log", 0.028, 0.029), row(0.6, "reversed-log", 0.031, 0.022),
            row(1.0, "uniform", 0.028, 0.047), row(0.6, "uniform", 0.031, 0.032)]  # fmt: skip
    series = series_over({"rows": rows}, lambda r: r["gamma"])
    assert set(series) == {"ε-VAE, 1 step", "ε-VAE, 3 step, reversed-log", "ε-VAE, 3 step, uniform"}
    assert [(x, m["fd_indep"]["mean"]) for x, m in series["ε-VAE, 3 step, uniform"]] == [(1.0, 0.047), (0.6, 0.032)]
    assert [x for x, _ in series["ε-VAE, 1 step"]] == [1.0, 0.6]  # the second grid's 1-step points are the same
    one_grid = series_over({"rows": rows[:2]}, lambda r: r["gamma"])
    assert set(one_grid) == {"ε-VAE, 1 step", "ε-VAE, 3 step"}


def test_plot_ablation_over_arms(tmp_path, monkeypatch):
    """An ablation decoded on two grids is drawn over the arms, in the rows' order, one line per grid."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plots import arm_positions, arms_on_several_grids, main, series_over

    def row(arm, grid, fd3):
        m = {"psnr": {"mean": 24.0, "std": 0}, "fd_indep": {"mean": fd3, "std": 0}}
        return {"arm": arm, "eval": {"kind": "epsilon", "grid": grid, "results": {"1": m, "3": m}}}

    rows = [row("velocity only", "uniform", 0.094), row("velocity only", "reversed-log", 0.093),
            row("+ perceptual", "uniform", 0.047), row("+ perceptual", "reversed-log", 0.041)]  # fmt: skip
    result = {"rows": rows, "machine": "test", "date": "2026-11-29", "command": "x"}
    pos = arm_positions(result)
    assert pos == {"velocity only": 0, "+ perceptual": 1}
    assert arms_on_several_grids(result)
    # the script's own file (one grid per arm, the last arm on another grid) stays bars
    assert not arms_on_several_grids({"rows": [rows[0], row("+ reversed-log grid", "reversed-log", 0.02)]})
    series = series_over(result, lambda r: pos[r["arm"]])
    assert [(x, m["fd_indep"]["mean"]) for x, m in series["ε-VAE, 3 step, reversed-log"]] == [(0, 0.093), (1, 0.041)]
    path = tmp_path / "ablation_test.json"
    path.write_text(json.dumps(result))
    monkeypatch.setattr(sys, "argv", ["plots.py", str(path), "--out", str(tmp_path)])
    main()
    assert (tmp_path / "ablation_test.png").stat().st_size > 0


@pytest.mark.slow
def test_gamma_quick(fmnist, tmp_path):
    result = _quick("gamma", tmp_path / "g", "--gammas", "1.0,0.4")
    assert [r["arm"] for r in result["rows"]] == ["gamma=1.0", "gamma=0.4"]
    run = Path(result["rows"][1]["run"])
    assert run.parent == tmp_path / "runs"  # shared with the other benchmarks whose --out is a sibling
    assert json.loads((run / "config.json").read_text())["model"]["flow"]["gamma"] == 0.4
    assert [r["gamma"] for r in result["rows"]] == [1.0, 0.4]
    # the plot reads γ from the rows, or from the arm name in files written before that field
    old = {**result, "rows": [{k: v for k, v in r.items() if k != "gamma"} for r in result["rows"]]}
    (tmp_path / "gamma_old.json").write_text(json.dumps(old))
    plot = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plots.py"), str(tmp_path / "g" / "gamma.json"),
         str(tmp_path / "gamma_old.json"), "--combine", "gamma_all", "--out", str(tmp_path / "plots")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "plots" / "gamma_all.png").stat().st_size > 0


@pytest.mark.slow
def test_ablation_quick(fmnist, tmp_path):
    result = _quick("ablation", tmp_path / "a")
    assert [r["grid"] for r in result["rows"]] == ["uniform"] * 4 + ["reversed-log"]
    runs = [r["run"] for r in result["rows"]]
    first = json.loads((Path(runs[0]) / "config.json").read_text())
    assert first["train"]["loss"]["perceptual_weight"] == 0 and first["train"]["loss"]["adv_weight"] == 0
    assert first["model"]["flow"]["gamma"] == 1.0
    assert len(set(runs)) == 4 and runs[3] == runs[4]  # the grid arm re-evaluates arm 3's run
    # a later benchmark asking for an arm that was already trained finds it instead of retraining it
    again = _quick("gamma", tmp_path / "g", "--gammas", "0.6")["rows"][0]
    assert again["run"] == runs[3] and again["train_seconds"] == result["rows"][3]["train_seconds"]


@pytest.mark.slow
def test_train_only_then_evaluate(fmnist, tmp_path):
    """--train-only fills the run cache (one process per arm on a big machine) and writes no
    results; the evaluation run afterwards finds those runs instead of retraining them."""
    script = str(ROOT / "benchmarks" / "ablation.py")
    bad = subprocess.run([sys.executable, script, "--quick", "--arms", "0,6"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--arms takes 1-based indices up to 5" in bad.stderr
    trained = subprocess.run(
        [sys.executable, script, "--quick", "--train-only", "--arms", "2", "--out", str(tmp_path / "a")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "[+ perceptual] trained:" in trained.stdout and not (tmp_path / "a").exists()
    (run,) = (tmp_path / "runs").iterdir()
    first = json.loads((run / "final.json").read_text())
    row = _quick("ablation", tmp_path / "a", "--arms", "2")["rows"][0]
    assert row["arm"] == "+ perceptual" and row["run"] == str(run)
    assert row["train_seconds"] == first["total_seconds"] and "psnr" in row["eval"]["results"]["1"]
    assert row["grid"] == row["eval"]["grid"] == "uniform"  # the arm's own grid
    other = _quick("ablation", tmp_path / "b", "--arms", "2", "--grid", "reversed-log")["rows"][0]
    assert other["run"] == str(run) and other["grid"] == other["eval"]["grid"] == "reversed-log"  # same run, re-decoded


@pytest.mark.slow
def test_set_overrides_every_arm(fmnist, tmp_path):
    """--set adds an override after each arm's own: it wins, is recorded, and keys a new run."""
    extra = ("--gammas", "1.0", "--set", "train.loss.adv_weight=2.0", "--grid", "uniform")
    row = _quick("gamma", tmp_path / "g", *extra)["rows"][0]
    assert row["grid"] == "uniform" and row["gamma"] == 1.0
    sets = row["overrides"]  # the paper's recipe pinned first, the arm's γ after it, --set last
    pinned = ("train.loss.perceptual_weight=0.5", "model.flow.gamma=1.0", "train.loss.adv_weight=2.0")
    assert [sets.index(s) for s in pinned] == sorted(sets.index(s) for s in pinned)
    assert json.loads((Path(row["run"]) / "config.json").read_text())["model"]["flow"]["gamma"] == 1.0
    assert json.loads((Path(row["run"]) / "config.json").read_text())["train"]["loss"]["adv_weight"] == 2.0
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gamma.py"), "--quick", "--out", str(tmp_path / "b"),
         "--set", "train.loss.adv_wieght=2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "unknown config key 'train.loss.adv_wieght'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_evaluations_are_kept_and_reused(fmnist, tmp_path):
    """A second benchmark over the same trained run reuses the evaluation kept in the run's evals/
    (marked with where it came from, the same numbers); --reevaluate measures anew; the key
    changes with the model's files."""
    first = _quick("gamma", tmp_path / "g", "--gammas", "1.0")["rows"][0]
    again = _quick("gamma", tmp_path / "g2", "--gammas", "1.0")["rows"][0]
    assert "cached_from" not in first["eval"] and first["run"] == again["run"]
    kept = Path(again["eval"].pop("cached_from")["file"])
    assert kept.parent == Path(first["run"]) / "evals" and kept.is_file()
    assert again["eval"] == first["eval"]
    fresh = _quick("gamma", tmp_path / "g3", "--gammas", "1.0", "--reevaluate")["rows"][0]
    assert "cached_from" not in fresh["eval"]
    assert fresh["eval"]["results"]["3"]["psnr"] == first["eval"]["results"]["3"]["psnr"]  # deterministic decode

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import eval_key

    run = Path(first["run"])
    key = eval_key(run, "fashion-mnist", 16, [1, 3], [0], None, None)
    assert key == kept.stem
    (run / "model" / "notes.txt").write_text("another model")
    assert eval_key(run, "fashion-mnist", 16, [1, 3], [0], None, None) != key
    assert eval_key(run, "fashion-mnist", 16, [1, 3], [0], "uniform", None) != eval_key(
        run, "fashion-mnist", 16, [1, 3], [0], None, None
    )


def test_steps_quick(fmnist, tmp_path):
    result = _quick("steps", tmp_path / "s", "--decode-steps", "1,2,5")
    assert [r["arm"] for r in result["rows"]] == ["reversed-log", "uniform"]
    assert list(result["rows"][0]["eval"]["results"]) == ["1", "2", "5"]


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu(fmnist, tmp_path):
    """Every part of the one-call GPU check runs (tiny, on the CPU, without compiling)."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--no-compile", "--budget-s", "900",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == [] and result["skipped"] == [], (result["errors"], result["skipped"])
    assert [r["variant"] for r in result["train"]] == ["before", "after", "after+r1/4"]
    convs = result["convs_eps-fmnist"]  # the step's convolutions, heaviest first, each timed both ways
    shares = [r["share_of_conv_flops"] for r in convs["shapes"]]
    assert convs["conv_shapes"] >= len(shares) > 0 and shares == sorted(shares, reverse=True)
    assert 0 < convs["top_shapes_share"] <= 1.0 and convs["forward_conv_flops_per_step"] > 0
    assert all(r[m]["tflops"] > 0 for r in convs["shapes"] for m in ("default", "cudnn_benchmark"))
    by_shape = result["profile_eps-fmnist_after"]["convolutions_by_shape"]  # the profile's convs, by layer shape
    assert by_shape and all(len(r["input"]) == 4 and len(r["weight"]) == 4 for r in by_shape)
    assert all(r["forward_calls"] > 0 and r["forward_ms"] > 0 for r in by_shape)
    assert all(r["flops_per_step"] > 0 and r["images_per_s"] > 0 for r in result["train"])
    decoders = {r["decoder"] for r in result["decode"]}
    assert {"sd-vae", "eps-sd-B 1-step", "eps-sd-B 3-step"} <= decoders
    assert {(r["resolution"], r["batch"]) for r in result["decode"]} == {(64, 16), (64, 1)}
    engine = result["engine_check"]
    assert engine["exported"] and engine["summary"]["accumulation_steps"] == 2
    assert result["profile_eps-fmnist_after"]["families_percent"] and "vs SD-VAE" in proc.stdout


def test_cpu_step_variants(fmnist, tmp_path):
    """The CPU step benchmark times every phase; a layout switch leaves the arithmetic as it was."""
    out = tmp_path / "cs"

    def rows_of(out_dir: Path, *extra: str) -> list[dict]:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "cpu_step.py"), "--batch", "4", "--steps", "4", "--threads", "1",
             "--set", "train.loss.perceptual=none", "--out", str(out_dir), *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out_dir / "cpu_step.json").read_text())["rows"]

    rows = rows_of(out, "--variants", "default,channels_last,bf16")
    assert [r["variant"] for r in rows] == ["default", "channels_last", "bf16"]
    for r in rows:
        assert r["seconds_per_step"] > 0 and all(r["phase_seconds_per_step"][k] > 0 for k in ("autoencoder", "r1"))
    a, b, c = (r["first_step_losses"]["loss"] for r in rows)
    assert a == pytest.approx(b, rel=1e-5) and a == pytest.approx(c, rel=0.05) and a != c
    (pre,) = rows_of(out / "pre", "--variants", "default", "--before-gan", "--profile-all")
    assert pre["gan"] is False and pre["phase_seconds_per_step"]["autoencoder"] > 0
    assert pre["phase_seconds_per_step"]["discriminator"] == 0 and pre["phase_seconds_per_step"]["r1"] == 0
    assert pre["first_step_losses"]["d_loss"] == 0 and pre["first_step_losses"]["loss"] < a  # no adversarial term
    convs = pre["convolutions_ms_per_step"]
    assert convs and {c["pass"] for c in convs} == {"forward", "backward"} and all(c["ms"] >= 0 for c in convs)


@pytest.mark.slow
def test_resolution_quick(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("EPSVAE_CACHE", str(tmp_path / "cache"))
    result = _quick("resolution", tmp_path / "r", "--resolutions", "32,64")
    assert [r["arm"] for r in result["rows"]] == ["vae @ 32px", "vae @ 64px", "eps @ 32px", "eps @ 64px"]
    assert result["rows"][1]["eval"]["resolution"] == 64
    saved = tmp_path / "r" / "resolution.json"
    plot = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plots.py"), str(saved), "--out", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "p" / "resolution.png").stat().st_size > 0


@pytest.mark.slow
def test_decode_speed_quick(tmp_path):
    pytest.importorskip("diffusers")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode_speed.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "decode_speed.json").read_text())["rows"]
    assert [r["arm"] for r in rows][:3] == ["sd-vae", "eps-sd-B 1-step", "eps-sd-B 3-step"]
    assert abs(rows[0]["decoder_params_m"] - 49.49) < 0.01 and all(r["images_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_generation_quick(fmnist, tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick", "--arms", "vae-1x,eps-2x",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "generation.json").read_text())["rows"]
    assert [r["arm"] for r in rows] == ["vae-1x", "eps-2x"] and [r["compression"] for r in rows] == [8.0, 16.0]
    assert all(r["fd_indep"] > 0 and r["fd_domain"] > 0 and r["images_per_s"] > 0 and r["dit_steps"] == 2 for r in rows)
    assert rows[1]["decode_steps"] == 3 and rows[0]["decode_steps"] is None
    assert (out / "eps-2x" / "samples.png").is_file() and "not FID" in proc.stdout
    plot = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plots.py"), str(out / "generation.json"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plot.returncode == 0 and (out / "generation.png").stat().st_size > 1000, plot.stderr[-2000:]


def test_train_stats_windows(tmp_path):
    """Window means of logged terms, the logit gap where both sides are logged, and a cut-off
    last line (a killed run) skipped with a message."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "velocity": 1.0 / s}) for s in (1, 2)]
    lines += [json.dumps({"step": s, "velocity": 0.1, "d_real": 0.5, "d_fake": -0.25}) for s in (3, 4)]
    (run / "stats.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "veloc')
    out = tmp_path / "stats.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_stats.py"), str(run), "--window", "2",
         "--keys", "velocity,d_real,d_fake", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "stats.jsonl:5: unreadable line skipped" in proc.stdout
    first, second = json.loads(out.read_text())[str(run)]
    assert first == {"steps": "1-2", "velocity": 0.75, "d_real": None, "d_fake": None}
    assert second["steps"] == "3-4" and second["gap"] == 0.75 and second["velocity"] == 0.1
    missing = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_stats.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no stats.jsonl" in missing.stderr


def test_disc_probe_quick(fmnist, tmp_path):
    """The discriminator probe runs on an exported ε-VAE (x0_hat and the blur control, each
    learning rate), writes scores in range, and refuses a VAE with a clear message."""
    from epsvae import BaselineVAE, EpsilonVAE
    from epsvae.config import apply_overrides
    from epsvae.presets import model_config

    tiny = ["encoder.channels=4", "decoder.channels=4", "decoder.head_channels=4", "discriminator.channels=4"]
    script = str(ROOT / "benchmarks" / "disc_probe.py")
    EpsilonVAE(apply_overrides(model_config("eps-fmnist"), tiny)).save_pretrained(tmp_path / "eps")
    proc = subprocess.run(
        [sys.executable, script, "--model", str(tmp_path / "eps"), "--quick", "--out", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "p" / "disc_probe.json").read_text())["rows"]
    assert [(r["fake"], r["lr"]) for r in rows] == [
        ("x0_hat", 2e-4),
        ("x0_hat", 1e-3),
        ("blur2x2", 2e-4),
        ("blur2x2", 1e-3),
    ]
    assert all(0 <= r["heldout_rank_accuracy"] <= 1 and r["fake_l1"] > 0 and r["steps"] == 3 for r in rows)
    # another discriminator design on the same frozen decoder; a wrong key is one clear line
    sg = ["--disc-set", "head=patch", "--disc-set", "group_channels=2", "--lrs", "2e-4"]  # eps-fmnist's: stylegan, 8
    proc = subprocess.run(
        [sys.executable, script, "--model", str(tmp_path / "eps"), "--quick", *sg, "--out", str(tmp_path / "sg")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sg_result = json.loads((tmp_path / "sg" / "disc_probe.json").read_text())
    assert sg_result["discriminator"]["head"] == "patch" and sg_result["discriminator"]["group_channels"] == 2
    assert rows[0]["heldout_gap"] != sg_result["rows"][0]["heldout_gap"]  # a different network was probed
    assert [(r["fake"], r["lr"]) for r in sg_result["rows"]] == [("x0_hat", 2e-4), ("blur2x2", 2e-4)]
    typo = subprocess.run(
        [sys.executable, script, "--model", str(tmp_path / "eps"), "--quick", "--disc-set", "heads=patch"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert typo.returncode != 0 and "--disc-set" in typo.stderr and "heads" in typo.stderr
    assert "Traceback" not in typo.stderr
    BaselineVAE(apply_overrides(model_config("vae-fmnist"), tiny[:2])).save_pretrained(tmp_path / "vae")
    bad = subprocess.run(
        [sys.executable, script, "--model", str(tmp_path / "vae"), "--quick"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "needs an ε-VAE" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_photos_quick(tmp_path):
    """The photo benchmark's smoke test: photos copied once, split by photo, both arms trained and evaluated."""
    result = _quick("photos", tmp_path / "p", "--data-dir", str(tmp_path / "photos"), "--seeds", "0")
    assert [r["arm"] for r in result["rows"]] == ["vae-photo", "eps-photo"]
    assert "holdout=0.26" in result["data"] and result["rows"][1]["compression"] == 24.0
    assert {"psnr", "ssim", "fd_indep", "fd_domain"} <= set(result["rows"][1]["eval"]["results"]["3"])


@pytest.mark.slow
def test_data_speed_quick(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_speed.py"), "--quick", "--out", str(out),
         "--data-dir", str(tmp_path / "jpegs")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "data_speed.json").read_text())["rows"]
    assert [r["workers"] for r in rows[:2]] == [0, 1] and all(r["images_per_s"] > 0 for r in rows)
    assert len(list((tmp_path / "jpegs").glob("*.jpg"))) == 8


@pytest.mark.slow
def test_faults_quick(fmnist, tmp_path):
    """kill -9 twice (once at a random moment, once during a checkpoint write), then the bitwise comparison."""
    out = tmp_path / "f"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((out / "faults.json").read_text())["rows"][0]
    assert row["final_model_bitwise_equal"] and row["stats_rows_exactly_once"] and row["leftovers"] == []
    assert row["kills_during_checkpoint_writes"] >= 1


@pytest.mark.slow
def test_frozen_quick(fmnist, tmp_path):
    out = tmp_path / "fr"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "frozen.py"), "--quick", "--out", str(out), "--seeds", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "frozen.json").read_text())["rows"]
    assert [r["preset"] for r in rows] == ["vae-fmnist", "eps-fmnist"]
    frozen = [o for o in rows[1]["overrides"] if o.startswith("train.frozen_encoder=")]
    assert len(frozen) == 1 and "fd_indep" in rows[1]["eval"]["results"]["3"]


@pytest.mark.slow
def test_decode_memory_quick(tmp_path):
    def dm(*args):  # one decode_memory.py run; it must succeed
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "decode_memory.py"), *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]

    dm("--quick", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "decode_memory.json").read_text())["rows"]
    assert all("error" not in r and r["peak_gib"] > 0 and r["seconds"] > 0 for r in rows)
    tiled = [r for r in rows if r["tiled"]]
    assert [r["size"] for r in tiled] == [64, 128] and all(r["norm_passes_run"] >= 1 for r in tiled)
    assert all(r["max_abs_vs_untiled"] < 1e-4 for r in tiled)  # the tiled image is the untiled one
    assert [(r["batch"], r["sliced"]) for r in rows[-2:]] == [(1, False), (4, True)]
    assert (tmp_path / "decode_memory.png").stat().st_size > 0 and not (tmp_path / "images").exists()
    # several runs merged into one table and plot: an arm measured twice keeps its first row
    merged_dir, src = tmp_path / "merged", str(tmp_path / "decode_memory.json")
    dm("--plot", src, src, "--out", str(merged_dir))
    merged = json.loads((merged_dir / "decode_memory.json").read_text())["rows"]
    assert merged == rows and (merged_dir / "decode_memory.png").stat().st_size > 0
    assert all(r["trim_host"] for r in tiled)  # the lean heap is the default on the CPU
    # a run with glibc's defaults (--no-trim) is its own series: merged beside the default one
    dm("--quick", "--no-trim", "--out", str(tmp_path / "plain"))
    dm("--plot", src, str(tmp_path / "plain" / "decode_memory.json"), "--out", str(merged_dir))
    merged = json.loads((merged_dir / "decode_memory.json").read_text())["rows"]
    assert sorted(r["trim_host"] for r in merged if r["tiled"] and r["size"] == 128) == [False, True]
    # a tiled image kept from one run, compared with the untiled decode of another (same seeds)
    dm("--quick", "--only", "tiled", "--keep-images", "--out", str(tmp_path / "t"))
    kept = tmp_path / "t" / "images" / "128-1-tiled-b1.npy"
    assert sorted(p.name for p in kept.parent.iterdir()) == ["128-1-tiled-b1.npy", "64-1-tiled-b1.npy"]
    dm("--quick", "--only", "untiled", "--tiled-image", str(kept), "--out", str(tmp_path / "u"))
    rows = json.loads((tmp_path / "u" / "decode_memory.json").read_text())["rows"]
    assert [(r["size"], r["tiled"]) for r in rows] == [(64, False), (128, False)]  # no slicing arms
    assert "tiled_image" not in rows[0] and rows[1]["max_abs_tiled_vs_untiled"] < 1e-4
    assert rows[1]["max_abs_tiled_vs_untiled"] == next(r for r in tiled if r["size"] == 128)["max_abs_vs_untiled"]


def test_speckle_measures_flat_region_noise(fmnist, tmp_path, monkeypatch):
    """The flat-black mask keeps 2 px away from anything bright; the statistics read back a known
    noise; the script runs on a tiny ε-VAE (named and explicit grids, raw weights) and a VAE."""
    import torch

    from epsvae.cli import main

    from helpers import TINY, write_fake_fashion_mnist

    monkeypatch.setenv("EPSVAE_DATA", str(write_fake_fashion_mnist(tmp_path / "black", noise=1)))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from speckle import display_curve, flat_mask, speckle_stats

    x = -torch.ones(1, 1, 12, 12)
    x[..., 5, 5] = 0.5
    mask = flat_mask(x)
    assert not mask[..., 3:8, 3:8].any() and mask[..., 2, :].all() and mask.sum() == 144 - 25
    clean = speckle_stats([x.clone()], x, mask)
    assert clean["flat_std"] == 0 and clean["flat_mean"] == 0 and clean["flat_p99"] == 0
    g = torch.Generator().manual_seed(0)
    noisy = [x + 0.1 * torch.randn(x.shape, generator=g).abs() for _ in range(2)]
    stats = speckle_stats(noisy, x, mask)
    assert 0.04 < stats["flat_std"] < 0.08 and 0.06 < stats["flat_mean"] < 0.1  # half-normal: std 0.06, mean 0.08
    assert 0.04 < stats["seed_std"] < 0.08  # independent noise: all of the spread comes from the seed
    assert stats["flat_above"] == 1.0 and stats["flat_mean_unclamped"] == pytest.approx(stats["flat_mean"])
    below = speckle_stats([x - 0.1], x, mask)  # everything below black: clamped to clean, but counted
    assert below["flat_std"] == 0 and below["flat_above"] == 0 and below["flat_mean_unclamped"] == pytest.approx(-0.1)

    from epsvae import BaselineVAE
    from epsvae.config import apply_overrides
    from epsvae.presets import model_config

    train = ["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(tmp_path / "eps")]
    assert main([*train, *TINY, "--steps", "2"]) == 0
    BaselineVAE(
        apply_overrides(model_config("vae-fmnist"), ["encoder.channels=4", "decoder.channels=4"])
    ).save_pretrained(tmp_path / "vae")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speckle.py"), "--limit", "8", "--raw", "--out", str(tmp_path / "s"),
         "--models", f"eps={tmp_path / 'eps'},vae={tmp_path / 'vae'}",
         "--decode-steps", "1,3", "--grids", "uniform,reversed-log,1:0.5:0.1:0", "--temperatures", "1,0.5",
         "--figure", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the figure: the originals, then one row per measured setting (16 ε-VAE, 1 VAE), 3 images each,
    # at twice the size (32 px + 2 px padding); black stays black, 1/255 above it is lifted to 28/255
    from PIL import Image

    figure = Image.open(tmp_path / "s" / "speckle.png")
    assert figure.size == (2 * (3 * 34 + 2), 2 * (18 * 34 + 2))
    shown = display_curve(torch.tensor([-1.0, -1 + 2 / 255, 1.0]), 0.4)
    assert ((shown + 1) * 127.5).round().tolist() == [0, 28, 255]
    rows = json.loads((tmp_path / "s" / "speckle.json").read_text())["rows"]
    eps = [(r["weights"], r["grid"], r["steps"]) for r in rows if r["model"] == "eps"]
    # one step is the same on every named grid: decoded on the first only
    assert eps[:4] == [
        ("ema", "uniform", 1), ("ema", "uniform", 3), ("ema", "reversed-log", 3), ("ema", "1:0.5:0.1:0", 3)
    ]  # fmt: skip
    assert len(eps) == 16 and eps[8:] == [("raw", *e[1:]) for e in eps[:8]]
    assert [r["temperature"] for r in rows[:8]] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]
    assert all(r["fd_indep"] >= 0 for r in rows)
    vae = [r for r in rows if r["model"] == "vae"]
    assert len(vae) == 1 and "seed_std" not in vae[0] and vae[0]["flat_pixels"] > 0
    # the largest square (label 9) is 22 px: at least the 32x32 frame minus the 26x26 around it is flat
    assert all(r["flat_pixels"] >= 8 * (32**2 - 26**2) and r["flat_std"] >= 0 and r["psnr"] > 0 for r in rows)


def test_speckle_figure_refuses_models_of_other_sizes(fmnist, tmp_path):
    """--figure puts every model in one image: a second model at another size is a clear error; a model
    the data does not fit (a 16 px model on 32 px Fashion-MNIST) or a missing one names itself, not a traceback."""
    from epsvae import BaselineVAE
    from epsvae.config import apply_overrides
    from epsvae.presets import model_config

    from helpers import write_photo_folder

    folder = write_photo_folder(tmp_path / "photos", n=12)
    # the pool head: vae-fmnist's StyleGAN head needs 32 px (unused here: speckle.py only decodes)
    small = ["encoder.channels=4", "decoder.channels=4", "image_channels=3", "discriminator.head=pool"]
    for size in (16, 32):
        BaselineVAE(apply_overrides(model_config("vae-fmnist"), [*small, f"image_size={size}"])).save_pretrained(
            tmp_path / f"vae{size}"
        )
    script = [sys.executable, str(ROOT / "benchmarks" / "speckle.py"), "--no-fd", "--out", str(tmp_path / "s")]
    models = f"a={tmp_path / 'vae32'},b={tmp_path / 'vae16'}"
    proc = subprocess.run(
        [*script, "--data", f"folder:{folder}?holdout=0.5", "--models", models, "--figure", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--figure puts every model in one image: b decodes (3, 16, 16)" in proc.stderr
    assert not (tmp_path / "s" / "speckle.png").exists()
    proc = subprocess.run([*script, "--models", f"b={tmp_path / 'vae16'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("b: ") and "32x32" in proc.stderr
    proc = subprocess.run([*script, "--models", f"c={tmp_path / 'none'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("c: ") and "not an epsvae model directory" in proc.stderr


def test_border_profile_and_script(fmnist, tmp_path):
    """The error profile reads back a known border error (ring by ring, per side, the ratio and the
    clamped share); the script measures an ε-VAE with reflect padding and a VAE on photos; a margin
    that leaves no interior or a missing model is one line, not a traceback."""
    import torch

    from epsvae import BaselineVAE, EpsilonVAE
    from epsvae.config import apply_overrides
    from epsvae.presets import model_config

    from helpers import write_photo_folder

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from border import border_profile, edge_distance, mean_profiles

    assert edge_distance(5, 6).tolist()[2] == [0, 1, 2, 2, 1, 0] and edge_distance(5, 6)[:, 0].sum() == 0
    x = torch.zeros(2, 3, 12, 12)
    y = x + 0.1
    y[..., -1, :] = y[..., :, 0] = y[..., :, -1] = 0.2  # the outer ring errs 2x the inside,
    y[..., 0, :] = 0.4  # its top row 4x
    y[..., 1, 1:-1] = 0.3  # and one ring in, its top row only: 0.3 on 10 of ring 1's 36 pixels
    y[..., 5, 5] = 1.5  # one decoded value clamped at 1: saturated inside, its error counted as 1
    p = border_profile(y, x, 2)
    ring0 = (12 * 0.4 + 32 * 0.2) / 44
    assert p["ring"][0] == pytest.approx(ring0) and p["ring"][1] == pytest.approx((10 * 0.3 + 26 * 0.1) / 36)
    assert p["interior"] == pytest.approx((63 * 0.1 + 1) / 64)
    assert p["edge_ratio"] == pytest.approx(ring0 / p["interior"])
    assert p["sides"]["top"] == pytest.approx(0.4) and p["sides"]["left"] == pytest.approx((0.4 + 0.2 * 11) / 12)
    assert p["saturated_edge"] == 0 and p["saturated_interior"] == pytest.approx(1 / 64)
    assert p["original_saturated"] == 0
    twice = mean_profiles([p, border_profile(x + 0.1, x, 2)])
    assert twice["ring"][0] == pytest.approx((ring0 + 0.1) / 2) and twice["sides"]["top"] == pytest.approx(0.25)
    assert twice["edge_ratio"] == pytest.approx(twice["ring"][0] / twice["interior"])
    with pytest.raises(ValueError, match="leave an interior in 12x12"):
        border_profile(y, x, 6)

    folder = write_photo_folder(tmp_path / "photos", n=12)
    small = ["encoder.channels=4", "decoder.channels=4", "decoder.head_channels=4", "image_channels=3",
             "discriminator.head=pool", "image_size=16"]  # fmt: skip
    EpsilonVAE(apply_overrides(model_config("eps-fmnist"), [*small, "decoder.padding_mode=reflect"])).save_pretrained(
        tmp_path / "eps"
    )
    BaselineVAE(apply_overrides(model_config("vae-fmnist"), small)).save_pretrained(tmp_path / "vae")
    script = [sys.executable, str(ROOT / "benchmarks" / "border.py"), "--data", f"folder:{folder}?holdout=0.5",
              "--out", str(tmp_path / "b")]  # fmt: skip
    proc = subprocess.run(
        [*script, "--models", f"eps={tmp_path / 'eps'},vae={tmp_path / 'vae'}", "--decode-steps", "1,2",
         "--seeds", "0,1", "--limit", "6", "--margin", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "b" / "border.json").read_text())["rows"]
    assert [(r["model"], r["steps"], r["padding_mode"]) for r in rows] == [
        ("eps", 1, "reflect"), ("eps", 2, "reflect"), ("vae", None, "zeros")
    ]  # fmt: skip
    assert all(len(r["ring"]) == 3 and r["interior"] > 0 and r["n_images"] == 6 for r in rows)
    assert rows[0]["seeds"] == [0, 1] and rows[2]["seeds"] is None
    for args, message in (
        (["--models", f"eps={tmp_path / 'eps'}", "--margin", "8"], "leave an interior in 16x16"),
        (["--models", f"c={tmp_path / 'none'}"], "c: "),
    ):
        proc = subprocess.run([*script, *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert message in proc.stderr


def test_recipe_quick(fmnist, tmp_path):
    """Variants over training seeds: one run per seed (the seed is part of the run's key), every grid
    evaluated, summaries with the mean and half-range over seeds."""
    result = _quick("recipe", tmp_path / "r", "--variants", "vae,disc-patch", "--grids", "uniform,reversed-log")
    rows = result["rows"]
    assert [(r["variant"], r["train_seed"], r["grid"]) for r in rows] == [
        ("vae", 0, None), ("vae", 1, None),
        ("disc-patch", 0, "uniform"), ("disc-patch", 1, "uniform"),
        ("disc-patch", 0, "reversed-log"), ("disc-patch", 1, "reversed-log"),
    ]  # fmt: skip
    assert rows[2]["run"] != rows[3]["run"] and rows[2]["run"] == rows[4]["run"]
    # one step (t = 1 to 0) is grid-independent: decoded on the first grid only
    assert [list(r["eval"]["results"]) for r in rows[2:]] == [["1", "3"], ["1", "3"], ["3"], ["3"]]
    summary = {(s["variant"], s["grid"]): s["results"] for s in result["summary"]}
    psnr = summary[("disc-patch", "uniform")]["3"]["psnr"]
    assert psnr["per_seed"] == [
        rows[2]["eval"]["results"]["3"]["psnr"]["mean"],
        rows[3]["eval"]["results"]["3"]["psnr"]["mean"],
    ]
    assert psnr["mean"] == pytest.approx(sum(psnr["per_seed"]) / 2)
    assert psnr["half_range"] == pytest.approx(abs(psnr["per_seed"][0] - psnr["per_seed"][1]) / 2)
    table = (tmp_path / "r" / "recipe.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| disc-patch") or line.startswith("| vae")]
    assert [line.split(" | ")[1:4] for line in body] == [
        ["-", "-", "2"], ["uniform", "1", "2"], ["uniform", "3", "2"], ["reversed-log", "3", "2"]
    ]  # fmt: skip
    fd = summary[("disc-patch", "uniform")]["3"]["fd_indep"]
    vae_fd = summary[("vae", None)]["deterministic"]["fd_indep"]["mean"]
    assert f"| {fd['mean'] / vae_fd:.2f} | {fd['per_seed'][0]:.4f}, {fd['per_seed'][1]:.4f} |" in body[2]
    # the second independent network beside it, with its own ratio to the VAE's
    fd2 = summary[("disc-patch", "uniform")]["3"]["fd_indep2"]
    vae_fd2 = summary[("vae", None)]["deterministic"]["fd_indep2"]["mean"]
    assert (
        fd2["mean"] != fd["mean"]
        and f"| {fd2['mean']:.4f} ± {fd2['half_range']:.4f} | {fd2['mean'] / vae_fd2:.2f} |" in body[2]
    )
    nets = rows[2]["eval"]["fd_networks"]
    assert list(nets) == ["fd_indep", "fd_indep2", "fd_domain"] and len(set(nets.values())) == 3


def test_recipe_trained_only(fmnist, tmp_path):
    """--trained-only evaluates the finished (variant, seed) runs, lists the others and trains nothing."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recipe.py"), "--quick", "--out", str(tmp_path / "r"),
         "--variants", "vae", "--train-seeds", "0", "--train-only"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "runs").iterdir())) == 1
    result = _quick("recipe", tmp_path / "r", "--variants", "vae,base", "--train-seeds", "0,1", "--trained-only")
    assert [(r["variant"], r["train_seed"]) for r in result["rows"]] == [("vae", 0)]
    assert result["not_trained"] == ["vae s1", "base s0", "base s1"]  # the last variant's too
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing trained, no run directory made
    table = (tmp_path / "r" / "recipe.md").read_text()
    assert "Not trained yet, left out: vae s1, base s0, base s1." in table
    psnr = result["rows"][0]["eval"]["results"]["deterministic"]["psnr"]["mean"]
    assert f"| vae | - | - | 1 | {psnr:.2f} | " in table  # one seed: the mean, no spread


def test_recipe_jobs_trains_runs_in_parallel_processes(fmnist, tmp_path):
    """--jobs trains each unfinished (variant, seed) run in its own process (one log each), then
    evaluates them all as one table; a run that fails to train is named and the exit code says so."""
    result = _quick("recipe", tmp_path / "r", "--variants", "vae,base", "--train-seeds", "0,1", "--jobs", "3")
    assert [(r["variant"], r["train_seed"], r["grid"]) for r in result["rows"]] == [
        ("vae", 0, None), ("vae", 1, None), ("base", 0, "reversed-log"), ("base", 1, "reversed-log"),
        ("base", 0, "uniform"), ("base", 1, "uniform"),
    ]  # fmt: skip
    assert "failed" not in result and "not_trained" not in result
    logs = sorted(p.name for p in (tmp_path / "r" / "logs").iterdir())
    assert logs == ["base-s0.log", "base-s1.log", "vae-s0.log", "vae-s1.log"]
    assert "trained:" in (tmp_path / "r" / "logs" / "vae-s1.log").read_text()
    assert len(list((tmp_path / "runs").iterdir())) == 4

    def recipe(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "recipe.py"), "--quick", "--out", str(tmp_path / "r2"),
             "--runs", str(tmp_path / "runs"), "--train-seeds", "0", "--jobs", "2", *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    # a bad --set is named before anything trains
    proc = recipe("--variants", "vae", "--set", "train.loss.adv_ramp=-1")
    assert proc.returncode != 0 and "adv_ramp must be at least 0, got -1" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r2" / "logs").exists()
    # finished runs are not trained again; a run whose training fails is named, with its log
    for run in (tmp_path / "runs").iterdir():
        if json.loads((run / "config.json").read_text()).get("preset") == "eps-fmnist":
            (run / "final.json").unlink()  # not finished: trained again
            (run / "config.json").write_text("{")  # and unreadable: its training fails
    proc = recipe("--variants", "vae,base")
    assert proc.returncode != 0 and "1 run(s) failed to train: base s0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "r2" / "logs").iterdir()) == ["base-s0.log"]  # vae s0 was finished
    assert "Traceback" not in (tmp_path / "r2" / "logs" / "base-s0.log").read_text()


def test_distill_quick(fmnist, tmp_path):
    """The distillation benchmark trains a student of a trained run and reports teacher (1 and 3
    steps) and student (1 step) rows."""
    from epsvae.cli import main

    from helpers import TINY

    teacher = tmp_path / "teacher"
    assert (
        main(
            ["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(teacher), *TINY, "--steps", "2"]
        )
        == 0
    )
    result = _quick("distill", tmp_path / "d", "--teacher", str(teacher))
    rows = result["rows"]
    assert [(r["arm"], list(r["eval"]["results"])) for r in rows] == [
        ("teacher", ["1", "3"]), ("student (distilled)", ["1"])
    ]  # fmt: skip
    assert json.loads((tmp_path / "d" / "student" / "model" / "config.json").read_text())["flow"]["steps"] == 1


def test_run_cache_keys_survive_new_config_keys():
    """Runs trained before a config key existed stay found: keys added later are left out of the
    digest at their defaults (a new key missing from LATER_KEYS changes these pinned names; a
    changed preset recipe should, and then the pins move with it)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import PAPER_RECIPE, POOL_DISC, STYLEGAN_DISC, run_dir

    runs = Path("runs")
    # the paper's recipe (eps-fmnist's default until 2026-11-29), pinned by the studies of it
    assert run_dir(runs, "eps-fmnist", PAPER_RECIPE, None).name == "eps-fmnist-53b73ce8bf"
    # the VAE as the studies measured it (the pool head, its default until 2026-12-07)
    assert run_dir(runs, "vae-fmnist", POOL_DISC, None).name == "vae-fmnist-7e37b0cf4d"
    assert run_dir(runs, "vae-fmnist", PAPER_RECIPE, None).name == "vae-fmnist-7e37b0cf4d"  # the VAE's own
    assert run_dir(runs, "vae-fmnist", [*POOL_DISC, "train.seed=1"], None).name == "vae-fmnist-7dc42abf54"
    # the VAE today takes eps-fmnist's StyleGAN head: its seeds are `vae-disc-stylegan`'s
    assert run_dir(runs, "vae-fmnist", [], None).name == run_dir(runs, "vae-fmnist", STYLEGAN_DISC, None).name
    assert run_dir(runs, "vae-fmnist", [], None).name == "vae-fmnist-fec03eb845"
    assert run_dir(runs, "vae-fmnist", ["train.seed=1"], None).name == "vae-fmnist-f9b3d7291c"
    assert run_dir(runs, "eps-fmnist", [*PAPER_RECIPE, "train.seed=0"], None).name == "eps-fmnist-53b73ce8bf"
    assert run_dir(runs, "eps-fmnist", [*PAPER_RECIPE, "model.flow.t_grid_mix=0.3"], None).name == (
        "eps-fmnist-612b265e47"
    )
    # the preset until 2026-12-06 is the recipe study's `pweight01`: its trained seeds are
    # `preset-disc-pool`'s
    ours = [*PAPER_RECIPE, "train.loss.perceptual_weight=0.1"]
    assert run_dir(runs, "eps-fmnist", POOL_DISC, None).name == run_dir(runs, "eps-fmnist", ours, None).name
    assert run_dir(runs, "eps-fmnist", POOL_DISC, None).name == "eps-fmnist-7bcf0e8056"
    assert run_dir(runs, "eps-fmnist", [*POOL_DISC, "train.seed=1"], None).name == "eps-fmnist-b40871d9f3"
    # the preset today adds the StyleGAN discriminator head: its seeds are `preset-disc-stylegan`'s
    stylegan = [*ours, *STYLEGAN_DISC]
    assert run_dir(runs, "eps-fmnist", [], None).name == run_dir(runs, "eps-fmnist", stylegan, None).name
    assert run_dir(runs, "eps-fmnist", [], None).name == "eps-fmnist-8ab99927e5"
    assert run_dir(runs, "eps-fmnist", ["train.seed=1"], None).name == "eps-fmnist-f956990db8"
    # the shifted training t on it (`preset-t-shift`, 2026-12-08): the runs its docs rows name
    assert run_dir(runs, "eps-fmnist", ["model.flow.t_mean=0.8"], None).name == "eps-fmnist-df6df9922f"
    assert run_dir(runs, "eps-fmnist", ["model.flow.t_mean=0.8", "train.seed=1"], None).name == (
        "eps-fmnist-8cab46c90d"
    )
    # half that shift (`preset-t-shift-04`, 2026-12-08)
    assert run_dir(runs, "eps-fmnist", ["model.flow.t_mean=0.4"], None).name == "eps-fmnist-5ffd30a2eb"
    assert run_dir(runs, "eps-fmnist", ["model.flow.t_mean=0.4", "train.seed=1"], None).name == (
        "eps-fmnist-aaa041f981"
    )
    # a shift above 0.8 (`preset-t-shift-12`, 2026-12-08)
    assert run_dir(runs, "eps-fmnist", ["model.flow.t_mean=1.2"], None).name == "eps-fmnist-d06375382b"
    assert run_dir(runs, "eps-fmnist", ["model.flow.t_mean=1.2", "train.seed=1"], None).name == (
        "eps-fmnist-b4eeea084b"
    )


def test_eval_key_ignores_presets_but_not_other_source(tmp_path, monkeypatch):
    """A kept evaluation depends on the package's source but presets.py: a changed preset default
    only changes what new runs train, not how an exported model evaluates."""
    import shutil

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _common

    fake = tmp_path / "benchmarks" / "_common.py"
    src = tmp_path / "src" / "epsvae"
    shutil.copytree(ROOT / "src" / "epsvae", src, ignore=shutil.ignore_patterns("__pycache__"))
    fake.parent.mkdir()
    monkeypatch.setattr(_common, "__file__", str(fake))

    def digest() -> str:
        _common.source_digest.cache_clear()
        return _common.source_digest()

    first = digest()
    (src / "presets.py").write_text((src / "presets.py").read_text() + "\n# another default\n")
    assert digest() == first
    (src / "flow.py").write_text((src / "flow.py").read_text() + "\n# another decoder\n")
    assert digest() != first
    _common.source_digest.cache_clear()


def test_finished_arm_is_read_back_not_reopened(fmnist, tmp_path, monkeypatch):
    """An arm whose run finished and exported its model is read back without the trainer (which
    would print "resuming ... at step N" for a run it has nothing left to do on); one whose export
    is missing or older than its final step goes through the trainer again, which exports it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _common

    run, _, seconds, step = _common.train_arm(tmp_path, "eps-fmnist", [], None, quick=True)
    assert step == 3 and _common._finished(run)
    calls = []
    monkeypatch.setattr(_common, "train", lambda run, cfg, progress: calls.append(run))
    again = _common.train_arm(tmp_path, "eps-fmnist", [], None, quick=True)
    assert (again[0], again[2], again[3]) == (run, seconds, step)
    assert calls == []
    model_cfg = run / "model" / "config.json"
    model_cfg.write_text(json.dumps({**json.loads(model_cfg.read_text()), "_step": 2}))  # an older export
    assert not _common._finished(run)
    _common.train_arm(tmp_path, "eps-fmnist", [], None, quick=True)
    assert calls == [run]
    model_cfg.unlink()
    assert not _common._finished(run)


def test_interrupted_arm_exits_with_the_signal_code_not_a_traceback(tmp_path, monkeypatch, capsys):
    """SIGTERM during a benchmark's training: the checkpoint is written by the engine; the script
    says where and exits 128 + signal, as `epsvae train` does."""
    import signal

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _common

    from epsvae.engine import RunInterrupted

    def stopped(run, cfg, progress):
        raise RunInterrupted(signal.SIGTERM, 7, run / "checkpoint.pt")

    monkeypatch.setattr(_common, "train", stopped)
    with pytest.raises(SystemExit) as exc:
        _common.train_arm(tmp_path, "eps-fmnist", [], 10, quick=True)
    assert exc.value.code == 128 + signal.SIGTERM
    assert "SIGTERM at step 7" in capsys.readouterr().err


def test_x0_by_t_separates_the_oracle_from_the_decode_path(fmnist, tmp_path):
    """Oracle and path estimates agree at t = 1 (both from pure noise); each grid's path ends at its last
    non-zero point, whose estimate is the decode (the script checks it against model.decode); the
    matched grid follows the model's training shift; a VAE is refused with one line naming it."""
    from epsvae import BaselineVAE
    from epsvae.cli import main
    from epsvae.config import apply_overrides
    from epsvae.presets import model_config

    from helpers import TINY

    train = ["train", "--preset", "eps-fmnist", "--data", "fashion-mnist", "--out", str(tmp_path / "eps")]
    assert main([*train, *TINY, "--set", "model.flow.t_mean=0.8", "--steps", "2"]) == 0
    script = [sys.executable, str(ROOT / "benchmarks" / "x0_by_t.py"), "--limit", "8", "--batch", "4"]
    proc = subprocess.run(
        [*script, "--models", f"eps={tmp_path / 'eps'}", "--ts", "1,0.5", "--seeds", "0,1",
         "--grids", "reversed-log,uniform,matched", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "x" / "x0_by_t.json").read_text())
    rows = {(r["kind"], r["grid"], r["t"]): r for r in result["rows"]}
    assert set(rows) == {
        ("oracle", "-", 1.0), ("oracle", "-", 0.5),
        ("path", "reversed-log", 1.0), ("path", "reversed-log", 0.913), ("path", "reversed-log", 0.7657),
        ("path", "uniform", 1.0), ("path", "uniform", 0.6667), ("path", "uniform", 0.3333),
        ("path", "matched", 1.0), ("path", "matched", 0.8166), ("path", "matched", 0.5267),
    }  # fmt: skip
    for grid in ("reversed-log", "uniform", "matched"):
        for key in ("psnr", "ssim", "fd_indep", "fd_indep2"):
            assert rows[("path", grid, 1.0)][key] == pytest.approx(rows[("oracle", "-", 1.0)][key], rel=1e-5)
    assert all(len(r["per_seed"]) == 2 and r["n_images"] == 8 and r["fd_indep2"] >= 0 for r in rows.values())
    assert all(r["hf_ratio"] > 0 and r["hf_error"] > 0 for r in rows.values())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from x0_by_t import hf_energy

    x = torch.randn(2, 1, 16, 16)  # white noise: about 1 - pi/16 of its energy lies above 0.25 cycles/pixel
    assert hf_energy(x) / hf_energy(x, cutoff=0.0) == pytest.approx(1 - 3.14159 / 16, abs=0.08)
    flat = torch.ones(2, 1, 16, 16)
    assert hf_energy(flat) == pytest.approx(0.0, abs=1e-6)  # a constant has no fine-scale energy
    assert result["decode_check_max_abs"]["eps"] < 1e-3
    BaselineVAE(
        apply_overrides(model_config("vae-fmnist"), ["encoder.channels=4", "decoder.channels=4"])
    ).save_pretrained(tmp_path / "vae")
    proc = subprocess.run([*script, "--models", f"v={tmp_path / 'vae'}", "--out", str(tmp_path / "y")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "v: " in proc.stderr and "ε-VAE" in proc.stderr and "Traceback" not in proc.stderr
