"""Where a generated id's time goes with the compiled CPU step, next to what the memory allows.

Issue 13 asks the compiled step for 3x the eager CPU setting. This bench splits one id's wall
time on this machine into its parts, so that a miss can be traced to a part, and gives the
bound each part is measured against. All in one run, on random weights of `default_config()`
at --context (bench/generate.py's bench_model), int8 (the engine's default), --threads threads:

  memory            GB/s of a 2-thread sum over buffers of the step's size (what streaming
                    the step's bytes once would cost) and over 200 MB (main memory)
  step_bytes_mb     what one batch-1 step reads: int8 weights, the cross-attend K/V of a full
                    window and the latent K/V (float32, as the step graph reads them), and the
                    same K/V as int8 codes with a float32 scale per head and slot (what the
                    native step that the loop runs keeps in int8 runs; total_native_step)
  step_graph        the step graph alone (IO binding, random caches): with a full cross-attend
                    window, and with one cached input (so the difference is the cross-attend)
  weight_products   the step graph's weight products alone (its MatMuls by constants, in one
                    graph), float32 and int8 as shipped, at 1, 4 and R rows (a reset's):
                    ms, and GB/s of weights read at 1 and 4 rows, GFLOP/s at R
  loop              generate() over --new-tokens ids from a random full-window primer, at 1 and
                    4 variations: ms per step of the loop spent in decoder.step, decoder.reset
                    (every reset, the prefill included), sample_next, and the rest
  sampler           sample_next on one row of logits, warm (run twice in a row) and right after
                    a sum over a buffer of the step's size (cold caches, as in the loop); and,
                    warm, the CPU's numpy draw against torch's (one torch thread) at generate()'s
                    defaults and at top-p 0.95

    python bench/id_anatomy.py --threads 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402
from step_variants import bound  # noqa: E402

from perceiver_music import decode_onnx as D  # noqa: E402
from perceiver_music import generate as G  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402
from perceiver_music.tokenizer import VOCAB_SIZE  # noqa: E402


def median_ms(fn, repeats: int, per_call: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / per_call)
    return round(1e3 * statistics.median(times), 4)


def read_rate_gbps(megabytes: float, repeats: int) -> float:
    buffer = torch.ones(int(megabytes * 2**20) // 4)
    buffer.sum()
    return round(megabytes / 1024 / (median_ms(buffer.sum, repeats) / 1e3), 1)


def step_weight_shapes(model) -> list[tuple[int, int]]:
    """(K, N) of every weight product in the exported float32 step graph: MatMuls by a constant."""
    import onnx

    graph = onnx.load(str(D.exported_files(model, "float32")["step"])).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return [shapes[node.input[1]] for node in graph.node if node.op_type == "MatMul" and node.input[1] in shapes]


def step_bytes_mb(model, shapes: list[tuple[int, int]]) -> dict:
    cfg = model.config
    weights = sum(k * n for k, n in shapes)  # one byte each in int8
    cross = 2 * cfg.max_context * cfg.d_model * 4
    latent = 2 * cfg.n_layers * cfg.num_latents * cfg.d_model * 4
    # int8: a byte a value, and a 4-byte scale per head's dims at each slot
    cross_int8 = cross / 4 * (1 + 4 / (cfg.d_model // cfg.cross_heads))
    latent_int8 = latent / 4 * (1 + 4 / (cfg.d_model // cfg.n_heads))
    mb = lambda b: round(b / 2**20, 2)  # noqa: E731
    return {"weights_int8": mb(weights), "cross_kv": mb(cross), "latent_kv": mb(latent),
            "total": mb(weights + cross + latent), "cross_kv_int8": mb(cross_int8),
            "latent_kv_int8": mb(latent_int8), "total_native_step": mb(weights + cross_int8 + latent_int8)}


def step_graph_ms(model, threads: int, repeats: int) -> dict:
    """The int8 step graph on random caches: a full window of cached inputs, and one."""
    cfg = model.config
    sess = D.cpu_session(D.exported_files(model, "int8")["step"], threads)
    hc, hdc, hs, hds = cfg.cross_heads, cfg.d_model // cfg.cross_heads, cfg.n_heads, cfg.d_model // cfg.n_heads
    rng = np.random.default_rng(0)
    random = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    out = {}
    for label, slots in (("full_window", cfg.max_context), ("one_cached_input", 1)):
        feeds = {"tokens": np.full(1, 5, np.int64), "pos": np.array([slots], np.int64),
                 "cross_k_t": random(1, hc, hdc, slots), "cross_v": random(1, hc, slots, hdc),
                 "cross_mask": np.zeros(slots, np.float32), "latent_mask": np.zeros(cfg.num_latents, np.float32)}
        for i in range(cfg.n_layers):
            feeds[f"latent_k_t{i}"] = random(1, hs, hds, cfg.num_latents)
            feeds[f"latent_v{i}"] = random(1, hs, cfg.num_latents, hds)
        binding, values = bound(sess, feeds, half_latents=False)  # values: kept alive while bound
        for _ in range(20):
            sess.run_with_iobinding(binding)
        out[f"{label}_ms"] = median_ms(lambda: [sess.run_with_iobinding(binding) for _ in range(20)], repeats, 20)
    out["cross_attend_ms"] = round(out["full_window_ms"] - out["one_cached_input_ms"], 4)
    return out


class WeightProducts(torch.nn.Module):
    """The step's weight products side by side (no data flow between them: only the reads count)."""

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.products = torch.nn.ModuleList(torch.nn.Linear(k, n, bias=False) for k, n in shapes)

    def forward(self, x_model, x_wide):
        return tuple(p(x_model if p.in_features == x_model.size(-1) else x_wide) for p in self.products)


