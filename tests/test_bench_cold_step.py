"""bench/cold_step.py, run as a person runs it, at a short context (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")
from perceiver_music import native_step  # noqa: E402

needs_native = pytest.mark.skipif(native_step.cpu_reason() is not None or native_step.compiler() is None,
                                  reason="the native step needs x86-64 with AVX2, FMA and F16C, and a C compiler")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/cold_step.py", "--threads", "1", "--context", "640", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@needs_native
def test_cold_step_times_each_way_at_1_row_and_4_variations():
    proc = run("--latents", "100", "--rounds", "2", "--singles", "1", "--burst", "2", "--evict", "1,3")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["context"] == 640 and report["latents_read"] == 100 and report["threads"] == 1
    ways = ["burst", "warm", "after 1 MB", "after 3 MB"]
    assert list(report["ms_median"]) == ways
    for way in ways:
        assert report["ms_median"][way]["1_rows"] > 0 and report["ms_median"][way]["4_rows"] > 0
        low, median, high = report["4_variations_over_1_row_by_round"][way]
        assert 0 < low <= median <= high
        assert len(report["each_row_adds_ms_by_round"][way]) == 3


def test_cold_step_refuses_a_bad_eviction_list():
    proc = run("--evict", "8,lots")
    assert proc.returncode == 2 and "--evict" in proc.stderr
    assert run("--evict", "0").returncode == 2
