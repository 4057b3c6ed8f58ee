"""bench/sampler_threads.py, run as a person runs it, on a tiny model (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def test_sampler_threads_times_both_modes_and_they_draw_the_same_ids(random_checkpoint):
    proc = subprocess.run([sys.executable, "bench/sampler_threads.py", "--checkpoint", str(random_checkpoint),
                           "--threads", "2", "--rounds", "2", "--new-tokens", "40", "--variations", "1,2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "onnx" and report["rounds"] == 2 and report["new_tokens_per_variation"] == 40
    assert set(report["spin_cpu_ms_in_50ms_after_sample_next"]) == {"one_thread", "torch_threads"}
    for mode in report["spin_cpu_ms_in_50ms_after_sample_next"].values():
        assert set(mode) == {"1", "2"} and all(ms >= 0 for ms in mode.values())
    assert set(report["generate"]) == {"1", "2"}
    for entry in report["generate"].values():
        assert entry["ms_per_id_one_thread"] > 0 and entry["ms_per_id_torch_threads"] > 0
        assert len(entry["per_round_ratio"]) == 2
        assert entry["same_ids"] is True