def weight_products(model, shapes: list[tuple[int, int]], threads: int, repeats: int, rows: tuple[int, ...]) -> dict:
    d = model.config.d_model
    wide = max(k for k, _ in shapes)
    torch.manual_seed(0)
    module = WeightProducts(shapes).eval()
    n_weights = sum(k * n for k, n in shapes)
    out: dict = {"weights": n_weights}
    with tempfile.TemporaryDirectory(prefix="id-anatomy-") as folder:
        plain, quantised = Path(folder) / "w.float32.onnx", Path(folder) / "w.int8.onnx"
        outputs = [f"y{i}" for i in range(len(shapes))]
        D._export(module, (torch.zeros(1, 1, d), torch.zeros(1, 1, wide)), plain, ["x_model", "x_wide"], outputs,
                  {"x_model": {1: "rows"}, "x_wide": {1: "rows"}})
        D._quantize(plain, quantised)
        for precision, path, bytes_per_weight in (("float32", plain, 4), ("int8", quantised, 1)):
            sess = D.cpu_session(path, threads)
            for m in rows:
                feeds = {"x_model": np.random.rand(1, m, d).astype(np.float32),
                         "x_wide": np.random.rand(1, m, wide).astype(np.float32)}
                for _ in range(5):
                    sess.run(None, feeds)
                calls = 20 if m <= 4 else 2
                ms = median_ms(lambda: [sess.run(None, feeds) for _ in range(calls)], repeats, calls)
                out[f"{precision}_rows{m}_ms"] = ms
                if m <= 4:  # bound by reading the weights
                    out[f"{precision}_rows{m}_weights_gbps"] = round(n_weights * bytes_per_weight / 2**30 / (ms / 1e3), 1)
                else:  # bound by arithmetic
                    out[f"{precision}_rows{m}_gflops"] = round(2 * m * n_weights / 1e9 / (ms / 1e3), 1)
    return out


def loop_split(model, new_tokens: int, variations: int, rounds: int) -> dict:
    """generate()'s wall time per step of the loop, by part (decoder.step, decoder.reset,
    sample_next, the rest), best of `rounds` runs."""
    prompt = torch.randint(3, VOCAB_SIZE, (model.config.max_context,), generator=torch.Generator().manual_seed(1)).tolist()
    spent: collections.Counter = collections.Counter()
    originals = {}

    def timed(owner, name: str, part: str) -> None:
        original = getattr(owner, name)
        originals[(owner, name)] = original

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(D.OnnxDecoder, "step", "step")
    timed(D.OnnxDecoder, "reset", "reset")
    timed(G, "sample_next", "sample")
    try:
        kwargs = dict(max_new_tokens=new_tokens, seed=0, num_variations=variations, backend="onnx", dtype=torch.qint8)
        G.generate(model, prompt, **dict(kwargs, max_new_tokens=20))  # sessions, warm
        best: dict | None = None
        for _ in range(rounds):
            spent.clear()
            start = time.perf_counter()
            G.generate(model, prompt, **kwargs)
            total = time.perf_counter() - start
            split = {part: round(1e3 * spent[part] / new_tokens, 4) for part in ("step", "reset", "sample")}
            split["rest"] = round(1e3 * (total - sum(spent.values())) / new_tokens, 4)
            split["total"] = round(1e3 * total / new_tokens, 4)
            if best is None or split["total"] < best["total"]:
                best = split
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
    return best


