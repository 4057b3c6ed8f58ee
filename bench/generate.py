"""Generation and training speed of the Perceiver AR, measured against baselines in one run.

Prints one JSON object:
  generation  per context: tokens/s at batch 1 with the caches vs the naive loop (a full
              forward per token, same latent schedule) vs a dense decoder of the same size
              with a KV cache; the ratios; reset and step times.
  candidates  reset/step times of a few model sizes at context 4096 (why default_config).
  batch64     tokens/s in all with 64 variations (CUDA only).
  training    forward + backward + AdamW step, Perceiver AR vs the dense decoder.
  peak_memory per phase (CUDA: max_memory_allocated; CPU: ru_maxrss so far, it only grows).
  targets     issue 3's targets next to this run's figures, each with met: true/false.
  compiled    CPU: the compiled decode step (onnxruntime, decode_onnx.py; its step the native
              step, native_step.py, where it can be had, with onnxruntime's step beside it)
              next to eager in the same run, per context: reset and step ms and tokens/s at
              batch 1 and with 4 variations, per precision; its export and second-start
              costs; issue 13's targets. `machine.cpu_features` lists AVX2, AVX-512, AVX512-BF16, AMX.

    python bench/generate.py --device cpu            # the CPU figures in BENCHMARKS.md
    python bench/generate.py --device cpu --threads 2 --skip naive,dense,candidates,training
                                                     # eager vs compiled only (a few minutes)
    ATEN_CPU_CAPABILITY=avx2 python bench/generate.py --no-native-bfloat16 ...
                                                     # PyTorch as on an AVX2-only laptop
    python bench/avx2_laptop.py -- python bench/generate.py ...
                                                     # PyTorch and onnxruntime without AVX-512
    python bench/generate.py --device cuda --dtype bfloat16
    python bench/generate.py --quick                 # small sizes, a smoke run
    scripts/device/bench_gpu.sh PART                 # the GPU figures, in parts that fit a device call
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_baseline import DenseKVCache, DenseTransformer  # noqa: E402

from perceiver_music.cpu_precision import low_precision_copy  # noqa: E402
from perceiver_music.generate import EagerDecoder, default_reset_latents, generate, sample_next  # noqa: E402
from perceiver_music.model import PerceiverAR, PerceiverARConfig, default_config  # noqa: E402
from perceiver_music.tokenizer import EOS, VOCAB_SIZE  # noqa: E402


REPEATS = 2  # rates are the best of this many runs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def bench_model(cfg: PerceiverARConfig, device: torch.device) -> PerceiverAR:
    """Random weights that never sample EOS, so every run generates as many ids as asked.

    Feature 0 of the final LayerNorm is a constant that only the EOS row of the head reads,
    with a large negative weight; the other rows are small random weights.
    """
    torch.manual_seed(0)
    model = PerceiverAR(cfg)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.02)
        model.head.weight[:, 0] = 0.0
        model.norm.weight[0], model.norm.bias[0] = 0.0, 10.0
        model.head.weight[EOS, 0] = -10.0
    return model.to(device).eval()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def make_bench_decoder(model, dtype, backend: str = "eager", batch: int = 1):
    if backend == "onnx":
        from perceiver_music.decode_onnx import OnnxDecoder

        return OnnxDecoder(model, batch, precision="int8" if dtype == torch.qint8 else "float32")
    return EagerDecoder(model, dtype)


@contextlib.contextmanager
def native_step_switched(on: bool):
    """Within: the onnx decoders made step natively (the engine's default, where the native
    step can be had) or, with on=False, with onnxruntime's step (native_step.SWITCH)."""
    from perceiver_music.native_step import SWITCH

    old = os.environ.get(SWITCH)
    if not on:
        os.environ[SWITCH] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SWITCH, None)
        else:
            os.environ[SWITCH] = old


