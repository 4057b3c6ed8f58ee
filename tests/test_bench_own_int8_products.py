"""bench/own_int8_products.py, run as a person runs it: its AVX2 kernels compute the step's
weight products as the integer arithmetic they emulate, near float32, and are timed against
onnxruntime's in the same run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or "avx2" not in Path("/proc/cpuinfo").read_text(),
                                reason="needs gcc and an AVX2 CPU")


@pytest.mark.parametrize("threads", [1, 2])
def test_own_kernels_match_their_emulation_and_are_timed_beside_onnxruntime(threads):
    proc = subprocess.run([sys.executable, "bench/own_int8_products.py", "--threads", str(threads), "--repeats", "2",
                           "--context", "512"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["threads"] == threads and report["products"] == 30
    # d = 384: 98 d^2 + 391 d weights in the step's products (as bench/id_anatomy.py counts them)
    assert report["weights"] == 98 * 384**2 + 391 * 384
    # Bytes in the wrong order or a column half left to the worker would be far off.
    assert report["correctness"]["max_error_vs_emulation"] < 1e-5
    assert report["correctness"]["max_relative_error_vs_float32"] < 0.03
    timed = report["ms_per_step_of_products"]
    assert set(timed) == {"own_avx2_int8", "onnxruntime_int8", "onnxruntime_float32"} and min(timed.values()) > 0
