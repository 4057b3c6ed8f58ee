"""Sampling on one torch thread against torch's own thread count, with the compiled CPU step (issue 13).

The generation loop alternates the compiled step (onnxruntime's threads) with the sampler
(torch ops on (rows, vocab) logits). A torch op that runs in parallel, such as a softmax over two
or more rows, leaves torch's OpenMP workers spinning for several ms after it, on the core that
the next step needs. generate.SAMPLE_ON_ONE_CPU_THREAD (the default) keeps the sampler off
torch's threads (on one torch thread until 2026-12-05, in numpy since); this measures it against
the sampler's torch ops on torch's threads, in one run:

  spin      CPU time the process spends in the 50 ms after one sample_next (rows, vocab)
            that sleeps; what is above a few tenths of a ms is workers spinning
  generate  ms per id of generate() with the engine's sampling settings (top-p 0.95, key
            hold) from the end of the longest shipped primer, onnx int8, at 1, 2 and 4
            variations; both modes per round, interleaved (each first in every other round),
            ratios paired per round; and whether both modes drew the same ids (they must)

    python bench/sampler_threads.py --threads 2 --rounds 5
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

from perceiver_music import generate as G  # noqa: E402
from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.engine import DEFAULT_KEY_HOLD  # noqa: E402
from perceiver_music.evaluate import load_eval_works  # noqa: E402
from perceiver_music.tokenizer import VOCAB_SIZE  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from generate import machine  # noqa: E402

MODES = {"one_thread": True, "torch_threads": False}


def spin_ms(rows: int, settle_s: float = 0.3, after_s: float = 0.05) -> float:
    logits = torch.randn(rows, VOCAB_SIZE)
    time.sleep(settle_s)  # any earlier spinning has ended
    start = time.process_time()
    G.sample_next(logits, top_p=0.95, generator=torch.Generator().manual_seed(0))
    time.sleep(after_s)
    return 1e3 * (time.process_time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--data", default=str(REPO / "assets" / "primers"),
                    help="a prepared DATA_DIR or a MIDI folder: its longest work is the primer")
    ap.add_argument("--threads", type=int, default=2, help="torch's threads (and onnxruntime's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=400, help="ids per variation per run")
    ap.add_argument("--variations", default="1,2,4")
    ap.add_argument("--backend", default="onnx", choices=["onnx", "eager"])
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.float().eval()
    works, _ = load_eval_works(args.data, split="test")
    primer = max(works, key=len)[-model.config.max_context:].tolist()
    counts = [int(v) for v in args.variations.split(",")]
    dtype = torch.qint8 if args.backend == "onnx" else torch.float16
    options = dict(seed=0, backend=args.backend, dtype=dtype, top_p=0.95, key_hold=DEFAULT_KEY_HOLD)
    G.generate(model, primer, max_new_tokens=20, num_variations=max(counts), **options)  # export, sessions

    spin = {}
    for mode, one in MODES.items():
        G.SAMPLE_ON_ONE_CPU_THREAD = one
        spin[mode] = {str(rows): round(float(np.median([spin_ms(rows) for _ in range(3)])), 2) for rows in counts}
    ms = {(v, mode): [] for v in counts for mode in MODES}
    ids = {}
    for round_ in range(args.rounds):
        for v in counts:
            order = list(MODES.items())
            for mode, one in order if round_ % 2 == 0 else order[::-1]:  # neither mode always first
                G.SAMPLE_ON_ONE_CPU_THREAD = one
                start = time.perf_counter()
                ids[(v, mode)] = G.generate(model, primer, max_new_tokens=args.new_tokens, num_variations=v, **options)
                ms[(v, mode)].append(1e3 * (time.perf_counter() - start) / args.new_tokens)
    G.SAMPLE_ON_ONE_CPU_THREAD = True

    def median(values) -> float:
        return round(float(np.median(values)), 3)

    runs = {}
    for v in counts:
        one, many = ms[(v, "one_thread")], ms[(v, "torch_threads")]
        runs[str(v)] = {
            "ms_per_id_one_thread": median(one),
            "ms_per_id_torch_threads": median(many),
            "torch_threads_over_one_thread": median(np.divide(many, one)),
            "per_round_ratio": [round(r, 2) for r in np.divide(many, one)],
            "same_ids": ids[(v, "one_thread")] == ids[(v, "torch_threads")],
        }
    print(json.dumps({
        "command": "python bench/sampler_threads.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "backend": args.backend,
        "context": model.config.max_context,
        "primer_ids": len(primer),
        "new_tokens_per_variation": args.new_tokens,
        "rounds": args.rounds,
        "spin_cpu_ms_in_50ms_after_sample_next": spin,
        "generate": runs,
    }, indent=1))


if __name__ == "__main__":
    main()
