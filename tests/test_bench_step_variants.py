"""bench/step_variants.py, run as a person runs it, on a tiny model (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def test_step_variants_times_each_variant_against_the_shipped_step(random_checkpoint):
    proc = subprocess.run([sys.executable, "bench/step_variants.py", "--checkpoint", str(random_checkpoint),
                           "--threads", "1", "--rounds", "2", "--burst", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["context"] == 512 and report["rounds"] == 2
    variants = report["variants"]
    try:
        import onnx_ir  # noqa: F401
        assert set(variants) == {"int8", "int8-latent-float16", "int4", "int8-blocks"} and report["skipped"] == {}
    except ImportError:
        assert set(variants) == {"int8", "int8-latent-float16", "int8-blocks"} and "onnx_ir" in report["skipped"]["int4"]
    assert variants["int8"]["batch1_over_int8"] == 1.0 and variants["int8"]["4_variations_over_int8"] == 1.0
    for entry in variants.values():
        for case in ("batch1", "4_variations"):
            assert entry[f"{case}_step_ms"] > 0 and entry[f"{case}_over_int8"] > 0
            assert 0.0 <= entry[f"{case}_next_id_total_variation_vs_float32"] <= 1.0
        assert entry["4_variations_over_batch1_step"] > 0
    # Float16 latent caches change what the step computes by float16 rounding only.
    for case in ("batch1", "4_variations"):
        tv = [variants[v][f"{case}_next_id_total_variation_vs_float32"] for v in ("int8", "int8-latent-float16")]
        assert abs(tv[0] - tv[1]) < 0.01
    # 8-bit block codes dequantise to the float32 weights: the step computes nearly the same
    # distribution (a wrong code layout or scale would move it far).
    for case in ("batch1", "4_variations"):
        assert variants["int8-blocks"][f"{case}_next_id_total_variation_vs_float32"] < 0.05
