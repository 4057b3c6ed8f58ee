"""bench/greedy_side_by_side.py, run as a person runs it, on a tiny model (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def test_greedy_side_by_side_compares_both_runtimes_with_the_float32_reference(random_checkpoint):
    proc = subprocess.run([sys.executable, "bench/greedy_side_by_side.py", "--checkpoint", str(random_checkpoint),
                           "--threads", "1", "--limit", "2", "--new-tokens", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["primers_run"] == 2 and report["new_tokens"] == 60
    settings = report["settings"]
    from perceiver_music import native_step

    native = "+native-step" if native_step.cpu_reason() is None and native_step.compiler() else ""
    assert {name: s["runtime"] for name, s in settings.items()} == {
        "torch-float32": "eager", "onnx-float32": "onnx-float32" + native, "torch-auto": "eager-float16",
        "onnx-auto": "onnx-int8" + native}
    # float32 on the compiled step is exact: the same greedy ids as the eager reference
    assert settings["onnx-float32"]["primers_with_the_reference_ids"] == 2
    for primer in report["primers"].values():
        for entry in primer.values():
            if isinstance(entry, dict):
                assert entry["new_tokens"] == 60 and entry["tokens_per_s"] > 0
                assert entry["same_ids_as_reference"] == (entry["first_difference"] is None)


def test_first_difference():
    sys.path.insert(0, str(REPO / "bench"))
    from greedy_side_by_side import first_difference

    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
