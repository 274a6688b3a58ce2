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


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu(fmnist, tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--budget-s", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["flops_per_step"] > 0 and run["images_per_s"] > 0 and result["engine_check"]["exported"]
