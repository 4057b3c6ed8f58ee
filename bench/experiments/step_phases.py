"""Where a native step's time goes, at 1 row and at 4 variations (BENCHMARKS.md, run 11).

    patch -o /tmp/step_phases.c perceiver_music/native/decode_step.c bench/experiments/step_phases.patch
    python bench/experiments/step_phases.py /tmp/step_phases.c --rounds 20

step_phases.patch times every task the step hands its two threads (clock_gettime around
run_task), by kind: the weight products, the cross-attend and the latent layers' attention; the
rest of a step (layer norms, RoPE, quantising the rows for the products) is its total less
those. This builds the patched copy as native_step_ab.py builds an edit, resets a decoder at 1
row and one at 4 variations over a random primer of 4,095 ids (bench_model's random weights, int8
weights and caches), and runs bursts of 40 steps of each in turn, reading all cached inputs and
448 latents as native_step_ab.py does. Prints the mean us per step of each part, as JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model  # noqa: E402
from native_step_ab import building_from  # noqa: E402
from native_step_parts import run_step  # noqa: E402

from perceiver_music.decode_onnx import NATIVE_INT8_CACHES, OnnxDecoder  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402

PARTS = ("total", "products", "cross_attention", "latent_attention")  # step_phases.patch's g_ns[0..3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patched", type=Path, help="decode_step.c with step_phases.patch applied")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = default_config()
    cfg.max_context = 4096
    model = bench_model(cfg, torch.device("cpu")).eval()
    primer = torch.randint(3, 300, (1, cfg.max_context - 1))
    decoders = {}
    with tempfile.TemporaryDirectory(prefix="step-phases-") as build:
        with building_from(args.patched.resolve(), Path(build)):
            for rows in (1, 4):
                decoder = OnnxDecoder(model, rows, precision="int8", threads=2, native_step=True,
                                      cache_type=NATIVE_INT8_CACHES)
                with torch.inference_mode():
                    decoder.reset(primer.expand(rows, -1), default_reset_latents(cfg.num_latents))
                decoder.native.rest()
                decoders[rows] = decoder
        lib = decoders[1].native.lib  # one library: its counters count whichever decoder steps
        lib.phase_report.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_long)]
        ns, calls = (ctypes.c_double * 8)(), (ctypes.c_long * 8)()
        per_step = {rows: [] for rows in decoders}
        for round_ in range(args.rounds):
            order = list(decoders.items())
            for rows, decoder in order if round_ % 2 else order[::-1]:
                run_step(decoder, True, 448)  # untimed: its worker wakes
                lib.phase_report(ns, calls)  # and the counters start from 0
                for _ in range(args.burst):
                    run_step(decoder, True, 448)
                lib.phase_report(ns, calls)
                per_step[rows].append(np.array(ns[:len(PARTS)]) / calls[0] / 1e3)
                decoder.native.rest()
    report = {}
    for rows, values in per_step.items():
        mean = np.mean(values, axis=0)
        report[f"{rows}_rows_us_per_step"] = {**{part: round(float(mean[i]), 1) for i, part in enumerate(PARTS)},
                                              "rest": round(float(mean[0] - mean[1:].sum()), 1)}
    print(json.dumps({"command": "python bench/experiments/step_phases.py " + " ".join(sys.argv[1:]),
                      "rounds": args.rounds, "burst": args.burst, **report}, indent=1))


if __name__ == "__main__":
    main()
