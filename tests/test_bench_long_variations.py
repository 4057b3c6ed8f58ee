"""bench/long_variations.py, run as a person runs it, at a short context (a short run)."""

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


@needs_native
def test_long_variations_follows_the_primer_sliding_out():
    proc = subprocess.run([sys.executable, "bench/long_variations.py", "--threads", "1", "--context", "640",
                           "--checkpoints", "100", "400", "--rounds", "1", "--burst", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["context"] == 640 and report["threads"] == 1 and report["rounds"] == 1
    points = report["points"]
    assert [p["ids_generated"] for p in points] == [100, 400]
    for p in points:
        # a full window: the primer's inputs it still holds, and each variation's own
        assert p["shared_slots_held"] + p["own_slots"] == 640
        assert p["own_slots"] == p["ids_generated"] and p["shared_slots_ever_written"] == 639
        assert all(ms > 0 for ms in p["step_ms"].values()) and all(ms > 0 for ms in p["latents_graph_ms"].values())
        assert p["step_now_over_before"]["median"] > 0 and p["latents_graph_now_over_before"]["median"] > 0
    assert points[1]["shared_slots_held"] < points[0]["shared_slots_held"]