def reset_and_step_ms(model: PerceiverAR, context: int, device, dtype, steps: int, backend: str = "eager",
                      batch: int = 1, one_primer: bool = False) -> dict:
    """One reset (a full forward with R latents over `context` ids) and cached steps, timed apart.

    `one_primer`: the rows are variations of one primer (the same `context` ids), as
    generate(num_variations=...) makes them; else each row has its own ids (generate_batch)."""
    cfg = model.config
    R = default_reset_latents(cfg.num_latents)
    ids = torch.randint(3, VOCAB_SIZE, (1 if one_primer else batch, context), device=device)
    ids = ids.repeat(batch, 1) if one_primer else ids
    tok = torch.randint(3, VOCAB_SIZE, (batch,), device=device)
    decoder = make_bench_decoder(model, dtype, backend, batch)
    steps = min(steps, cfg.num_latents - R)
    with torch.inference_mode():
        decoder.reset(ids, R)  # warm-up
        reset_s = min(timed(lambda: decoder.reset(ids, R), device) for _ in range(2))
        decoder.step(tok, ids)  # warm-up
        decoder.reset(ids, R)
        step_s = timed(lambda: [decoder.step(tok, ids) for _ in range(steps)], device) / steps
    out = {"reset_ms": round(reset_s * 1e3, 2), "step_ms": round(step_s * 1e3, 3)}
    if backend == "onnx":  # which step ran; its resets after the first keep the cached inputs' K/V
        out["step_kernels"] = "native" if decoder.native is not None else "onnxruntime"
        reset_s = min(continued_reset_s(decoder, ids, tok, R, steps, device) for _ in range(2))
        out["continued_reset_ms"] = round(reset_s * 1e3, 2)
    cycle = cfg.num_latents - R + 1  # ids per reset cycle: N - R steps and one reset
    per_token = (reset_s + (cycle - 1) * step_s) / cycle
    return {**out, "reset_every": cycle, "estimated_tokens_per_s": round(1 / per_token, 1)}


def continued_reset_s(decoder, ids, tok, R: int, steps: int, device) -> float:
    """A reset as the generation loop makes it after the first: over the ids the decoder cached
    (a reset over `ids`, then `steps` steps of `tok`) and one new id, the window slid."""
    with torch.inference_mode():
        decoder.reset(ids, R)
        for _ in range(steps):
            decoder.step(tok, ids)
        window = torch.cat((ids, tok[:, None].expand(-1, steps + 1)), dim=1)[:, -ids.size(1) :]
        return timed(lambda: decoder.reset(window, R), device)


def generation_rate(model, prompt, new_tokens, device, repeats: int = REPEATS, **kw) -> tuple[float, float]:
    """(tokens/s over the whole call, steady tokens/s), best of `repeats` runs.

    Steady: from generate's first progress call (after any set-up such as a CUDA-graph
    capture) to its last, minus the prefill (one reset, timed apart). The best run is the
    one least disturbed by other work on a shared machine.
    """
    cfg = model.config
    R = default_reset_latents(cfg.num_latents)
    V = kw.get("num_variations", 1)
    window = torch.tensor([prompt[-cfg.max_context :]] * V, device=device)
    decoder = make_bench_decoder(model, kw.get("dtype"), kw.get("backend", "eager"), V)
    with torch.inference_mode():
        prefill_s = min(timed(lambda: decoder.reset(window, min(R, window.size(1))), device) for _ in range(2))
    made = new_tokens * kw.get("num_variations", 1)
    best_total = best_steady = float("inf")
    for _ in range(repeats):
        out: list = []
        calls: list[float] = []
        progress = lambda done, total: calls.append(time.perf_counter())  # noqa: E731
        run = lambda: out.extend(generate(model, prompt, max_new_tokens=new_tokens, seed=0, progress=progress, **kw))  # noqa: E731
        total_s = timed(run, device)
        assert sum(len(o) for o in out) == made, "a bench run stopped early"
        best_total = min(best_total, total_s)
        best_steady = min(best_steady, calls[-1] - calls[0] - prefill_s)
    return made / best_total, made / max(best_steady, 1e-9)


