"""Four variations against one along a long continuation, as the primer slides out (issue 13).

bench/generate.py times the steps right after the primer. Past a full window the primer slides
out of it one input per id, while the variations' own inputs take its place: 4 variations keep
its K/V once for all rows (the shared ring) and theirs per row. The step and the reset read
only the shared slots the primer still holds; up to commit 2f5093b they read every slot it ever
held (masked once slid out), so their cross-attend grew with the ids generated.

This bench decodes ids up to the last of --checkpoints after a random primer of --context - 1
ids (random weights of `default_config()`, bench/generate.py's bench_model; int8, the engine's
default; the native step), at 1 row and with 4 variations, on the generation loop's schedule.
At each checkpoint it times, round by round in rotated order:
  step_ms           the native step alone (NativeStep.run over the decoders' caches as they
                    are): 1 row; 4 variations reading the primer's slots it still holds (as
                    now); and 4 variations reading every slot it held (what the step read before)
  latents_graph_ms  onnxruntime's latents graph of a continued reset over 4 variations' inputs as
                    now (the slots held) and as before (every slot held), and over 1 row's
and reports medians and each round's ratios: median (quartiles) over --rounds rounds.

    python bench/long_variations.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402

from perceiver_music.decode_onnx import OnnxDecoder  # noqa: E402
from perceiver_music.generate import TokenWindow, default_reset_latents  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402


def advance(decoder: OnnxDecoder, window: TokenWindow, ids: int, R: int, g: torch.Generator) -> None:
    """`ids` more random ids per row, a step each or a reset once the latents are all cached."""
    with torch.inference_mode():
        for _ in range(ids):
            tokens = torch.randint(3, 300, (decoder.batch,), generator=g)
            window.append(tokens)
            if decoder.latent_slot >= decoder.N:
                decoder.reset(window.view(), R)
            else:
                decoder.step(tokens, window.view())


def step_ms(decoder: OnnxDecoder, span: tuple[int, int], burst: int) -> float:
    """The native step over the caches as they are, reading the shared slots span = (first,
    count); nothing is stored. Once untimed (its worker wakes), and its worker put to sleep after,
    so that it does not spin beside what is timed next."""
    first, count = span
    step = lambda: decoder.native.run(int(decoder.pos[0]), 5, cross_used=decoder.rows.used,  # noqa: E731
                                      latent_used=decoder.latent_slot, shared_used=count, shared_from=first)
    step()
    t0 = time.perf_counter()
    for _ in range(burst):
        step()
    ms = (time.perf_counter() - t0) / burst * 1e3
    decoder.native.rest()
    return ms


def every_slot_held(decoder: OnnxDecoder) -> tuple:
    """The latents graph's cross-attend inputs as _attended_inputs made them up to 2f5093b:
    every shared slot ever written (masked where the primer slid out), then the rows' own."""
    shared, own, rows = decoder.shared, decoder.rows, decoder.batch
    S1, S2 = shared.used, own.used
    k_t, v = shared.keys_t(S1), shared.values(S1)
    k_t = np.concatenate((np.broadcast_to(k_t, (rows, *k_t.shape[1:])), own.keys_t(S2, rows)), axis=-1)
    v = np.concatenate((np.broadcast_to(v, (rows, *v.shape[1:])), own.values(S2, rows)), axis=-2)
    return k_t, v, np.concatenate((shared.pos[:S1], own.pos[:S2]))


def latents_ms(decoder: OnnxDecoder, inputs: tuple, n: int) -> float:
    """onnxruntime's latents graph of a reset with n latents over these cross-attend inputs."""
    k_t, v, slot_pos = inputs
    feeds = {"latent_ids": np.full((k_t.shape[0], n), 5, np.int64),
             "q_pos": np.arange(int(decoder.pos[0]) - n, int(decoder.pos[0]), dtype=np.int64),
             "cross_k_t": k_t, "cross_v": v, "slot_pos": slot_pos}
    t0 = time.perf_counter()
    decoder.compiled.latents.run(None, feeds)
    return (time.perf_counter() - t0) * 1e3


def spread(values: list[float]) -> dict:
    q = np.percentile(values, [25, 50, 75])
    return {"median": round(float(q[1]), 2), "quartiles": [round(float(q[0]), 2), round(float(q[2]), 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[128, 1024, 2048, 3072],
                        help="ids generated when each is measured, ascending")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--burst", type=int, default=30)
    args = parser.parse_args()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    torch.set_num_threads(args.threads)
    cfg = default_config()
    cfg.max_context = args.context
    model = bench_model(cfg, torch.device("cpu")).eval()
    R = default_reset_latents(cfg.num_latents)
    primer = torch.randint(3, 300, (1, args.context - 1), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    decoders, windows = {}, {}
    for rows in (1, 4):
        decoder = OnnxDecoder(model, rows, precision="int8", threads=args.threads, native_step=True)
        windows[rows] = TokenWindow(primer.expand(rows, -1).contiguous(), rows, args.context, torch.device("cpu"))
        with torch.inference_mode():
            decoder.reset(windows[rows].view(), R)
        decoders[rows] = decoder
    one, four = decoders[1], decoders[4]
    points, done = [], 0
    for checkpoint in args.checkpoints:
        for rows in (1, 4):
            advance(decoders[rows], windows[rows], checkpoint - done, R, g)
        done = checkpoint
        held, written = four.shared.cached_span(), (0, four.shared.used)
        step_cases = {"1_row": lambda: step_ms(one, (0, 0), args.burst),
                      "4_variations": lambda: step_ms(four, held, args.burst),
                      "4_variations_every_slot_held": lambda: step_ms(four, written, args.burst)}
        graph_inputs = {"1_row": one._attended_inputs(1), "4_variations": four._attended_inputs(4),
                        "4_variations_every_slot_held": every_slot_held(four)}
        graph_cases = {name: (lambda d=(one if name == "1_row" else four), i=inputs: latents_ms(d, i, R))
                       for name, inputs in graph_inputs.items()}
        names = list(step_cases)
        steps: dict = {name: [] for name in names}
        graphs: dict = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % 3:] + names[: r % 3]:
                steps[name].append(step_cases[name]())
                graphs[name].append(graph_cases[name]())

        def ratios(times: dict, top: str, bottom: str) -> dict:
            return spread([a / b for a, b in zip(times[top], times[bottom])])

        points.append({
            "ids_generated": checkpoint,
            "shared_slots_held": held[1], "shared_slots_ever_written": written[1], "own_slots": four.rows.used,
            "step_ms": {name: round(float(np.median(v)), 3) for name, v in steps.items()},
            "step_4_variations_over_1_row": ratios(steps, "4_variations", "1_row"),
            "step_before_over_1_row": ratios(steps, "4_variations_every_slot_held", "1_row"),
            "step_now_over_before": ratios(steps, "4_variations", "4_variations_every_slot_held"),
            "latents_graph_ms": {name: round(float(np.median(v)), 1) for name, v in graphs.items()},
            "latents_graph_now_over_before": ratios(graphs, "4_variations", "4_variations_every_slot_held"),
        })
    print(json.dumps({"bench": "long_variations", "started": started, "machine": machine(), "threads": args.threads,
                      "context": args.context, "reset_latents": R, "rounds": args.rounds, "points": points},
                     indent=1))


if __name__ == "__main__":
    main()
