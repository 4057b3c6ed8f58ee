"""What the CPU's faster settings cost in quality, against the exact eager float32 step.

Real music is fed through the decoder on generate's own schedule (a reset, then one cached step
per id, a reset again every N - R + 1 ids, the window sliding past max_context), once in eager
float32 (the reference) and once per variant, and every next id is scored. Variants:

  low_precision  the eager step with generate(dtype=torch.float16)'s weights (cpu_precision.py)
  onnx-float32   the compiled step (decode_onnx.py) in float32
  onnx-int8      the compiled step in int8 (the engine's default): where the native step can be
                 had (native_step.py) its batch-1 steps are the native step's int8 products over
                 the K/V caches that int8 runs keep (decode_onnx.NATIVE_INT8_CACHES), its resets
                 onnxruntime's int8 dynamic quantisation
  onnx-int8-float16-caches, onnx-int8-int8-caches
                 onnx-int8 with the native step's caches in float16, or in int8 codes
                 (cache_codes.py), whichever the default is (only when asked for with --variants)
  onnxruntime-step-int8
                 onnx-int8 with onnxruntime's step too (PERCEIVER_MUSIC_NATIVE_STEP=0; only when
                 asked for with --variants)

Each variant's "step_kernels" says which step ran (native or onnxruntime). The decoders take
turns, id by id, so each step finds its weights and caches out of the CPU's caches and the other
runtimes' threads (torch's, onnxruntime's, the native step's worker) still spinning: the reset
and step times here are not the benches' steady ones, nor comparable between variants (a run
with the native step sent to sleep after each of its steps still timed it slower than
onnxruntime's step, 4.9 against 3.8 ms, where bench/generate.py times it at half).

Prints one JSON object: NLL (nats per id) of each, and per variant its NLL minus float32's, how
far apart their next-id distributions are (total variation distance, mean and max), how often
their most likely ids agree, and whether it passes (|NLL difference| < 0.01 nats/id); the mean
reset and step times of each. The top-level total_variation and same_most_likely_id are the
first variant's.

    python bench/precision.py                              # the primers in assets/primers
    python bench/precision.py --data data/music21          # a prepared DATA_DIR's test split
    python bench/precision.py --variants onnx-float32,onnx-int8

onnxruntime picks its int8 kernels by CPUID, and valgrind's emulated CPU has no AVX-512, so a
run under valgrind measures what an AVX2-only laptop computes (without VNNI, MLAS's U8S8
products can saturate). The float32 reference is the same on both (no int8), so it is computed
natively once and read back:

    python bench/precision.py --save-reference ref.npy
    valgrind --tool=none --smc-check=all-non-file python bench/precision.py --threads 1 \
        --variants onnx-int8 --reference ref.npy
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

from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.evaluate import load_eval_works  # noqa: E402
from perceiver_music.generate import EagerDecoder, TokenWindow, default_reset_latents  # noqa: E402


def decode_along_schedule(model, decoder, ids: np.ndarray, prompt_len: int, timings: dict):
    """Yield the next-id logits (1, vocab) for ids[prompt_len:], as generate would compute them."""
    cfg = model.config
    R = default_reset_latents(cfg.num_latents)
    window = TokenWindow(ids[:prompt_len].tolist(), 1, cfg.max_context, torch.device("cpu"))

    def timed(kind, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[kind].append(time.perf_counter() - t0)
        return out

    latents = min(R, len(window))
    logits = timed("reset", lambda: decoder.reset(window.view(), latents))
    for token in ids[prompt_len:].tolist():
        yield logits
        tok = torch.tensor([token])
        window.append(tok)
        if latents >= cfg.num_latents:
            latents = min(R, len(window))
            logits = timed("reset", lambda: decoder.reset(window.view(), latents))
        else:
            latents += 1
            logits = timed("step", lambda: decoder.step(tok, window.view()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--data", default=str(REPO / "assets" / "primers"), help="a prepared DATA_DIR or a MIDI folder")
    ap.add_argument("--score", type=int, default=774, help="ids scored per work (774: six reset cycles)")
    ap.add_argument("--works", type=int, default=8, help="at most this many works")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", default=None,
                    help="comma-separated: low_precision, onnx-float32, onnx-int8, onnxruntime-step-int8, "
                         "onnx-int8-float16-caches, onnx-int8-int8-caches (default: the first three, those that "
                         "are installed)")
    ap.add_argument("--save-reference", default=None, metavar="NPY",
                    help="also write float32's log-probabilities of every scored position here")
    ap.add_argument("--reference", default=None, metavar="NPY",
                    help="float32's log-probabilities from --save-reference instead of computing them (so "
                         "that a run under valgrind, whose CPU has no AVX-512, decodes only the variants)")
    args = ap.parse_args()
    from perceiver_music.decode_onnx import available

    known = ["low_precision", "onnx-float32", "onnx-int8", "onnxruntime-step-int8", "onnx-int8-float16-caches",
             "onnx-int8-int8-caches"]
    variants = args.variants.split(",") if args.variants else [v for v in known[:3] if available() or "onnx" not in v]
    if set(variants) - set(known):
        ap.error(f"--variants takes {', '.join(known)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_checkpoint(args.checkpoint).model.float().eval()
    cfg = model.config
    works, _ = load_eval_works(args.data, split="test")
    # Long works first, each scored after a prompt that nearly fills the window, so the scored
    # ids cross resets and (for works long enough) the slide.
    works = sorted(works, key=len, reverse=True)[: args.works]

    reference = np.load(args.reference) if args.reference else None
    scored = sum(min(args.score, len(ids) // 2) for ids in works)  # the loop below scores these
    if reference is not None and len(reference) != scored:  # refused before a long valgrind run
        raise SystemExit(f"--reference holds {len(reference)} positions, this run scores {scored}: "
                         "another --data/--works/--score?")
    saved = []
    names = ("float32", *variants)
    nll = {name: 0.0 for name in names}
    timings = {name: {"reset": [], "step": []} for name in names}
    tv = {name: [] for name in variants}
    agree = {name: 0 for name in variants}
    count = 0

    def make(name):
        if name == "float32":
            return EagerDecoder(model)
        if name == "low_precision":
            return EagerDecoder(model, torch.float16)
        from perceiver_music.decode_onnx import OnnxDecoder

        if name == "onnxruntime-step-int8":
            return OnnxDecoder(model, 1, precision="int8", native_step=False)
        if name.endswith("-caches"):  # onnx-int8-<type>-caches
            return OnnxDecoder(model, 1, precision="int8", native_step=True, cache_type=name.split("-")[2])
        return OnnxDecoder(model, 1, precision=name.removeprefix("onnx-"))

    decoded = names if reference is None else variants
    decoders = {name: make(name) for name in decoded}  # exported once, before any timing
    with torch.inference_mode():
        for ids in works:
            score = min(args.score, len(ids) // 2)
            prompt_len = min(len(ids) - score, cfg.max_context - 2 * (cfg.num_latents - default_reset_latents(cfg.num_latents) + 1))
            targets = torch.from_numpy(ids[prompt_len : prompt_len + score].astype(np.int64))
            streams = [decode_along_schedule(model, decoders[name], ids[: prompt_len + score], prompt_len, timings[name])
                       for name in decoded]
            for target, *logits in zip(targets.tolist(), *streams):
                if reference is None:
                    p, logits = logits[0].float().log_softmax(-1)[0], logits[1:]
                    saved.append(p.numpy().copy())
                else:
                    p = torch.from_numpy(reference[count])
                nll["float32"] -= float(p[target])
                for name, other in zip(variants, logits):
                    q = other.float().log_softmax(-1)[0]
                    nll[name] -= float(q[target])
                    tv[name].append(0.5 * float((p.exp() - q.exp()).abs().sum()))
                    agree[name] += int(p.argmax() == q.argmax())
                count += 1

    if args.save_reference:
        np.save(args.save_reference, np.stack(saved).astype(np.float32))

    def ms(values):
        return round(1e3 * sum(values) / max(len(values), 1), 2)

    first = variants[0] if variants else None
    vs = {name: {"nll_minus_float32": round((nll[name] - nll["float32"]) / count, 5),
                 "total_variation": {"mean": round(float(np.mean(tv[name])), 5), "max": round(float(np.max(tv[name])), 5)},
                 "same_most_likely_id": round(agree[name] / count, 4),
                 "passes_0.01_nats": abs(nll[name] - nll["float32"]) / count < 0.01}
          for name in variants}
    for name in variants:  # which step ran in the decoders of this run
        native = getattr(decoders.get(name), "native", None)
        if name.startswith("onnx"):
            vs[name]["step_kernels"] = "native" if native is not None else "onnxruntime"
    print(json.dumps({
        "command": "python bench/precision.py " + " ".join(sys.argv[1:]),
        "checkpoint": args.checkpoint,
        "data": args.data,
        "works": len(works),
        "scored_ids": count,
        "torch_threads": torch.get_num_threads(),
        "nll": {name: round(nll[name] / count, 4) for name in names},
        "vs_float32": vs,
        "total_variation": vs[first]["total_variation"] if first else None,
        "same_most_likely_id": vs[first]["same_most_likely_id"] if first else None,
        "reset_ms": {name: ms(timings[name]["reset"]) for name in decoded},
        "step_ms": {name: ms(timings[name]["step"]) for name in decoded},
    }, indent=2))


if __name__ == "__main__":
    main()