def dense_rate(cfg, context, new_tokens, device, dtype, real_prefill: bool) -> dict:
    """Decode tokens/s of the dense baseline after a prefill of `context` ids, best of REPEATS.

    dtype float16 on a CPU: the Perceiver's CPU setting, the same lower-precision Linear weights
    (cpu_precision), so that both models get the same help."""
    dense = DenseTransformer.matching(cfg, context + new_tokens + 1).to(device).eval()
    if dtype == torch.float16 and device.type == "cpu":
        dense, dtype = low_precision_copy(dense), None
    cache_dtype = dtype or next(dense.parameters()).dtype
    cache = DenseKVCache(dense, 1, context + new_tokens + 1, device, cache_dtype)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode(), autocast(device, dtype):
        if real_prefill:
            ids = torch.randint(3, VOCAB_SIZE, (1, context), device=device)
            prefill_s = timed(lambda: dense(ids, cache, last_only=True), device)
        else:
            cache.fill_random(context)
            prefill_s = None
        tok = torch.randint(3, VOCAB_SIZE, (1,), device=device)

        def run():
            nonlocal tok
            cache.end = context  # decode from the same prefill every repeat
            for _ in range(new_tokens):
                # no per-step read back to the host: generate() reads ids every few steps on a GPU
                tok = sample_next(dense.decode_step(tok, cache).float(), generator=g)

        decode_s = min(timed(run, device) for _ in range(REPEATS))
    return {
        "dense_parameters": dense.num_parameters(),
        "dense_kv_tokens_per_s": round(new_tokens / decode_s, 1),
        "dense_prefill_s": None if prefill_s is None else round(prefill_s, 3),
    }


