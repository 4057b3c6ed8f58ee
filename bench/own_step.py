"""The whole decode step in kernels of our own, against onnxruntime's step, in one run (issue 13).

Two runtimes' steps take 1.5-1.65 ms at batch 1 here, and issue 13's 3x needs 0.92 ms or less
(BENCHMARKS.md). `bench/own_int8_products.py` found own AVX2 int8 weight products 2.2x faster
than onnxruntime's. This probe writes the rest of the step too and times the whole of it:
`bench/own_step.c` (AVX2 and FMA only, two threads), compiled here with gcc into a temporary
folder. It computes what decode_onnx.StepGraph computes, from the same weights and the same
caches, with its weight products in float32 or int8 (7-bit codes, one scale per output).

Caches: real ones, from a float32 reset over the end of the longest shipped primer
(step_variants.real_caches), batch 1.

Checked before timing:
- own float32 gives onnxruntime float32's logits and new K/V (largest absolute difference);
- own int8's next-id distribution stays near float32 (total variation, next to onnxruntime
  int8's).

Timed in interleaved rounds (a burst of steps each): onnxruntime int8 (shipped), onnxruntime
float32, own int8 and own float32.

With --loop-rounds, also generate() at batch 1, interleaved round by round: the eager CPU
setting, onnxruntime int8, and own int8 (OwnStepDecoder: the onnxruntime int8 decoder with its
step session replaced by the own step; resets, rings and the loop unchanged), on random weights
of `default_config()` at --context, as bench/compiled_vs_eager.py measures them.

Prints one JSON object: median step ms, each one's ratio to onnxruntime int8 within the round,
the checks, and the loop's tokens/s and ratios to the eager CPU setting.

The app does not use this step; it has no 4-variation form.

    python bench/own_step.py --threads 2 --rounds 20 --loop-rounds 3
    python bench/avx2_laptop.py -- python bench/own_step.py ... --no-native-bfloat16  # as on an AVX2 laptop
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402
from step_variants import bound, export_graphs, real_caches, total_variation  # noqa: E402

from perceiver_music import decode_onnx as D  # noqa: E402
from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402

SOURCE = REPO / "bench" / "own_step.c"
CODE_LIMIT = 63  # 7-bit codes: vpmaddubsw's pairs stay within 16 bits


def int8_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 form of a weight stored (N, K), output after output: 7-bit codes (N, K), one
    float32 scale per output, and each output's sum of codes."""
    scale = np.abs(w).max(1) / CODE_LIMIT
    scale[scale == 0] = 1.0
    codes = np.ascontiguousarray(np.clip(np.rint(w / scale[:, None]), -CODE_LIMIT, CODE_LIMIT).astype(np.int8))
    return codes, scale.astype(np.float32), codes.sum(1, dtype=np.int32)


