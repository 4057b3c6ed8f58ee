"""bench/precision.py, run as a person runs it, on the shipped model and primers (a short run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_precision_bench_scores_every_variant_on_the_shipped_primers():
    proc = subprocess.run([sys.executable, "bench/precision.py", "--works", "1", "--score", "40", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["works"] == 1 and report["scored_ids"] == 40
    nll = report["nll"]
    assert 0.0 < nll["float32"] < 5.0  # the trained model, far below uniform (5.97)
    assert abs(nll["low_precision"] - nll["float32"]) < 0.01
    assert 0.0 <= report["total_variation"]["mean"] < 0.01 and report["same_most_likely_id"] > 0.9
    assert report["step_ms"]["float32"] > 0 and report["step_ms"]["low_precision"] > 0
    vs = report["vs_float32"]
    assert vs["low_precision"]["total_variation"] == report["total_variation"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        assert set(vs) == {"low_precision"}
        return
    # the compiled step: float32 the same distributions; int8 weights close
    assert vs["onnx-float32"]["total_variation"]["max"] < 1e-4 and abs(vs["onnx-float32"]["nll_minus_float32"]) < 1e-4
    assert vs["onnx-int8"]["passes_0.01_nats"] and vs["onnx-int8"]["same_most_likely_id"] > 0.9


def test_a_saved_reference_scores_the_variants_as_the_float32_run_did(tmp_path):
    """--reference (the AVX2 stand-in under valgrind decodes only the variants) gives the NLLs of
    a run that computed float32 itself; a reference of another run's length is refused at once."""
    saved = tmp_path / "reference.npy"

    def run(score: int, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "bench/precision.py", "--works", "1", "--score", str(score),
                               "--threads", "1", "--variants", "low_precision", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    first = run(30, "--save-reference", str(saved))
    assert first.returncode == 0, first.stderr
    again = run(30, "--reference", str(saved))
    assert again.returncode == 0, again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["nll"] == b["nll"] and a["vs_float32"] == b["vs_float32"]
    assert "float32" not in b["step_ms"]  # float32 was not decoded
    for score in (20, 40):
        other = run(score, "--reference", str(saved))
        assert other.returncode != 0 and f"holds 30 positions, this run scores {score}" in other.stderr
        assert "Traceback" not in other.stderr


@pytest.mark.skipif(shutil.which("gcc") is None or "avx2" not in Path("/proc/cpuinfo").read_text(),
                    reason="the native step needs gcc and an AVX2 CPU")
def test_the_native_int8_step_and_onnxruntimes_are_both_scored():
    pytest.importorskip("onnxruntime")
    proc = subprocess.run([sys.executable, "bench/precision.py", "--works", "1", "--score", "40", "--threads", "2",
                           "--variants", "onnx-int8,onnxruntime-step-int8"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    vs = json.loads(proc.stdout)["vs_float32"]
    assert vs["onnx-int8"]["step_kernels"] == "native"
    assert vs["onnxruntime-step-int8"]["step_kernels"] == "onnxruntime"
    for row in vs.values():
        assert row["passes_0.01_nats"] and row["same_most_likely_id"] > 0.9 and row["total_variation"]["mean"] < 0.05
