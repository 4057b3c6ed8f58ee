"""bench/id_anatomy.py, run as a person runs it, at a short context (a short run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")


def test_id_anatomy_splits_an_id_and_gives_the_bounds():
    proc = subprocess.run([sys.executable, "bench/id_anatomy.py", "--threads", "1", "--context", "640",
                           "--new-tokens", "30", "--rounds", "1", "--repeats", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["context"] == 640 and report["threads"] == 1
    sizes = report["step_bytes_mb"]
    # 640 inputs x 384 wide x (K, V) x float32; the default model's 6 layers x 512 latents
    assert sizes["cross_kv"] == round(2 * 640 * 384 * 4 / 2**20, 2)
    assert sizes["latent_kv"] == round(2 * 6 * 512 * 384 * 4 / 2**20, 2)
    # the native step's int8 codes: a byte a value and a 4-byte scale per head (64 dims) and slot
    assert sizes["latent_kv_int8"] == round(2 * 6 * 512 * 384 * (1 + 4 / 64) / 2**20, 2)
    assert sizes["total_native_step"] < sizes["total"]
    assert 0 < report["native_step_step_bytes_at_step_sized_rate_ms"] < report["step_bytes_at_step_sized_rate_ms"]
    # the weight products timed are the step graph's own (d = 384): cross-attend q with its rotated
    # copy 2d x d, k, rotated k and v 3d x d, out d x d, MLP 8d x d; per latent layer q, k, their
    # rotated copies and v 5d x d, out d x d, MLP 8d x d (6 layers); the head 391 x d
    d = 384
    assert report["weight_products"]["weights"] == (2 + 3 + 1 + 8 + 6 * (5 + 1 + 8)) * d * d + 391 * d
    assert all(rate > 0 for rate in report["memory_read_gbps"].values())
    graph = report["step_graph"]
    assert graph["full_window_ms"] > 0 and graph["one_cached_input_ms"] > 0
    for precision in ("float32", "int8"):
        for rows in (1, 4, 384):
            assert report["weight_products"][f"{precision}_rows{rows}_ms"] > 0
    for split in report["loop_ms_per_step"].values():
        assert split["step"] > 0 and split["reset"] > 0 and split["sample"] > 0
        # the timed parts never overlap (a part counted twice would leave less than nothing)
        assert split["rest"] > -0.001
    assert report["sampler"]["warm_us"] > 0 and report["sampler"]["after_streaming_the_step_bytes_us"] > 0
    for label in ("defaults", "top_p_0.95"):
        assert min(report["sampler"][f"warm_us_{label}"].values()) > 0