class Weight(ctypes.Structure):
    _fields_ = [("K", ctypes.c_int32), ("N", ctypes.c_int32), ("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("colsum", ctypes.c_void_p), ("w", ctypes.c_void_p)]


class Norm(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class Block(ctypes.Structure):
    _fields_ = [("norm1", Norm), ("norm2", Norm), ("qkv", Weight), ("out", Weight), ("fc", Weight), ("proj", Weight)]


class Model(ctypes.Structure):
    _fields_ = [("d", ctypes.c_int32), ("heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("vocab", ctypes.c_int32), ("layers", ctypes.c_int32), ("latent_slots", ctypes.c_int32),
                ("positions", ctypes.c_int32),
                ("embedding", ctypes.c_void_p), ("cross_cos", ctypes.c_void_p), ("cross_sin", ctypes.c_void_p),
                ("self_cos", ctypes.c_void_p), ("self_sin", ctypes.c_void_p),
                ("q_norm", Norm), ("kv_norm", Norm), ("mlp_norm", Norm), ("final_norm", Norm),
                ("cross_q", Weight), ("cross_kv", Weight), ("cross_out", Weight), ("cross_fc", Weight),
                ("cross_proj", Weight), ("head", Weight), ("blocks", ctypes.POINTER(Block))]


class Step(ctypes.Structure):
    _fields_ = [("token", ctypes.c_int64), ("pos", ctypes.c_int64), ("slots", ctypes.c_int32),
                ("cross_k_t", ctypes.c_void_p), ("cross_v", ctypes.c_void_p), ("cross_mask", ctypes.c_void_p),
                ("latent_mask", ctypes.c_void_p), ("latent_k_t", ctypes.POINTER(ctypes.c_void_p)),
                ("latent_v", ctypes.POINTER(ctypes.c_void_p)), ("logits", ctypes.c_void_p),
                ("new_cross_k", ctypes.c_void_p), ("new_cross_v", ctypes.c_void_p),
                ("new_latent_k", ctypes.POINTER(ctypes.c_void_p)), ("new_latent_v", ctypes.POINTER(ctypes.c_void_p))]


class OwnStep:
    """The compiled step over one model's weights (float32 or int8); the arrays the C structs
    point into are kept here. point() names the caches of the next step."""

    def __init__(self, library: ctypes.CDLL, model, precision: str, threads: int) -> None:
        self.lib, self.keep = library, []
        self.context = library.create_context(threads)  # its buffers and worker thread
        if not self.context:
            raise MemoryError("own_step: no memory for a step context")
        weakref.finalize(self, library.destroy_context, self.context)
        graph = D.StepGraph(model).eval()
        m, c, cfg = model, model.cross, model.config
        d = cfg.d_model

        def array(t, dtype=np.float32) -> int:
            a = np.ascontiguousarray(t.detach().float().numpy() if isinstance(t, torch.Tensor) else t, dtype)
            self.keep.append(a)
            return a.ctypes.data

        def weight(t) -> Weight:
            w = t.detach().float().numpy()  # (N, K), as Linear stores it
            N, K = w.shape
            if precision == "float32":
                return Weight(K, N, None, None, None, array(w))
            codes, scale, colsum = int8_codes(w)
            return Weight(K, N, array(codes, np.int8), array(scale), array(colsum, np.int32), None)

        def norm(layer) -> Norm:
            return Norm(array(layer.weight), array(layer.bias))

        blocks = (Block * cfg.n_layers)(*[
            Block(norm(b.norm1), norm(b.norm2), weight(getattr(graph, f"qkv{i}")), weight(b.out.weight),
                  weight(b.mlp.fc.weight), weight(b.mlp.proj.weight)) for i, b in enumerate(m.blocks)])
        self.keep.append(blocks)
        self.model = Model(d, cfg.n_heads, d // cfg.n_heads, cfg.vocab_size, cfg.n_layers, cfg.num_latents,
                           graph.cross_cos.shape[0], array(m.tok_emb.weight), array(graph.cross_cos),
                           array(graph.cross_sin), array(graph.self_cos), array(graph.self_sin), norm(c.q_norm),
                           norm(c.kv_norm), norm(c.mlp_norm), norm(m.norm), weight(graph.cross_q),
                           weight(graph.cross_kv), weight(c.out.weight), weight(c.mlp.fc.weight),
                           weight(c.mlp.proj.weight), weight(m.head.weight), blocks)
        self.layers = cfg.n_layers
        self.step = Step()

    def point(self, token: int, pos: int, cross_k_t, cross_v, cross_mask, latent_mask, latent_k_t, latent_v,
              logits, new_cross_k, new_cross_v, new_latent_k, new_latent_v) -> None:
        """The next step's inputs and outputs: numpy arrays, one row (per-layer ones as lists)."""
        pointers = lambda arrays: (ctypes.c_void_p * self.layers)(*[a.ctypes.data for a in arrays])  # noqa: E731
        for array in (cross_k_t, cross_v, cross_mask, latent_mask, logits, new_cross_k, new_cross_v,
                      *latent_k_t, *latent_v, *new_latent_k, *new_latent_v):
            assert array.flags.c_contiguous and array.dtype == np.float32
        self.step = Step(token, pos, cross_mask.shape[-1], cross_k_t.ctypes.data, cross_v.ctypes.data,
                         cross_mask.ctypes.data, latent_mask.ctypes.data, pointers(latent_k_t), pointers(latent_v),
                         logits.ctypes.data, new_cross_k.ctypes.data, new_cross_v.ctypes.data,
                         pointers(new_latent_k), pointers(new_latent_v))
        self.pointed = (cross_k_t, cross_v, cross_mask, latent_mask, latent_k_t, latent_v, logits, new_cross_k,
                        new_cross_v, new_latent_k, new_latent_v)  # kept alive while pointed at

    def run(self) -> None:
        if self.lib.step(self.context, ctypes.byref(self.model), ctypes.byref(self.step)) != 0:
            raise ValueError("a size, token or position is beyond what bench/own_step.c handles")


class _OwnStepSession:
    """Stands in for a decoder's batch-1 step session: run_with_iobinding runs the own step on
    the decoder's own caches and output buffers (the binding is not read)."""

    def __init__(self, decoder: "OwnStepDecoder") -> None:
        self.decoder, self.bound_to = weakref.proxy(decoder), None  # no cycle: the decoder owns this

    def run_with_iobinding(self, _binding) -> None:
        d = self.decoder
        rows = (d.rows.k, d.rows.v, d.rows.mask)
        if self.bound_to is None or any(a is not b for a, b in zip(rows, self.bound_to)):  # a reset made new rings
            L = d.L
            d.own.point(0, 0, d.rows.k[0], d.rows.v[0], d.rows.mask, d.latent_mask,
                        [d.latent_k_t[i, 0] for i in range(L)], [d.latent_v[i, 0] for i in range(L)], d.logits[0],
                        d.new_cross_k[0], d.new_cross_v[0], [d.new_latent_k[i, 0] for i in range(L)],
                        [d.new_latent_v[i, 0] for i in range(L)])
            self.bound_to = rows
        d.own.step.token, d.own.step.pos = int(d.tokens[0]), int(d.pos[0])
        d.own.run()


class OwnStepDecoder(D.OnnxDecoder):
    """The engine's onnxruntime decoder at batch 1 with its step session replaced by the own step
    of the same precision: resets, rings and the loop are onnxruntime's and generate()'s,
    unchanged. The own worker thread sleeps through resets (it sleeps whenever idle for a few ms),
    so onnxruntime's threads have both cores there."""

    def __init__(self, model, library: ctypes.CDLL, threads: int, precision: str = "int8") -> None:
        super().__init__(model, 1, precision=precision, threads=threads)
        self.own = OwnStep(library, model, precision, threads)
        self.compiled = copy.copy(self.compiled)  # the shared sessions stay as they are
        self.compiled.step = _OwnStepSession(self)


def loop_rates(model, library: ctypes.CDLL, threads: int, rounds: int, new_tokens: int) -> dict:
    """Steady tokens/s of generate() at batch 1 (bench/generate.py's generation_rate, random
    weights, a random full-window primer), interleaved round by round: the eager CPU setting,
    onnxruntime int8 and the own int8 step."""
    import generate as bench_generate

    from perceiver_music import generate as G

    original = G.make_decoder

    def make_decoder(model, batch, *, use_cache, backend, dtype):
        if backend == "own":
            return OwnStepDecoder(model, library, threads)
        return original(model, batch, use_cache=use_cache, backend=backend, dtype=dtype)

    settings = {"eager_cpu_setting": {"backend": "eager", "dtype": torch.float16},
                "onnxruntime_int8": {"backend": "onnx", "dtype": torch.qint8},
                "own_int8": {"backend": "own", "dtype": torch.qint8}}
    cfg = model.config
    prompt = torch.randint(3, cfg.vocab_size, (cfg.max_context,), generator=torch.Generator().manual_seed(1)).tolist()
    rates = {name: [] for name in settings}
    plain = bench_generate.make_bench_decoder  # the prefill that generation_rate times apart
    G.make_decoder = make_decoder
    bench_generate.make_bench_decoder = lambda m, dtype, backend="eager", batch=1: (
        OwnStepDecoder(m, library, threads) if backend == "own" else plain(m, dtype, backend, batch))
    try:
        for name, kw in settings.items():  # warm-up: exports and first sessions
            bench_generate.generation_rate(model, prompt, 50, torch.device("cpu"), repeats=1, **kw)
        for _ in range(rounds):
            for name, kw in settings.items():
                steady = bench_generate.generation_rate(model, prompt, new_tokens, torch.device("cpu"), repeats=1,
                                                        **kw)[1]
                rates[name].append(round(steady, 1))
    finally:
        G.make_decoder, bench_generate.make_bench_decoder = original, plain
    over = lambda name: [round(a / b, 2) for a, b in zip(rates[name], rates["eager_cpu_setting"])]  # noqa: E731
    return {"tokens_per_s": rates,
            "median_tokens_per_s": {name: float(np.median(r)) for name, r in rates.items()},
            "median_over_eager_cpu_setting": {name: float(np.median(over(name))) for name in settings}}


def build(folder: Path) -> ctypes.CDLL:
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc not found")
    library = folder / "own_step.so"
    subprocess.run(["gcc", "-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-pthread", str(SOURCE), "-o", str(library)],
                   check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(library))
    lib.create_context.restype = ctypes.c_void_p
    lib.create_context.argtypes = [ctypes.c_int32]
    lib.destroy_context.argtypes = [ctypes.c_void_p]
    lib.context_threads.argtypes = [ctypes.c_void_p]
    lib.step.argtypes = [ctypes.c_void_p, ctypes.POINTER(Model), ctypes.POINTER(Step)]
    lib.run_products.argtypes = [ctypes.c_void_p, ctypes.POINTER(Weight), ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_int32, ctypes.c_int32]
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--data", default=str(REPO / "assets" / "primers"),
                    help="a prepared DATA_DIR or a MIDI folder: its longest work gives the caches")
    ap.add_argument("--threads", type=int, default=2, choices=(1, 2))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--burst", type=int, default=50, help="steps timed per runtime per round")
    ap.add_argument("--loop-rounds", type=int, default=0,
                    help="also generate() at batch 1 with the own step, against the eager CPU setting and "
                         "onnxruntime int8, this many interleaved rounds (random weights, --context)")
    ap.add_argument("--context", type=int, default=4096, help="the loop's model")
    ap.add_argument("--new-tokens", type=int, default=600, help="ids per loop measurement")
    ap.add_argument("--no-native-bfloat16", action="store_true",
                    help="the eager CPU setting without bfloat16 weights, as on a CPU without AVX512-BF16 or AMX")
    args = ap.parse_args()
    if args.no_native_bfloat16:
        from perceiver_music import cpu_precision

        cpu_precision.native_bfloat16 = lambda: False
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.float().eval()
    one, _ = real_caches(model, args.data, args.threads)
    runs, outputs = {}, {}
    with tempfile.TemporaryDirectory(prefix="own-step-") as folder:
        files = export_graphs(model, Path(folder), ["int8"])
        keep = []
        for precision in ("int8", "float32"):
            sess = D.cpu_session(files[(precision, "step")], args.threads)
            binding, values = bound(sess, one, False)
            keep.append(values)
            sess.run_with_iobinding(binding)
            runs[f"onnxruntime_{precision}"] = lambda s=sess, b=binding: s.run_with_iobinding(b)
            outputs[f"onnxruntime_{precision}"] = binding.copy_outputs_to_cpu()
        try:
            library = build(Path(folder))
        except (RuntimeError, subprocess.CalledProcessError) as error:
            raise SystemExit(f"own_step: cannot build the kernels: {error}")
    L, d = model.config.n_layers, model.config.d_model
    own_steps = {}
    for precision in ("int8", "float32"):
        own = own_steps[precision] = OwnStep(library, model, precision, args.threads)
        out = [np.zeros(model.config.vocab_size, np.float32), np.zeros(d, np.float32), np.zeros(d, np.float32),
               [np.zeros(d, np.float32) for _ in range(L)], [np.zeros(d, np.float32) for _ in range(L)]]
        caches = {name: np.ascontiguousarray(a) for name, a in one.items()}
        own.point(int(caches["tokens"][0]), int(caches["pos"][0]), caches["cross_k_t"], caches["cross_v"],
                  caches["cross_mask"], caches["latent_mask"], [caches[f"latent_k_t{i}"] for i in range(L)],
                  [caches[f"latent_v{i}"] for i in range(L)], *out)
        own.run()
        runs[f"own_{precision}"] = own.run
        outputs[f"own_{precision}"] = [out[0][None], out[1], out[2], *[a for pair in zip(out[3], out[4]) for a in pair]]
    reference, mine = outputs["onnxruntime_float32"], outputs["own_float32"]
    checks = {
        "own_float32_logits_max_abs_diff": float(np.abs(mine[0] - reference[0]).max()),
        "own_float32_new_kv_max_abs_diff": max(float(np.abs(a.reshape(-1) - b.reshape(-1)).max())
                                               for a, b in zip(mine[1:], reference[1:])),
        "own_int8_next_id_total_variation_vs_float32": total_variation(outputs["own_int8"][0], reference[0]),
        "onnxruntime_int8_next_id_total_variation_vs_float32": total_variation(outputs["onnxruntime_int8"][0],
                                                                               reference[0]),
    }
    ms = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for _ in range(3):
                run()
            if not name.startswith("own"):  # the own workers asleep, not spinning beside onnxruntime
                time.sleep(0.01)
            start = time.perf_counter()
            for _ in range(args.burst):
                run()
            ms[name].append(1e3 * (time.perf_counter() - start) / args.burst)
    loop = None
    if args.loop_rounds:
        os.environ["PERCEIVER_MUSIC_CACHE"] = tempfile.mkdtemp(prefix="own-step-loop-")  # this run's random model
        bench = bench_model(replace(default_config(), max_context=args.context), torch.device("cpu"))
        loop = dict(context=args.context, new_tokens=args.new_tokens, rounds=args.loop_rounds,
                    **loop_rates(bench, library, args.threads, args.loop_rounds, args.new_tokens))
    import onnxruntime

    print(json.dumps({
        "command": "python bench/own_step.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": dict(machine(), onnxruntime=onnxruntime.__version__),
        "context": model.config.max_context,
        "cached_inputs": int(one["cross_mask"].shape[0]),
        "threads": args.threads,
        "rounds": args.rounds,
        "checks": checks,
        "step_ms": {name: round(float(np.median(values)), 4) for name, values in ms.items()},
        "over_onnxruntime_int8": {name: round(float(np.median(np.divide(values, ms["onnxruntime_int8"]))), 3)
                                  for name, values in ms.items()},
        "bfloat16_switched_off": bool(args.no_native_bfloat16),
        "loop": loop,
    }, indent=1))


if __name__ == "__main__":
    main()
