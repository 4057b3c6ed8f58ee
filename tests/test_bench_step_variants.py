"""bench/step_variants.py, run as a person runs it, on a tiny model (a short run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
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
    sys.path.insert(0, str(REPO / "bench"))
    import step_variants as SV

    optional = {"int4": SV.int4_available(), "openvino-int8": SV.openvino_available()}  # variant: why not
    for variant, why_not in optional.items():
        if why_not is None:
            assert variant in variants and variant not in report["skipped"]
        else:
            assert variant not in variants and report["skipped"][variant] == why_not
    assert set(variants) - set(optional) == {"int8", "int8-latent-float16", "int8-blocks"}
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


def test_openvino_variant_runs_the_same_step_on_the_caches_in_place(random_checkpoint):
    """OpenVINO computes the step that onnxruntime computes (float32: the same distribution),
    its int8 weights stay near float32, and it reads the caches in place: changing them
    changes its next step."""
    pytest.importorskip("openvino")
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        pytest.skip("OpenVINO cannot compile with ONEDNN_MAX_CPU_ISA set")
    sys.path.insert(0, str(REPO / "bench"))
    import step_variants as SV
    from perceiver_music import decode_onnx as D
    from perceiver_music.checkpoint import load_checkpoint

    model = load_checkpoint(random_checkpoint).model.float().eval()
    one, _ = SV.real_caches(model, str(REPO / "assets" / "primers"), 1)
    with tempfile.TemporaryDirectory() as folder:
        files = SV.export_graphs(model, Path(folder), ["openvino-int8"])
        sess = D.cpu_session(files[("float32", "step")], 1)
        binding, _values = SV.bound(sess, one, False)
        sess.run_with_iobinding(binding)
        onnxruntime_logits = binding.copy_outputs_to_cpu()[0]
        openvino_logits = SV.openvino_run(files[("float32", "step")], one, 1)[1]
        assert SV.total_variation(openvino_logits, onnxruntime_logits) < 1e-3
        run, int8_logits, (_compiled, arrays) = SV.openvino_run(files[("openvino-int8", "step")], one, 1)
        assert SV.total_variation(int8_logits, onnxruntime_logits) < 0.05
        arrays["cross_v"][...] = np.random.default_rng(0).standard_normal(arrays["cross_v"].shape)
        run()
        assert not np.allclose(run.__self__.get_output_tensor(0).data, int8_logits)
