"""What the native step's time is made of, at 1 row and at 4 variations (issue 13).

Issue 13 asks 4 variations to cost at most 2x one variation per step. This bench splits the
native int8 step into its parts by running it over fewer cached slots than it holds: the
decoder is reset over a full window of `--context` ids (random weights of `default_config()`,
bench/generate.py's bench_model; 4 variations of one primer share its inputs), then the step
runs with the cross-attend reading none or all of its inputs, and the latent layers reading 0,
256 or 512 cached latents. With neither, what is left is the weight products (and the small
per-row work). The differences give what the cross-attend and the latent caches cost at 1 and
at 4 rows; the ratio at every point is the 4-variation step over the 1-row one. Every case is
timed twice: with the caches in float16 (what int8 runs keep) and in float32 (before
2026-12-05), so that what float16 caches save is measured in the same run.

Prints one JSON object: median ms per case (--repeats runs of --burst steps each), the ratios,
and the bytes each part reads per step.

    python bench/native_step_parts.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402

from perceiver_music.decode_onnx import OnnxDecoder  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402

LATENTS_READ = (0, 256, 512)


def step_ms(decoder: OnnxDecoder, cross: bool, latents: int, burst: int, repeats: int) -> float:
    """The native step's median ms over `repeats` bursts, reading all cached inputs or none and
    the first `latents` latent slots (it writes its outputs only, no cache slot: every run reads
    the same caches)."""
    pos = int(decoder.pos[0])
    rows, shared = (decoder.rows.used, decoder.shared.used) if cross else (0, 0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(burst):
            decoder.native.run(pos, 5, cross_used=rows, latent_used=latents, shared_used=shared)
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
    decoders = {}
    for half in (True, False):
        for rows in (1, 4):
            decoder = OnnxDecoder(model, rows, precision="int8", threads=args.threads, native_step=True,
                                  half_caches=half)
            with torch.inference_mode():
                decoder.reset(primer.expand(rows, -1), R)
            decoders[rows, half] = decoder
    ms: dict = {key: {} for key in decoders}
    for cross in (False, True):  # interleaved: every decoder's case measured back to back
        for latents in LATENTS_READ:
            case = f"cross_{'all' if cross else 'none'}_latents_{latents}"
            for key, decoder in decoders.items():
                ms[key][case] = step_ms(decoder, cross, latents, args.burst, args.repeats)
    one, four = decoders[1, True], decoders[4, True]
    d, L = cfg.d_model, cfg.n_layers
    half = one.rows.k.itemsize  # bytes per cached value
    out = {
        "command": "python bench/native_step_parts.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "context": args.context,
        "cached_inputs": one.cached,
        "cache_bytes_per_value": half,
        "ms_1_row": ms[1, True],
        "ms_4_variations": ms[4, True],
        "4_variations_over_1_row": {case: round(ms[4, True][case] / ms[1, True][case], 2) for case in ms[1, True]},
        "float32_caches": {
            "ms_1_row": ms[1, False],
            "ms_4_variations": ms[4, False],
            "4_variations_over_1_row": {case: round(ms[4, False][case] / ms[1, False][case], 2)
                                        for case in ms[1, False]},
        },
        "float16_over_float32_caches": {
            name: {case: round(ms[rows, True][case] / ms[rows, False][case], 2) for case in ms[rows, True]}
            for name, rows in (("1_row", 1), ("4_variations", 4))},
        "mb_read_per_step": {
            "weights_int8": round(sum(w.N * w.K for w in weight_list(one)) / 1e6, 2),
            "cross_attend_kv_shared": round(2 * one.cached * d * half / 1e6, 2),
            "latent_kv_512_per_row": round(2 * L * 512 * d * half / 1e6, 2),
        },
        "threads": four.native.threads,
    }
    print(json.dumps(out, indent=1))


def weight_list(decoder: OnnxDecoder) -> list:
    """The Weight structs of the native step's model (for their sizes)."""
    m = decoder.native.weights.struct
    blocks = [m.blocks[i] for i in range(decoder.L)]
    return [m.cross_q, m.cross_kv, m.cross_out, m.cross_fc, m.cross_proj, m.head] + [
        getattr(b, name) for b in blocks for name in ("qkv", "out", "fc", "proj")]


if __name__ == "__main__":
    main()