def sampler_us(streamed_mb: float, repeats: int) -> dict:
    """sample_next on one row (the CPU's numpy draw), warm and right after streaming the step's
    bytes; and, warm, both draws at generate()'s defaults and at the engine's top-p 0.95: numpy's
    and torch's (`_draw` on one torch thread, the CPU's draw before 2026-12-05)."""
    logits = torch.randn(1, VOCAB_SIZE)
    generator = torch.Generator().manual_seed(0)
    streamed = torch.ones(int(streamed_mb * 2**20) // 4)
    warm, cold = [], []
    for _ in range(repeats):
        streamed.sum()
        start = time.perf_counter()
        G.sample_next(logits, generator=generator)
        middle = time.perf_counter()
        G.sample_next(logits, generator=generator)
        cold.append(middle - start)
        warm.append(time.perf_counter() - middle)
    out = {"warm_us": round(1e6 * statistics.median(warm), 1), "after_streaming_the_step_bytes_us":
           round(1e6 * statistics.median(cold), 1)}
    threads = torch.get_num_threads()
    for label, top_p in (("defaults", 1.0), ("top_p_0.95", 0.95)):
        def numpy_draw():
            G.sample_next(logits, top_p=top_p, generator=generator)

        def torch_draw():
            torch.set_num_threads(1)
            G._draw(logits, 1.0, 0, top_p, 0.0, generator, None, None)
            torch.set_num_threads(threads)

        times = {"numpy": [], "torch_one_thread": []}
        for _ in range(repeats):  # interleaved
            for name, draw in (("numpy", numpy_draw), ("torch_one_thread", torch_draw)):
                draw()
                start = time.perf_counter()
                draw()
                times[name].append(time.perf_counter() - start)
        out[f"warm_us_{label}"] = {name: round(1e6 * statistics.median(t), 1) for name, t in times.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=600, help="ids per variation in the loop split")
    ap.add_argument("--rounds", type=int, default=2, help="loop runs per case (the best is kept)")
    ap.add_argument("--repeats", type=int, default=30, help="timings per figure elsewhere (the median is kept)")
    args = ap.parse_args()
    if not D.available():
        raise SystemExit("id_anatomy needs onnxruntime")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    os.environ["PERCEIVER_MUSIC_CACHE"] = tempfile.mkdtemp(prefix="bench-anatomy-")  # this run's random model
    model = bench_model(replace(default_config(), max_context=args.context), torch.device("cpu"))
    shapes = step_weight_shapes(model)
    sizes = step_bytes_mb(model, shapes)
    R = G.default_reset_latents(model.config.num_latents)
    import onnxruntime

    report = {
        "command": "python bench/id_anatomy.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": dict(machine(), onnxruntime=onnxruntime.__version__),
        "context": args.context,
        "threads": args.threads,
        "step_bytes_mb": sizes,
        "memory_read_gbps": {"step_sized": read_rate_gbps(sizes["total"], args.repeats),
                             "200_mb": read_rate_gbps(200, max(3, args.repeats // 5))},
        "step_graph": step_graph_ms(model, args.threads, args.repeats),
        "weight_products": weight_products(model, shapes, args.threads, args.repeats, (1, 4, R)),
        "loop_ms_per_step": {f"{v}_variations": loop_split(model, args.new_tokens, v, args.rounds) for v in (1, 4)},
        "sampler": sampler_us(sizes["total"], args.repeats * 5),
    }
    for key, total in (("", "total"), ("native_step_", "total_native_step")):
        report[f"{key}step_bytes_at_step_sized_rate_ms"] = round(
            sizes[total] / 1024 / report["memory_read_gbps"]["step_sized"] * 1e3, 4)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
