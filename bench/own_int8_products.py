"""Own AVX2 kernels for the step's weight products, against onnxruntime's, in one run (issue 13).

Issue 13's 3x needs a step nearly twice as fast as onnxruntime's or OpenVINO's (BENCHMARKS.md),
and most of the gap to the machine's read rate is in the weight products: onnxruntime's int8
products at one row read their weights at about half the rate that float32 products stream at.
This probe asks what kernels of our own would give for that part. It uses AVX2 only, with no
AVX-512 and no VNNI, as on any x86 laptop.

The weight products of the native step (perceiver_music/native/decode_step.c, built as the
engine builds it: native_step.load_library) run alone over the step's 30 weight shapes at one row: 7-bit codes, one scale
per output column, the row quantised to bytes with a scale and zero point for each product, on
two threads (a worker spinning between products). The same shapes are timed in the same run
through onnxruntime's shipped int8 products and its float32 products (bench/id_anatomy.py's
weight_products).

Correctness, checked before timing: the kernel's outputs equal a numpy emulation of the same
integer arithmetic (to float rounding), and stay within 3 % (relative norm) of the float32
products.

Prints one JSON object: ms per step's worth of products (all 30 once) for each, the weights'
GB/s, and the ratio to onnxruntime int8.

    python bench/own_int8_products.py --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402
from id_anatomy import step_weight_shapes, weight_products  # noqa: E402

from perceiver_music.model import default_config  # noqa: E402
from perceiver_music.native_step import Unavailable, Weight, int8_codes, load_library  # noqa: E402



class Kernels:
    """decode_step.c's weight products, and the arrays they point into (kept alive here)."""

    def __init__(self, threads: int) -> None:
        self.lib = load_library()
        self.context = self.lib.create_context(threads)
        if not self.context:
            raise RuntimeError("no memory for a context")
        self.arrays: list = []

    def close(self) -> None:
        self.lib.destroy_context(self.context)

    def products(self, weights: list[np.ndarray], rows: list[np.ndarray]) -> tuple:
        """(table, outputs, codes, scales) for float32 weights (K, N) and rows (K,)."""
        table = (Weight * len(weights))()
        outputs, all_codes, all_scales = [], [], []
        for i, w in enumerate(weights):
            K, N = w.shape
            codes, scale, colsum = int8_codes(w.T)
            self.arrays += [codes, scale, colsum]
            table[i] = Weight(K, N, codes.ctypes.data, scale.ctypes.data, colsum.ctypes.data, None)
            outputs.append(np.zeros(N, np.float32))
            all_codes.append(codes)
            all_scales.append(scale)
        rows = [np.ascontiguousarray(x, np.float32) for x in rows]
        self.arrays += [rows, outputs]
        pointers = lambda arrays: (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])  # noqa: E731
        return (table, pointers(rows), pointers(outputs)), outputs, all_codes, all_scales

    def run(self, table: tuple, repeats: int) -> None:
        weights, rows, outputs = table
        if self.lib.run_products(self.context, weights, rows, outputs, len(weights), repeats) != 0:
            raise ValueError("a product's K is not a multiple of 32")


def emulated(x: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in numpy: the same float32 quantisation, exact integer sums."""
    low, high = np.float32(min(x.min(), 0)), np.float32(max(x.max(), 0))
    sx = (high - low) / np.float32(255) if high > low else np.float32(1)
    zero = int(np.rint(-low / sx))
    xq = np.clip(np.rint(x * (np.float32(1) / sx)) + zero, 0, 255).astype(np.int64)
    sums = codes.astype(np.int64) @ xq - zero * codes.sum(1, dtype=np.int64)
    return (sx * scale * sums.astype(np.float32)).astype(np.float32)


def check(kernels: Kernels, shapes: list[tuple[int, int]]) -> dict:
    """Run every shape once on random weights and rows; compare with numpy."""
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32) for k, n in shapes]
    rows = [rng.standard_normal(k).astype(np.float32) for k, _ in shapes]
    table, outputs, codes, scales = kernels.products(weights, rows)
    kernels.run(table, 1)
    to_emulation = max(float(np.abs(y - emulated(x, c, s)).max() / np.abs(y).max())
                       for y, x, c, s in zip(outputs, rows, codes, scales))
    to_float32 = max(float(np.linalg.norm(y - x @ w) / np.linalg.norm(x @ w))
                     for y, x, w in zip(outputs, rows, weights))
    return {"max_error_vs_emulation": to_emulation, "max_relative_error_vs_float32": round(to_float32, 5)}


def own_ms(kernels: Kernels, shapes: list[tuple[int, int]], repeats: int) -> float:
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal((k, n)).astype(np.float32) for k, n in shapes]
    rows = [rng.standard_normal(k).astype(np.float32) for k, _ in shapes]
    table = kernels.products(weights, rows)[0]
    kernels.run(table, 20)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernels.run(table, 20)
        times.append((time.perf_counter() - start) / 20)
    return round(1e3 * float(np.median(times)), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, choices=(1, 2), help="the own kernels run on 1 or 2")
    ap.add_argument("--context", type=int, default=4096, help="the bench model's (shapes do not depend on it)")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    model = bench_model(replace(default_config(), max_context=args.context), torch.device("cpu"))
    shapes = step_weight_shapes(model)
    n_weights = sum(k * n for k, n in shapes)
    try:
        kernels = Kernels(args.threads)
    except Unavailable as error:
        raise SystemExit(f"own_int8_products: {error}")
    try:
        correctness = check(kernels, shapes)
        own = own_ms(kernels, shapes, args.repeats)
    finally:
        kernels.close()
    time.sleep(0.01)  # the own worker asleep before onnxruntime is timed
    shipped = weight_products(model, shapes, args.threads, args.repeats, (1,))
    gbps = lambda ms, bytes_per_weight: round(n_weights * bytes_per_weight / 2**30 / (ms / 1e3), 1)  # noqa: E731
    print(json.dumps({
        "command": "python bench/own_int8_products.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "threads": args.threads,
        "products": len(shapes),
        "weights": n_weights,
        "correctness": correctness,
        "ms_per_step_of_products": {"own_avx2_int8": own, "onnxruntime_int8": shipped["int8_rows1_ms"],
                                    "onnxruntime_float32": shipped["float32_rows1_ms"]},
        "weights_gbps": {"own_avx2_int8": gbps(own, 1), "onnxruntime_int8": gbps(shipped["int8_rows1_ms"], 1),
                         "onnxruntime_float32": gbps(shipped["float32_rows1_ms"], 4)},
        "own_over_onnxruntime_int8": round(own / shipped["int8_rows1_ms"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
