"""Benchmarks run end to end with tiny sizes on the CPU, so a change that breaks one shows in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.mark.slow
def test_atlas_slice_benchmark_runs_end_to_end(tmp_path):
    """The laptop-CPU throughput benchmark runs from mining to pages (it once broke unseen)."""
    data = tmp_path / "photos"
    data.mkdir()
    for number in range(3):
        pixels = np.random.default_rng(number).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{number}.png")
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "atlas_slice.py"), "--channels", "1",
            "--steps", "2", "--batch", "1", "--mine-slice", "--data", str(data),
            "--work", str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "VITAL_CACHE": str(tmp_path / "c")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 finished, 0 failed" in result.stdout
    assert "channels per minute" in result.stdout
    assert (tmp_path / "work" / "atlas" / "index.html").exists()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--ratio", "--before", "no-such-checkout/src"], "holds no vital package"),
        (["--ratio", "--steps", "0"], "--steps is a count"),
        (["--ratio", "--threads", "0"], "--threads"),
    ],
)
def test_speed_benchmark_refuses_bad_options_in_one_line(arguments, named):
    """A --before without the package would time this tree and call it "before"."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
