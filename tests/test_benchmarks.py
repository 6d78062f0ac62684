"""The prepared GPU benchmark runs end to end on the CPU (its smoke mode), as CI checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PYTHON": sys.executable,
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "VITAL_CACHE": str(tmp_path / "cache"),
        },  # fmt: skip
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 1 |")]
    assert rows and len(rows[0].split("|")) == 13  # batch, 10 figures, peak memory
    assert "Mining (stage 1" in result.stdout
