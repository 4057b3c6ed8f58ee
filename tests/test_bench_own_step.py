"""bench/own_step.py: the decode step in kernels of our own computes onnxruntime's step (float32:
the same logits and K/V; int8 near them), and generate() runs with it in place of the step
session, giving onnxruntime float32's greedy ids across resets and a sliding window."""

from __future__ import annotations

import ctypes
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
    assert resets == 2 and own.resets["continued"] == 2
    assert worst < 1e-4


def test_two_own_steps_at_once_compute_what_each_computes_alone(tmp_path):
    """Each step owner has its own buffers and worker: two running in two threads at once (the web
    app's concurrent requests) give the logits each gives alone."""
    import threading

    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    import own_step
    from step_variants import real_caches

    from perceiver_music.checkpoint import load_checkpoint

    model = load_checkpoint(REPO / "assets" / "model").model.float().eval()
    L, d = model.config.n_layers, model.config.d_model
    one, _ = real_caches(model, str(REPO / "assets" / "primers"), 2)
    library = own_step.build(tmp_path)
    steps, outputs = [], []
    for precision in ("float32", "int8"):
        step = own_step.OwnStep(library, model, precision, 2)
        logits = np.zeros(model.config.vocab_size, np.float32)
        caches = {name: np.ascontiguousarray(a) for name, a in one.items()}
        step.point(int(caches["tokens"][0]), int(caches["pos"][0]), caches["cross_k_t"], caches["cross_v"],
                   caches["cross_mask"], caches["latent_mask"], [caches[f"latent_k_t{i}"] for i in range(L)],
                   [caches[f"latent_v{i}"] for i in range(L)], logits, np.zeros(d, np.float32), np.zeros(d, np.float32),
                   [np.zeros(d, np.float32) for _ in range(L)], [np.zeros(d, np.float32) for _ in range(L)])
        step.run()
        steps.append(step)
        outputs.append((logits, logits.copy()))  # (the buffer it writes, what it wrote alone)
    differs = []

    def repeat(step, logits, alone) -> None:
        for _ in range(200):
            step.run()
            if not np.array_equal(logits, alone):
                differs.append(float(np.abs(logits - alone).max()))

    threads = [threading.Thread(target=repeat, args=(step, *out)) for step, out in zip(steps, outputs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not differs
    assert not np.allclose(outputs[0][1], outputs[1][1])  # two different steps ran (float32, int8)


def test_an_idle_own_step_worker_sleeps(tmp_path):
    """The worker spins a few ms after a task, then sleeps: an idle step owner in a long-lived
    process takes no core."""
    import time

    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    import own_step

    library = own_step.build(tmp_path)
    context = library.create_context(2)
    try:
        assert library.context_threads(context) == 2
        weight = np.random.default_rng(0).integers(-63, 64, (64, 64), dtype=np.int8)
        row, out = np.ones(64, np.float32), np.zeros(64, np.float32)
        scale, colsum = np.ones(64, np.float32), weight.sum(1, dtype=np.int32)
        table = (own_step.Weight * 1)(own_step.Weight(64, 64, weight.ctypes.data, scale.ctypes.data,
                                                      colsum.ctypes.data, None))
        pointers = lambda a: (ctypes.c_void_p * 1)(a.ctypes.data)  # noqa: E731
        assert library.run_products(context, table, pointers(row), pointers(out), 1, 1) == 0  # wakes the worker
        assert np.abs(out - weight.sum(1)).max() < 0.1 * np.abs(weight.sum(1)).max() + 1
        time.sleep(0.2)  # past its spin
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(0.5)
        assert time.process_time() - cpu < 0.1 * (time.perf_counter() - wall)
    finally:
        library.destroy_context(context)
