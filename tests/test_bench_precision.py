"""bench/precision.py, run as a person runs it, on the shipped model and primers (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_precision_bench_scores_both_precisions_on_the_shipped_primers():
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
