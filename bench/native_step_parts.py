"""What the native step's time is made of, at 1 row and at 4 variations (issue 13).

Issue 13 asks 4 variations to cost at most 2x one variation per step. This bench splits the
native int8 step into its parts by running it over fewer cached slots than it holds: the
decoder is reset over a full window of `--context` ids (random weights of `default_config()`,
bench/generate.py's bench_model; 4 variations of one primer share its inputs), then the step
runs with the cross-attend reading none or all of its inputs, and the latent layers reading 0,
256 or 512 cached latents. With neither, what is left is the weight products (and the small
per-row work). The differences give what the cross-attend and the latent caches cost at 1 and
at 4 rows; the ratio at every point is the 4-variation step over the 1-row one. Every case is
timed with the caches in each of float32, float16 and int8 codes (cache_codes.py), so that what
the smaller caches save is measured in the same run (the top level: the caches int8 runs keep,
decode_onnx.NATIVE_INT8_CACHES); on a CPU with VNNI once more, with AVX2's byte products
(PERCEIVER_MUSIC_NATIVE_VNNI=0, what an AVX2-only CPU runs) over those caches, against the VNNI
products the step uses there; and on a CPU with AVX-512 VNNI and AVX-VNNI, built as a laptop
with AVX-VNNI builds it (PERCEIVER_MUSIC_NATIVE_VNNI=avx_vnni: 256-bit byte products, no
AVX-512 kernels).

Prints one JSON object: median ms per case (--repeats runs of --burst steps each), the ratios,
and the bytes each part reads per step.

    python bench/native_step_parts.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402

from perceiver_music import native_step  # noqa: E402
from perceiver_music.decode_onnx import CACHE_TYPES, NATIVE_INT8_CACHES, OnnxDecoder  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402

LATENTS_READ = (0, 256, 512)


def run_step(decoder: OnnxDecoder, cross: bool, latents: int) -> None:
    """One native step reading all cached inputs or none and the first `latents` latent slots
    (it writes its outputs only, no cache slot: every run reads the same caches)."""
    rows, (shared_from, shared) = (decoder.rows.used, decoder.shared.cached_span()) if cross else (0, (0, 0))
    decoder.native.run(int(decoder.pos[0]), 5, cross_used=rows, latent_used=latents, shared_used=shared,
                       shared_from=shared_from)


def step_ms(decoder: OnnxDecoder, cross: bool, latents: int, burst: int, repeats: int) -> float:
    """run_step's median ms over `repeats` bursts."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(burst):
            run_step(decoder, cross, latents)
        times.append((time.perf_counter() - start) / burst * 1e3)
        decoder.native.rest()  # its worker must not spin beside the next decoder's steps
    return round(float(np.median(times)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = default_config()
    cfg.max_context = args.context
    model = bench_model(cfg, torch.device("cpu")).eval()
    R = default_reset_latents(cfg.num_latents)
    primer = torch.randint(3, 300, (1, args.context - 1))
    variants = [(cache, cache, "1") for cache in CACHE_TYPES]  # (name, cache type, VNNI_SWITCH)
    best = native_step.vnni_flags()
    if best:
        variants.append(("avx2_products", NATIVE_INT8_CACHES, "0"))
    if native_step.avx_vnni_build_differs():
        variants.append(("avx_vnni_products", NATIVE_INT8_CACHES, "avx_vnni"))
    decoders = {}
    for name, cache_type, switch in variants:
        os.environ[native_step.VNNI_SWITCH] = switch
        for rows in (1, 4):
            decoder = OnnxDecoder(model, rows, precision="int8", threads=args.threads, native_step=True,
                                  cache_type=cache_type)
            with torch.inference_mode():
                decoder.reset(primer.expand(rows, -1), R)
            decoders[rows, name] = decoder
    os.environ.pop(native_step.VNNI_SWITCH)
    ms: dict = {key: {} for key in decoders}
    for cross in (False, True):  # interleaved: every decoder's case measured back to back
        for latents in LATENTS_READ:
            case = f"cross_{'all' if cross else 'none'}_latents_{latents}"
            for key, decoder in decoders.items():
                ms[key][case] = step_ms(decoder, cross, latents, args.burst, args.repeats)
    one, four = decoders[1, NATIVE_INT8_CACHES], decoders[4, NATIVE_INT8_CACHES]
    d, L = cfg.d_model, cfg.n_layers
    size = one.rows.k.itemsize  # bytes per cached value (int8: and a 4-byte scale per head_dim values)
    out = {
        "command": "python bench/native_step_parts.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "context": args.context,
        "cached_inputs": one.cached,
        "cache_type": NATIVE_INT8_CACHES,
        "cache_bytes_per_value": size,
        "byte_products": "vnni" if one.native.vnni else "avx2",
        "native_step_flags": " ".join(best),
        **parts(ms, NATIVE_INT8_CACHES),
        "caches": {cache: parts(ms, cache) for cache in CACHE_TYPES},
        "over_float32_caches": {cache: over(ms, cache, "float32") for cache in CACHE_TYPES if cache != "float32"},
        "mb_read_per_step": {
            "weights_int8": round(sum(w.N * w.K for w in weight_list(one)) / 1e6, 2),
            **{f"cross_attend_kv_shared_{cache}": round(2 * one.cached * d * cache_bytes(cache, one) / 1e6, 2)
               for cache in CACHE_TYPES},
            **{f"latent_kv_512_per_row_{cache}": round(2 * L * 512 * d * cache_bytes(cache, one) / 1e6, 2)
               for cache in CACHE_TYPES},
        },
        "threads": four.native.threads,
    }
    if (1, "avx2_products") in decoders:
        out["avx2_byte_products"] = parts(ms, "avx2_products")
        out["vnni_over_avx2_byte_products"] = over(ms, NATIVE_INT8_CACHES, "avx2_products")
    if (1, "avx_vnni_products") in decoders:
        out["avx_vnni_byte_products"] = parts(ms, "avx_vnni_products")
        out["avx512_over_avx_vnni"] = over(ms, NATIVE_INT8_CACHES, "avx_vnni_products")
    print(json.dumps(out, indent=1))


def parts(ms: dict, name: str) -> dict:
    """One variant's ms at 1 row and 4 variations, and their ratio, case by case."""
    one, four = ms[1, name], ms[4, name]
    return {"ms_1_row": one, "ms_4_variations": four,
            "4_variations_over_1_row": {case: round(four[case] / one[case], 2) for case in one}}


def over(ms: dict, name: str, baseline: str) -> dict:
    """Variant `name`'s ms over `baseline`'s, case by case, at 1 row and at 4 variations."""
    return {label: {case: round(ms[rows, name][case] / ms[rows, baseline][case], 2) for case in ms[rows, name]}
            for label, rows in (("1_row", 1), ("4_variations", 4))}


def cache_bytes(cache_type: str, decoder: OnnxDecoder) -> float:
    """Bytes per cached value, int8's scale (4 bytes per head's values) included."""
    size = np.dtype(CACHE_TYPES[cache_type]).itemsize
    return size + 4 / decoder.rows.head_dim if cache_type == "int8" else size


def weight_list(decoder: OnnxDecoder) -> list:
    """The Weight structs of the native step's model (for their sizes)."""
    m = decoder.native.weights.struct
    blocks = [m.blocks[i] for i in range(decoder.L)]
    return [m.cross_q, m.cross_kv, m.cross_out, m.cross_fc, m.cross_proj, m.head] + [
        getattr(b, name) for b in blocks for name in ("qkv", "out", "fc", "proj")]


if __name__ == "__main__":
    main()
