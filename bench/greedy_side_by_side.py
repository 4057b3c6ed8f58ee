"""Greedy continuations of real primers from both CPU runtimes, side by side (issue 13).

Issue 13 is checked by running the compiled step next to the eager one and comparing their
greedy continuations. This does that through the engine, as the CLI does (`perceiver-music
generate PRIMER --temperature 0 --cpu-runtime R --cpu-precision P`): the shipped model, every
primer of a folder (default: the shipped ones), the engine's defaults for everything else (key
hold, the first note within 1.5 s). For each primer every setting runs once, in an order that
rotates from primer to primer so that a slow spell of a shared machine falls on all of them:

  torch-float32   the eager step, float32 weights: the exact reference
  onnx-float32    the compiled step, float32: must give the reference's ids
  torch-auto      the eager CPU setting (float16/bfloat16 Linear weights)
  onnx-auto       the compiled step in the engine's default precision (int8 weights)

The low-precision settings follow the reference until a near-tie between two ids falls the
other way; from there the music differs. So per setting it reports, per primer, whether its ids
equal the reference's and where they first differ, and the engine's tokens/s (stats.tokens_per_s:
prefill and resets included, what a person sees).

Prints one JSON object.

    python bench/greedy_side_by_side.py --threads 2 --new-tokens 600
    python bench/avx2_laptop.py -- python bench/greedy_side_by_side.py --threads 2   # as on an AVX2 laptop
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import machine  # noqa: E402

from perceiver_music.checkpoint import ModelCache  # noqa: E402
from perceiver_music.engine import ContinueRequest, continue_midi  # noqa: E402

SETTINGS = {  # name -> (cpu_runtime, cpu_precision)
    "torch-float32": ("torch", "float32"),
    "onnx-float32": ("onnx", "float32"),
    "torch-auto": ("torch", "auto"),
    "onnx-auto": ("onnx", "auto"),
}
REFERENCE = "torch-float32"


def first_difference(ids: list[int], reference: list[int]) -> int | None:
    """Index of the first id that differs (a length difference counts), None when equal."""
    for i, (a, b) in enumerate(zip(ids, reference)):
        if a != b:
            return i
    return None if len(ids) == len(reference) else min(len(ids), len(reference))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--primers", default=str(REPO / "assets" / "primers"), help="a folder of MIDI files")
    ap.add_argument("--limit", type=int, default=0, help="the first N primers by name (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=600, help="ids to continue each primer by")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    paths = sorted(p for p in Path(args.primers).iterdir() if p.suffix.lower() in (".mid", ".midi"))
    paths = paths[: args.limit] if args.limit else paths
    if not paths:
        raise SystemExit(f"no MIDI files in {args.primers}")
    models = ModelCache()

    def run(path: Path, name: str, new_tokens: int):
        runtime, precision = SETTINGS[name]
        request = ContinueRequest(primer=str(path), length_tokens=new_tokens, length_seconds=None, temperature=0,
                                  seed=0, device="cpu", checkpoint=args.checkpoint, render_audio=False,
                                  cpu_runtime=runtime, cpu_precision=precision)
        return continue_midi(request, models=models).variations[0]

    for name in SETTINGS:  # exports and first sessions outside the timed runs
        run(paths[0], name, 8)
    names = list(SETTINGS)
    primers = {}
    for i, path in enumerate(paths):
        order = names[i % len(names):] + names[: i % len(names)]
        out = {name: run(path, name, args.new_tokens) for name in order}
        reference = out[REFERENCE].new_ids
        primers[path.name] = {
            "primer_tokens": out[REFERENCE].stats["primer_tokens"],
            "prompt_tokens": out[REFERENCE].stats["prompt_tokens"],
            **{name: {"runtime": v.stats["runtime"], "tokens_per_s": v.stats["tokens_per_s"],
                      "new_tokens": len(v.new_ids), "same_ids_as_reference": v.new_ids == reference,
                      "first_difference": first_difference(v.new_ids, reference)}
               for name, v in out.items()},
        }

    def summary(name: str) -> dict:
        rows = [p[name] for p in primers.values()]
        rates = [r["tokens_per_s"] for r in rows]
        diffs = [r["first_difference"] for r in rows if r["first_difference"] is not None]
        return {"runtime": rows[0]["runtime"],
                "primers_with_the_reference_ids": sum(r["same_ids_as_reference"] for r in rows),
                "median_first_difference": statistics.median(diffs) if diffs else None,
                "median_tokens_per_s": round(statistics.median(rates), 1),
                "median_over_reference": round(statistics.median(
                    r / p[REFERENCE]["tokens_per_s"] for r, p in zip(rates, primers.values())), 2)}

    report = {
        "command": "python bench/greedy_side_by_side.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "checkpoint": args.checkpoint,
        "new_tokens": args.new_tokens,
        "reference": REFERENCE,
        "primers_run": len(primers),
        "settings": {name: summary(name) for name in SETTINGS},
        "onnx_auto_over_torch_auto": round(statistics.median(
            p["onnx-auto"]["tokens_per_s"] / p["torch-auto"]["tokens_per_s"] for p in primers.values()), 2),
        "primers": primers,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
