"""bench/variation_prefill.py, run as a person runs it, on a tiny model (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def test_variation_prefill_times_one_row_against_every_row(random_checkpoint):
    proc = subprocess.run([sys.executable, "bench/variation_prefill.py", "--checkpoint", str(random_checkpoint),
                           "--threads", "1", "--rounds", "2", "--rows", "1,3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["context"] == 512 and report["rounds"] == 2 and report["precision"] == "int8"
    assert 0 < report["primer_ids"] <= 512
    assert set(report["variations"]) == {"1", "3"}
    for entry in report["variations"].values():
        assert entry["prefill_ms_once"] > 0 and entry["prefill_ms_every_row"] > 0 and entry["every_row_over_once"] > 0
        # one row broadcast computes what every row computes
        assert entry["logits_max_abs_difference"] < 1e-4
