"""The native step at 1 row and at 4 variations with its data in cache and out of it (issue 13).

    python bench/cold_step.py --threads 2 --rounds 15

A step reads about 18 MB at 1 row and 24 MB at 4 variations (BENCHMARKS.md, run 11). A CPU
whose last-level cache keeps most of that between steps (this EPYC VM's 32 MB L3) makes the 1-row
step cheap, and so the 4-variation step dear beside it; a typical laptop's 8-16 MB L3 keeps
less. This bench times the shipped native step (random weights of the default model, int8
weights and caches, a random primer of --context ids; bench/native_step_ab.py's set-up) in the
ways below, the two decoders' order alternated round by round:

- "burst": steps back to back, as the other benches time them (the worker thread spinning);
- "warm": one step at a time, its worker asleep before it (as after a pause), data as the
  previous step left it;
- "after N MB": the same, after reading N MB of other memory (--evict, a list). Other data then
  take that much of the cache from the step's, as if the cache were that much smaller; at 128 MB
  (4x the L3) the step finds none of its data in any cache, the most a CPU with a smaller cache
  can lose. A laptop's own memory (its latency, its bandwidth) is not emulated.

"warm" less "burst" is what waking the worker costs a single step. Prints JSON: medians per way
and rows, and the 4-variation step over the 1-row step, round by round (quartiles), for each way.
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
from native_step_ab import quartiles  # noqa: E402
from native_step_parts import run_step  # noqa: E402

from perceiver_music.decode_onnx import NATIVE_INT8_CACHES, OnnxDecoder  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402

ROWS = (1, 4)


def single_steps_ms(decoder: OnnxDecoder, latents: int, count: int, evict: np.ndarray | None) -> float:
    """The median ms of `count` single steps, each after the worker was put to sleep and, with
    `evict`, after that buffer was read through."""
    times = []
    for _ in range(count):
        decoder.native.rest()
        if evict is not None:
            evict.max()  # reads every byte: the step's data leave the caches
        start = time.perf_counter()
        run_step(decoder, True, latents)
        times.append((time.perf_counter() - start) * 1e3)
    decoder.native.rest()
    return float(np.median(times))


def burst_ms(decoder: OnnxDecoder, latents: int, burst: int) -> float:
    run_step(decoder, True, latents)  # once untimed: its worker wakes
    start = time.perf_counter()
    for _ in range(burst):
        run_step(decoder, True, latents)
    elapsed = (time.perf_counter() - start) / burst * 1e3
    decoder.native.rest()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=448, help="latent slots read (448: a reset window's mean)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--singles", type=int, default=9, help="single steps a way, round and decoder")
    parser.add_argument("--burst", type=int, default=40)
    parser.add_argument("--evict", default="8,16,32,128", help="MB of other memory read before a step, a list")
    args = parser.parse_args()
    try:
        evict_mb = [int(mb) for mb in args.evict.split(",")]
    except ValueError:
        parser.error("--evict: a comma-separated list of MB")
    if args.rounds < 1 or args.singles < 1 or args.burst < 1 or min(evict_mb) < 1:
        parser.error("--rounds, --singles, --burst and --evict must be positive")
    ways = ["burst", "warm"] + [f"after {mb} MB" for mb in evict_mb]
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    cfg = default_config()
    cfg.max_context = args.context
    model = bench_model(cfg, torch.device("cpu")).eval()
    primer = torch.randint(3, 300, (1, args.context - 1))
    decoders = {}
    for rows in ROWS:
        decoder = OnnxDecoder(model, rows, precision="int8", threads=args.threads, native_step=True,
                              cache_type=NATIVE_INT8_CACHES)
        with torch.inference_mode():
            decoder.reset(primer.expand(rows, -1), default_reset_latents(cfg.num_latents))
        decoders[rows] = decoder
    buffers = {f"after {mb} MB": np.ones(mb << 20, dtype=np.uint8) for mb in evict_mb}
    times = {(way, rows): [] for way in ways for rows in ROWS}
    for round_ in range(args.rounds):
        order = ROWS if round_ % 2 == 0 else ROWS[::-1]
        for rows in order:
            decoder = decoders[rows]
            times["burst", rows].append(burst_ms(decoder, args.latents, args.burst))
            times["warm", rows].append(single_steps_ms(decoder, args.latents, args.singles, None))
            for way, buffer in buffers.items():
                times[way, rows].append(single_steps_ms(decoder, args.latents, args.singles, buffer))
    ms = {key: np.array(value) for key, value in times.items()}
    print(json.dumps({
        "command": "python bench/cold_step.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "context": args.context,
        "latents_read": args.latents,
        "rounds": args.rounds,
        "byte_products": "vnni" if decoders[1].native.vnni else "avx2",
        "threads": decoders[4].native.threads,
        "ms_median": {way: {f"{rows}_rows": round(float(np.median(ms[way, rows])), 3) for rows in ROWS}
                      for way in ways},
        "4_variations_over_1_row_by_round": {way: quartiles(ms[way, 4] / ms[way, 1]) for way in ways},
        "each_row_adds_ms_by_round": {way: quartiles((ms[way, 4] - ms[way, 1]) / 3) for way in ways},
    }, indent=1))


if __name__ == "__main__":
    main()
