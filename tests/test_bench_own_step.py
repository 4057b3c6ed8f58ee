"""bench/own_step.py: the decode step in kernels of our own computes onnxruntime's step (float32:
the same logits and K/V; int8 near them), and generate() runs with it in place of the step
session, giving onnxruntime float32's greedy ids across resets and a sliding window."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or "avx2" not in Path("/proc/cpuinfo").read_text(),
                                reason="needs gcc and an AVX2 CPU")


def test_own_step_matches_onnxruntime_and_is_timed_in_the_loop():
    proc = subprocess.run([sys.executable, "bench/own_step.py", "--threads", "2", "--rounds", "1", "--burst", "2",
                           "--loop-rounds", "1", "--context", "1024", "--new-tokens", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checks = report["checks"]
    assert checks["own_float32_logits_max_abs_diff"] < 1e-4 and checks["own_float32_new_kv_max_abs_diff"] < 1e-4
    assert checks["own_int8_next_id_total_variation_vs_float32"] < 0.05
    assert set(report["step_ms"]) == {"onnxruntime_int8", "onnxruntime_float32", "own_int8", "own_float32"}
    assert min(report["step_ms"].values()) > 0
    loop = report["loop"]
    assert set(loop["tokens_per_s"]) == {"eager_cpu_setting", "onnxruntime_int8", "own_int8"}
    assert all(len(rates) == 1 and rates[0] > 0 for rates in loop["tokens_per_s"].values())


def test_the_own_float32_step_gives_onnxruntime_float32_logits_across_resets_and_a_sliding_window(tmp_path):
    """Both decoders step the same ids (greedy from onnxruntime's) from a full window for 300
    ids: two continued resets, one input sliding out at every step."""
    sys.path.insert(0, str(REPO / "bench"))
    import own_step
    import torch

    from perceiver_music import decode_onnx as D
    from perceiver_music.checkpoint import load_checkpoint
    from perceiver_music.evaluate import load_eval_works
    from perceiver_music.generate import default_reset_latents

    model = load_checkpoint(REPO / "assets" / "model").model.float().eval()
    cfg = model.config
    works, _ = load_eval_works(str(REPO / "assets" / "primers"), split="test")
    primer = max(works, key=len).tolist()
    window = torch.tensor([(primer * (cfg.max_context // len(primer) + 1))[-cfg.max_context:]])
    torch.set_num_threads(2)
    library = own_step.build(tmp_path)
    own = own_step.OwnStepDecoder(model, library, 2, precision="float32")
    reference = D.OnnxDecoder(model, 1, precision="float32", threads=2)
    R = default_reset_latents(cfg.num_latents)
    resets, worst = 0, 0.0
    try:
        logits = reference.reset(window, R)
        own.reset(window, R)
        for _ in range(300):
            token = logits.argmax(-1)
            window = torch.cat((window, token[:, None]), 1)[:, -cfg.max_context:]
            if reference.latent_slot >= cfg.num_latents:
                logits, mine = reference.reset(window, R), own.reset(window, R)
                resets += 1
            else:
                logits, mine = reference.step(token, window), own.step(token, window)
            worst = max(worst, float((mine - logits).abs().max()))
    finally:
        library.stop_worker()
    assert resets == 2 and own.resets["continued"] == 2
    assert worst < 1e-4
