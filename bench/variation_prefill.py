"""What the compiled decoder's prefill costs with variations, computed once or once per row (issue 13).

generate(num_variations=V) starts V rows from one primer: the prefill (the first reset) is the
same window in every row. OnnxDecoder computes it for one row and broadcasts the K/V and
logits (`identical_rows_once`, the default); this times that against computing every row, as
before, in one run. The window is the end of the longest shipped primer (max_context ids at
most), R latents, the engine's precision for one prompt's variations (int8). Each round times
every (rows, mode) pair once, interleaved, so slow spells fall on all of them; the ratios are
paired per round.

Prints one JSON object: per row count, the median prefill ms of both modes, their paired ratio,
and the largest difference between the two modes' logits.

    python bench/variation_prefill.py --threads 2 --rounds 15
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

from perceiver_music import decode_onnx as D  # noqa: E402
from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.evaluate import load_eval_works  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from generate import machine  # noqa: E402

MODES = {"once": True, "every_row": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--data", default=str(REPO / "assets" / "primers"),
                    help="a prepared DATA_DIR or a MIDI folder: its longest work is the primer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rows", default="1,2,4", help="comma-separated variation counts (1: the two modes are one, a noise check)")
    ap.add_argument("--precision", default="int8", choices=D.PRECISIONS)
    args = ap.parse_args()
    if not D.available():
        raise SystemExit("variation_prefill needs onnxruntime")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.float().eval()
    cfg = model.config
    works, _ = load_eval_works(args.data, split="test")
    primer = torch.as_tensor(max(works, key=len)[-cfg.max_context:]).long()
    R = default_reset_latents(cfg.num_latents)
    counts = [int(c) for c in args.rows.split(",")]
    decoders = {(rows, mode): D.OnnxDecoder(model, rows, precision=args.precision, threads=args.threads,
                                            identical_rows_once=once)
                for rows in counts for mode, once in MODES.items()}
    windows = {rows: primer.repeat(rows, 1) for rows in counts}
    logits = {key: decoder.reset(windows[key[0]], R) for key, decoder in decoders.items()}  # warm-up
    ms = {key: [] for key in decoders}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for key, decoder in decoders.items():
                start = time.perf_counter()
                decoder.reset(windows[key[0]], R)
                ms[key].append(1e3 * (time.perf_counter() - start))
    assert all(d.resets["continued"] == 0 for d in decoders.values())  # every timed reset was a prefill

    def median(values) -> float:
        return round(float(np.median(values)), 2)

    report = {}
    for rows in counts:
        once, every = ms[(rows, "once")], ms[(rows, "every_row")]
        report[str(rows)] = {
            "prefill_ms_once": median(once),
            "prefill_ms_every_row": median(every),
            "every_row_over_once": median(np.divide(every, once)),
            "logits_max_abs_difference": float((logits[(rows, "once")] - logits[(rows, "every_row")]).abs().max()),
        }
    import onnxruntime

    print(json.dumps({
        "command": "python bench/variation_prefill.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": dict(machine(), onnxruntime=onnxruntime.__version__),
        "context": cfg.max_context,
        "primer_ids": len(primer),
        "reset_latents": R,
        "precision": args.precision,
        "rounds": args.rounds,
        "variations": report,
    }, indent=1))


if __name__ == "__main__":
    main()