def train_step_s(model, ids, device, dtype, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")  # as train.py
    model.train()

    def step():
        with autocast(device, dtype):
            out = model.loss(ids)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    return min(timed(step, device) for _ in range(repeats))


def check_targets(report: dict, gpu: bool) -> list[dict]:
    """Issue 3's targets against this run's figures (only those this run measured)."""
    at = {row["context"]: row for row in report["generation"]}
    trained = {row["context"]: row for row in report["training"]}
    checks = []

    def check(name: str, measured, target: float) -> None:
        if measured is not None:
            checks.append({"target": name, "at_least": target, "measured": measured, "met": measured >= target})

    row = at.get(4096, {})
    if gpu:
        check("batch 1, context 4096, tokens/s (CUDA graph)", row.get("graph_tokens_per_s"), 1500)
        check("batch 64, context 4096, tokens/s in all", (report["batch64"] or {}).get("tokens_per_s_all_variations"), 100_000)
    else:
        check("batch 1, context 4096, tokens/s (engine's CPU setting)", row.get("cached_low_precision_tokens_per_s"), 200)
        check("x naive loop, float32 naive", row.get("cached_low_precision_over_naive"), 20)
        check("x naive loop, same precision (like for like)", row.get("cached_low_precision_over_naive_low_precision"), 20)
        check("x naive loop, float32 both", row.get("cached_over_naive"), 20)
    check("training step at 16384, x cheaper than dense", trained.get(16384, {}).get("dense_over_perceiver"), 8)
    return checks


def cpu_features() -> dict:
    """What /proc/cpuinfo says the CPU has, and what PyTorch dispatches to (ATEN_CPU_CAPABILITY)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from perceiver_music import native_step
    from perceiver_music.cpu_precision import native_bfloat16

    return {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "amx": "amx_tile" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "amx_int8": "amx_int8" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
        # onnxruntime (MLAS) picks its kernels by CPUID and XCR0 when it loads and has no switch
        # to leave AVX-512 out; bench/avx2_laptop.py runs a command on a patched copy that does.
        "onnxruntime_isa": os.environ.get("PERCEIVER_MUSIC_ONNXRUNTIME_ISA", "this CPU's"),
        "torch_native_bfloat16": native_bfloat16(),
        # the native step's byte products: the compiler flags of its VNNI form, empty for AVX2's
        "native_step_vnni_flags": " ".join(native_step.vnni_flags()),
    }


def compiled_part(model, prompt, context, new_tokens, device, precisions, eager_row, cache_dir, timing) -> dict:
    """The compiled step (onnxruntime, with the native step where it can be had) of
    this model at this context, next to the eager figures of the same run (eager_row): batch 1
    and 4 variations, per precision; with the native step, onnxruntime's batch-1 step too."""
    import onnxruntime

    from perceiver_music import decode_onnx

    out: dict = {"onnxruntime": onnxruntime.__version__}
    if timing:  # export (first start) and load (second start) costs, from an empty cache folder
        t0 = time.perf_counter()
        digest = decode_onnx.model_digest(model)
        out["weights_digest_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        files = decode_onnx.exported_files(model, "float32", weights=digest, cache_dir=cache_dir)
        out["export_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()  # a second start: find and check the cached files, load both sessions
        files = decode_onnx.exported_files(model, "float32", weights=digest, cache_dir=cache_dir)
        decode_onnx.CompiledStep(files, torch.get_num_threads())
        out["second_start_s"] = round(time.perf_counter() - t0, 2)
        out["export_mb"] = round(sum(f.stat().st_size for f in files.values()) / 2**20, 1)
    for precision in precisions:
        dtype = torch.qint8 if precision == "int8" else None
        row: dict = {}
        one = reset_and_step_ms(model, context, device, dtype, steps=64, backend="onnx")
        four = reset_and_step_ms(model, context, device, dtype, steps=64, backend="onnx", batch=4)
        variations = reset_and_step_ms(model, context, device, dtype, steps=64, backend="onnx", batch=4, one_primer=True)
        _, rate1 = generation_rate(model, prompt, new_tokens, device, dtype=dtype, backend="onnx")
        _, rate4 = generation_rate(model, prompt, new_tokens, device, dtype=dtype, backend="onnx", num_variations=4)
        if one["step_kernels"] == "native":  # and onnxruntime's own batch-1 step, for comparison
            with native_step_switched(False):
                row["onnxruntime_step_ms"] = reset_and_step_ms(model, context, device, dtype, steps=64,
                                                               backend="onnx")["step_ms"]
                row["onnxruntime_step_tokens_per_s"] = round(generation_rate(
                    model, prompt, new_tokens, device, dtype=dtype, backend="onnx")[1], 1)
        row.update({
            "step_kernels": one["step_kernels"],
            "reset_ms": one["reset_ms"], "continued_reset_ms": one["continued_reset_ms"], "step_ms": one["step_ms"],
            "tokens_per_s": round(rate1, 1), "estimated_tokens_per_s": one["estimated_tokens_per_s"],
            "batch4_reset_ms": four["reset_ms"], "batch4_continued_reset_ms": four["continued_reset_ms"],
            "batch4_step_ms": four["step_ms"],
            "4_variations_reset_ms": variations["reset_ms"],
            "4_variations_continued_reset_ms": variations["continued_reset_ms"],
            "4_variations_step_ms": variations["step_ms"],
            "tokens_per_s_4_variations": round(rate4, 1),
            "batch4_over_batch1_step": round(four["step_ms"] / one["step_ms"], 2),
            # the steps right after the primer (its K/V read once for all rows: the best case)
            "4_variations_over_1_step": round(variations["step_ms"] / one["step_ms"], 2),
            # what an id costs 4 variations against 1 over the whole generation, resets included
            "4_variations_over_1_per_id": round(4 * rate1 / rate4, 2),
            "over_eager_float32": round(rate1 / eager_row["cached_tokens_per_s"], 2),
        })
        if "cached_low_precision_tokens_per_s" in eager_row:
            row["over_eager_cpu_setting"] = round(rate1 / eager_row["cached_low_precision_tokens_per_s"], 2)
        if "cached_low_precision_tokens_per_s_4_variations" in eager_row:
            row["over_eager_cpu_setting_4_variations"] = round(
                rate4 / eager_row["cached_low_precision_tokens_per_s_4_variations"], 2)
        if precision == "float32":  # the reset by PyTorch into the compiled step's buffers instead
            torch_reset = decode_onnx.OnnxDecoder(model, 1, reset_runtime="torch")
            ids = torch.randint(3, VOCAB_SIZE, (1, context), device=device)
            R = default_reset_latents(model.config.num_latents)
            with torch.inference_mode():
                torch_reset.reset(ids, R)
                row["torch_reset_ms"] = round(min(timed(lambda: torch_reset.reset(ids, R), device) for _ in range(2)) * 1e3, 2)
        out[precision] = row
    return out


def check_compiled_targets(report: dict) -> list[dict]:
    """Issue 13's targets (batch 1, context 4096) against this run's compiled figures."""
    checks = []
    for row in report["generation"]:
        if row["context"] != 4096 or "compiled" not in row:
            continue
        for precision in ("float32", "int8"):
            c = row["compiled"].get(precision)
            if not c:
                continue
            features = report["machine"]["cpu_features"]
            # AVX-512 as the runtimes use it: under bench/avx2_laptop.py both are held to AVX2
            avx512 = features["avx512f"] and features.get("onnxruntime_isa") != "avx2" and (
                features.get("torch_cpu_capability") != "AVX2")
            checks += [
                {"target": f"{precision}: x the eager CPU setting's tokens/s, batch 1, 4096", "at_least": 3,
                 "measured": c.get("over_eager_cpu_setting"), "met": (c.get("over_eager_cpu_setting") or 0) >= 3},
                {"target": f"{precision}: tokens/s, batch 1, 4096 ({'AVX-512' if avx512 else 'AVX2-only'} CPU)",
                 "at_least": 400 if avx512 else 250, "measured": c["tokens_per_s"],
                 "met": c["tokens_per_s"] >= (400 if avx512 else 250)},
                {"target": f"{precision}: 4 variations' step / one variation's step", "at_most": 2,
                 "measured": c["4_variations_over_1_step"], "met": c["4_variations_over_1_step"] <= 2},
                {"target": f"{precision}: 4 variations' id / one variation's id, resets included", "at_most": 2,
                 "measured": c["4_variations_over_1_per_id"], "met": c["4_variations_over_1_per_id"] <= 2},
            ]
    return checks


def torch_compile_step(model, context, device, steps: int = 64) -> dict:
    """The alternative to onnxruntime: torch.compile (inductor) of the same static step."""
    from perceiver_music.decode_graph import GraphDecoder

    R = default_reset_latents(model.config.num_latents)
    ids = torch.randint(3, VOCAB_SIZE, (1, context), device=device)
    tok = torch.randint(3, VOCAB_SIZE, (1,), device=device)
    static = GraphDecoder(model, 1, capture=False)
    out = {}
    with torch.inference_mode():
        static.reset(ids, R)
        static.step(tok, ids)
        static.reset(ids, R)
        out["static_uncompiled_step_ms"] = round(timed(lambda: [static.step(tok, ids) for _ in range(steps)], device)
                                                 / steps * 1e3, 3)
        static._step = torch.compile(static._step, dynamic=False)
        static.reset(ids, R)
        t0 = time.perf_counter()
        static.step(tok, ids)
        static.step(tok, ids)
        out["compile_s"] = round(time.perf_counter() - t0, 1)
        static.reset(ids, R)
        out["static_torch_compile_step_ms"] = round(timed(lambda: [static.step(tok, ids) for _ in range(steps)], device)
                                                    / steps * 1e3, 3)
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        "cpu_features": cpu_features(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="CUDA only: autocast dtype (bfloat16 recommended). A CPU run measures float32 and "
        "the lower-precision Linear weights of generate(dtype=torch.float16) (cpu_precision.py)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about a minute")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--contexts", default=None, help="comma-separated, default 1024,4096,16384")
    ap.add_argument("--new-tokens", type=int, default=None, help="cached ids per measurement")
    ap.add_argument("--train-batch", type=int, default=None, help="training-step batch (default: 4 on CUDA, 1 on CPU)")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to leave out: generation,batch64,training,naive,dense,candidates,"
                         "compiled,eager4 (eager with 4 variations)")
    ap.add_argument("--onnx-precisions", default="float32,int8",
                    help="CPU: precisions of the compiled step to measure (float32, int8; default both)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="CPU: also time torch.compile of the static step at context 4096 (the alternative)")
    ap.add_argument("--no-native-bfloat16", action="store_true",
                    help="CPU: resets in the eager CPU setting without bfloat16 weights, as on a CPU without "
                         "AVX512-BF16 or AMX (cpu_precision.native_bfloat16 -> False)")
    args = ap.parse_args()

    skip = {part for part in args.skip.split(",") if part}
    parts = {"generation", "batch64", "training", "naive", "dense", "candidates", "compiled", "eager4"}
    if skip - parts:
        ap.error(f"--skip takes {', '.join(sorted(parts))}, not {sorted(skip - parts)}")
    from perceiver_music.decode_onnx import available as onnx_available

    if not onnx_available():
        skip.add("compiled")
    if args.no_native_bfloat16:
        from perceiver_music import cpu_precision

        cpu_precision.native_bfloat16 = lambda: False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    gpu = device.type == "cuda"
    if not gpu and dtype is not None:
        ap.error("on a CPU the bench measures float32 and lower-precision weights; --dtype is for CUDA")
    base = default_config()
    if args.quick:
        base = replace(base, d_model=128, n_heads=4, cross_heads=4, n_layers=2, num_latents=128)
    contexts = [int(c) for c in (args.contexts or ("512,1024" if args.quick else "1024,4096,16384")).split(",")]
    if "generation" in skip:
        contexts = []
    new_tokens = args.new_tokens or (2048 if gpu else 100 if args.quick else 600)
    report: dict = {
        "command": "python bench/generate.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "device": str(device),
        "dtype": args.dtype,
        "model": {**base.to_dict(), "parameters": PerceiverAR(base).num_parameters()},
        "reset_latents": default_reset_latents(base.num_latents),
        "peak_memory_mb": {},
    }

    # -- batch 1: cached vs naive vs dense, per context --
    precisions = [p for p in args.onnx_precisions.split(",") if p]
    import tempfile

    cache_dir = Path(tempfile.mkdtemp(prefix="bench-compiled-"))  # exports of this run's random models
    os.environ["PERCEIVER_MUSIC_CACHE"] = str(cache_dir)
    report["bfloat16_switched_off"] = bool(args.no_native_bfloat16)
    rows = []
    for context in contexts:
        cfg = replace(base, max_context=context)
        model = bench_model(cfg, device)
        prompt = torch.randint(3, VOCAB_SIZE, (context,), generator=torch.Generator().manual_seed(1)).tolist()
        reset_peak(device)
        row = {"context": context, **reset_and_step_ms(model, context, device, dtype, steps=64)}
        eager_all, eager = generation_rate(model, prompt, new_tokens, device, dtype=dtype, backend="eager")
        row["cached_tokens_per_s"] = round(eager, 1)
        row["cached_tokens_per_s_whole_call"] = round(eager_all, 1)
        if not gpu:  # the product's CPU setting: lower-precision Linear weights (cpu_precision)
            low = reset_and_step_ms(model, context, device, torch.float16, steps=64)
            row["low_precision_reset_ms"], row["low_precision_step_ms"] = low["reset_ms"], low["step_ms"]
            _, fast = generation_rate(model, prompt, new_tokens, device, dtype=torch.float16, backend="eager")
            row["cached_low_precision_tokens_per_s"] = round(fast, 1)
            if "eager4" not in skip:
                low4 = reset_and_step_ms(model, context, device, torch.float16, steps=64, batch=4)
                row["low_precision_batch4_step_ms"] = low4["step_ms"]
                _, fast4 = generation_rate(model, prompt, new_tokens, device, dtype=torch.float16, backend="eager",
                                           num_variations=4)
                row["cached_low_precision_tokens_per_s_4_variations"] = round(fast4, 1)
            if "compiled" not in skip:
                row["compiled"] = compiled_part(model, prompt, context, new_tokens, device, precisions, row,
                                                cache_dir, timing=context == contexts[0])
            if args.torch_compile and context == 4096:
                row["torch_compile"] = torch_compile_step(model, context, device)
        if gpu:
            graph_all, graph = generation_rate(model, prompt, new_tokens, device, dtype=dtype, backend="graph")
            row["graph_tokens_per_s"] = round(graph, 1)
            row["graph_tokens_per_s_whole_call"] = round(graph_all, 1)
        if "naive" in skip or "dense" in skip:
            row["peak_memory_mb"] = round(peak_memory_mb(device), 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            continue
        naive_tokens = max(4, (new_tokens // 16 if gpu else 16) * 4096 // max(context, 4096))
        _, naive = generation_rate(model, prompt, naive_tokens, device, dtype=dtype, use_cache=False)
        row["naive_tokens"] = naive_tokens
        row["naive_tokens_per_s"] = round(naive, 2)
        row["cached_over_naive"] = round(eager / naive, 1)
        if not gpu:  # the same naive loop with the same lower-precision weights: like for like
            _, naive_low = generation_rate(model, prompt, naive_tokens, device, dtype=torch.float16, use_cache=False)
            row["naive_low_precision_tokens_per_s"] = round(naive_low, 2)
            row["cached_low_precision_over_naive_low_precision"] = round(fast / naive_low, 1)
            row["cached_low_precision_over_naive"] = round(fast / naive, 1)
        row["peak_memory_mb"] = round(peak_memory_mb(device), 1)
        del model
        real_prefill = gpu or context <= 4096
        dense_tokens = min(new_tokens, 256 if not gpu else new_tokens)
        row.update(dense_rate(cfg, context, dense_tokens, device, dtype, real_prefill))
        row["cached_over_dense_kv"] = round(eager / row["dense_kv_tokens_per_s"], 2)
        if not gpu:
            low_dense = dense_rate(cfg, context, dense_tokens, device, torch.float16, real_prefill)
            row["dense_kv_low_precision_tokens_per_s"] = low_dense["dense_kv_tokens_per_s"]
            row["cached_low_precision_over_dense_kv_low_precision"] = round(fast / low_dense["dense_kv_tokens_per_s"], 2)
        if gpu:
            row["graph_over_dense_kv"] = round(row["graph_tokens_per_s"] / row["dense_kv_tokens_per_s"], 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report["generation"] = rows
    report["cached_tokens"] = new_tokens

    # -- model-size candidates at context 4096 (CPU: why default_config is what it is) --
    if not args.quick and not gpu and contexts and "candidates" not in skip:
        candidates = {
            "d384_L6_N512 (default)": replace(base, num_latents=512, n_layers=6),
            "d384_L8_N512": replace(base, num_latents=512, n_layers=8),
            "d384_L6_N256": replace(base, num_latents=256, n_layers=6),
            "d384_L8_N256": replace(base, num_latents=256, n_layers=8),
        }
        report["candidates"] = {
            name: {"parameters": PerceiverAR(c).num_parameters(), **reset_and_step_ms(bench_model(c, device), 4096, device, dtype, 64)}
            for name, c in candidates.items()
        }

    # -- batch 64 (CUDA) --
    if gpu and "batch64" not in skip:
        cfg = replace(base, max_context=4096)
        model = bench_model(cfg, device)
        prompt = torch.randint(3, VOCAB_SIZE, (4096,), generator=torch.Generator().manual_seed(1)).tolist()
        reset_peak(device)
        b64_all, b64 = generation_rate(model, prompt, 2048, device, dtype=dtype, num_variations=64, repeats=1)
        report["batch64"] = {
            "context": 4096,
            "tokens_per_s_all_variations": round(b64, 1),
            "whole_call": round(b64_all, 1),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
        }
        del model
    else:
        report["batch64"] = None

    # -- training step: Perceiver AR vs dense, same parameter count --
    # dropout 0: with attention dropout PyTorch's CPU SDPA falls back to the math kernel,
    # which materialises T x T scores for the dense model (16k: gigabytes per layer).
    train_cfg = replace(base, dropout=0.0)
    if not gpu:
        train_cfg = replace(train_cfg, d_model=128, n_heads=4, cross_heads=4, n_layers=3, num_latents=256)
    train_contexts = [] if "training" in skip else [512, 1024] if args.quick else [4096, 16384]
    batch = args.train_batch or (4 if gpu else 1)
    training = []
    for context in train_contexts:
        cfg = replace(train_cfg, max_context=context)
        ids = torch.randint(3, VOCAB_SIZE, (batch, context + 1), device=device)
        reset_peak(device)
        perceiver = PerceiverAR(cfg).to(device)
        p_s = train_step_s(perceiver, ids, device, dtype, repeats=2)
        p_mem = peak_memory_mb(device)
        del perceiver
        # the same without cross-attend dropout: the architecture alone
        full = PerceiverAR(replace(cfg, cross_attend_dropout=0.0)).to(device)
        p0_s = train_step_s(full, ids, device, dtype, repeats=2)
        del full
        reset_peak(device)
        dense = DenseTransformer.matching(cfg, context + 1).to(device)
        d_s = train_step_s(dense, ids, device, dtype, repeats=2)
        d_mem = peak_memory_mb(device)
        del dense
        row = {
            "context": context,
            "batch": batch,
            "model": {k: getattr(cfg, k) for k in ("d_model", "n_layers", "num_latents", "cross_attend_dropout", "dropout")},
            "perceiver_step_s": round(p_s, 4),
            "perceiver_no_cross_dropout_step_s": round(p0_s, 4),
            "dense_step_s": round(d_s, 4),
            "dense_over_perceiver": round(d_s / p_s, 2),
            "dense_over_perceiver_no_cross_dropout": round(d_s / p0_s, 2),
            "perceiver_peak_memory_mb": round(p_mem, 1),
            "dense_peak_memory_mb": round(d_mem, 1),
        }
        training.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report["training"] = training
    report["targets"] = check_targets(report, gpu)
    if not gpu:
        report["compiled_targets"] = check_compiled_targets(report)
    report["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    report["peak_memory_mb"]["process"] = round(peak_memory_mb(device), 1)
    import shutil

    shutil.rmtree(cache_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
