"""Continuations of held-out real performances, measured against what the pianist played next.

For each of `--pieces` test-split works of the performance corpora in a prepared DATA_DIR (long
enough for the window and the continuation, spread over the corpora, skipping any whose window
or next 20 s is silent), the piece is cut at a
point T: the engine continues the window [T - 60 s, T) by 20 s, once per seed, exactly as the
page would (`continue_midi`, default sampling). The same figures are computed for the
continuation and for the real music in [T, T + 20 s):

  notes_per_s        notes that start in the 20 s, per second
  velocity_spread    standard deviation of their MIDI velocities
  pitch_class_corr   Pearson correlation of the duration-weighted pitch-class histograms of
                     the primer window and of the continuation (1 = the same key profile)
  longest_silence_s  the longest stretch of the 20 s with no note sounding (seam and end included)
  repeat_4gram_share share of 4-note pitch patterns (in onset order) that occur more than once

The summary gives the means, and for notes per second and velocity spread the factor between
the generated and the real figure (max(r, 1/r) of the means' ratio r, and the mean of the
per-piece factors).

Sampling is the engine's default unless `--temperature` / `--top-p` / `--min-p` say otherwise;
tune those on `--split val` pieces, so the test pieces stay unseen by the choice.

usage: python bench/continuations.py DATA_DIR [--checkpoint C] [--baseline OLD] [--pieces 10]
       [--seeds 0,1] [--window 60] [--length 20] [--split test] [--temperature T] [--top-p P]
       [--min-p M] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.data import MUSIC21, TokenData, source_of  # noqa: E402


def choose_pieces(data: TokenData, count: int | None, window: float, length: float, split: str = "test") -> list[dict]:
    """`count` works (None: all) of the performance corpora in `split` with room for the window and
    the continuation, taken round-robin over the corpora, so each corpus is heard. Within a
    corpus each piece (its split group: ASAP holds several performances of one piece) is heard
    once, by its longest performance, before any piece is heard again; longer pieces first."""
    by_source: dict[str, list[dict]] = {}
    for entry in data.index(split):
        source = entry.get("source") or source_of(entry["work"])
        if source != MUSIC21 and entry["seconds"] >= window + length + 5:
            by_source.setdefault(source, []).append(entry)
    for source, entries in by_source.items():
        entries.sort(key=lambda e: -e["seconds"])
        seen: dict[str, int] = {}  # group -> performances of it taken so far
        for entry in entries:
            group = entry.get("group") or entry["work"]
            entry["_round"] = seen[group] = seen.get(group, -1) + 1
        entries.sort(key=lambda e: (e.pop("_round"), -e["seconds"]))
    chosen, round_ = [], 0
    while any(len(e) > round_ for e in by_source.values()):
        chosen += [by_source[source][round_] for source in sorted(by_source) if round_ < len(by_source[source])]
        round_ += 1
    return chosen if count is None else chosen[:count]


def cut_point(seconds: float, window: float, length: float) -> float:
    """Half-way through the piece, but with the whole window before and the continuation after."""
    return float(min(seconds - length - 1.0, max(window, seconds / 2)))


def notes_of(ns) -> np.ndarray:
    """(start, end, pitch, velocity) rows, by onset."""
    rows = sorted((n.start_time, n.end_time, n.pitch, n.velocity) for n in ns.notes)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def pitch_class_profile(notes: np.ndarray) -> np.ndarray:
    profile = np.zeros(12)
    np.add.at(profile, notes[:, 2].astype(int) % 12, np.maximum(notes[:, 1] - notes[:, 0], 0.05))
    return profile


def longest_silence(notes: np.ndarray, length: float) -> float:
    """The longest time in [0, length) with no note sounding."""
    longest, covered = 0.0, 0.0
    for start, end in sorted(zip(notes[:, 0], notes[:, 1])):
        if start >= length:
            break
        longest = max(longest, start - covered)
        covered = max(covered, end)
    return float(max(longest, length - min(covered, length)))


def repeat_share(notes: np.ndarray) -> float:
    pitches = notes[:, 2].astype(int).tolist()
    grams = [tuple(pitches[i : i + 4]) for i in range(len(pitches) - 3)]
    if not grams:
        return 0.0
    counts: dict[tuple, int] = {}
    for gram in grams:
        counts[gram] = counts.get(gram, 0) + 1
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


def figures(continuation: np.ndarray, primer: np.ndarray, length: float) -> dict:
    onsets = continuation[continuation[:, 0] < length] if len(continuation) else continuation
    corr = float("nan")
    if len(onsets) and len(primer):
        a, b = pitch_class_profile(primer), pitch_class_profile(onsets)
        if a.std() > 0 and b.std() > 0:
            corr = float(np.corrcoef(a, b)[0, 1])
    return {
        "notes": int(len(onsets)),
        "notes_per_s": round(len(onsets) / length, 3),
        "velocity_spread": round(float(onsets[:, 3].std()), 3) if len(onsets) > 1 else 0.0,
        "pitch_class_corr": round(corr, 4) if not math.isnan(corr) else None,
        "longest_silence_s": round(longest_silence(onsets, length), 3),
        "repeat_4gram_share": round(repeat_share(onsets), 4),
    }


def factor(a: float, b: float) -> float | None:
    if a <= 0 or b <= 0:
        return None
    return round(max(a / b, b / a), 3)


def summarise(rows: list[dict]) -> dict:
    def mean(key, side):
        values = [r[side][key] for r in rows if r[side][key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    keys = ("notes_per_s", "velocity_spread", "pitch_class_corr", "longest_silence_s", "repeat_4gram_share")
    out = {"generated": {k: mean(k, "generated") for k in keys}, "real": {k: mean(k, "real") for k in keys}}
    for key in ("notes_per_s", "velocity_spread"):
        per_piece = [factor(r["generated"][key], r["real"][key]) for r in rows]
        per_piece = [f for f in per_piece if f is not None]
        out[f"{key}_factor_of_means"] = factor(out["generated"][key] or 0, out["real"][key] or 0)
        out[f"{key}_factor_mean"] = round(float(np.mean(per_piece)), 3) if per_piece else None
    corrs = [r["generated"]["pitch_class_corr"] for r in rows]
    out["pitch_class_corr_min"] = min((c for c in corrs if c is not None), default=None)
    out["empty"] = sum(1 for r in rows if r["generated"]["notes"] == 0)
    out["longest_silence_max_s"] = max(r["generated"]["longest_silence_s"] for r in rows)
    return out


def usable_cuts(data: TokenData, candidates: list[dict], count: int, window: float, length: float,
                split: str = "test") -> list[dict]:
    """The first `count` candidates whose window and real continuation both hold notes (a
    transcription can hold a long silence), each with its decoded piece and cut point."""
    from perceiver_music.tokenizer import decode, window_seconds

    tokens = data.tokens(split)
    usable = []
    for entry in candidates:
        piece = decode(np.asarray(tokens[entry["offset"] : entry["offset"] + entry["length"]]))
        cut = cut_point(piece.total_time, window, length)
        primer = notes_of(window_seconds(piece, cut - window, cut))
        real = notes_of(window_seconds(piece, cut, cut + length))
        if len(primer) and len(real):
            usable.append({"entry": entry, "piece": piece, "cut": cut, "primer": primer, "real": real})
        if len(usable) == count:
            break
    return usable


def run_model(checkpoint: str | None, cuts: list[dict], seeds: list[int], window: float, length: float,
              sampling: dict | None = None) -> dict:
    from perceiver_music.engine import ContinueRequest, continue_midi, load_model
    from perceiver_music.tokenizer import decode, to_midi_bytes

    model = load_model(checkpoint)
    rows = []
    started = time.time()
    for cut in cuts:
        entry, primer, real, at = cut["entry"], cut["primer"], cut["real"], cut["cut"]
        midi = to_midi_bytes(cut["piece"])
        for seed in seeds:
            request = ContinueRequest(primer=midi, primer_name=entry["work"], window_span=(at - window, at),
                                      length_seconds=length, seed=seed, render_audio=False,
                                      checkpoint=checkpoint, **(sampling or {}))
            result = continue_midi(request)
            generated = notes_of(decode(result.variations[0].new_ids))
            rows.append({"work": entry["work"], "cut_s": round(at, 2), "seed": seed,
                         "generated": figures(generated, primer, length), "real": figures(real, primer, length)})
    return {"checkpoint": str(model.path), "sha256": model.sha256, "seconds": round(time.time() - started, 1),
            "summary": summarise(rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a prepared DATA_DIR holding performance corpora in its test split")
    parser.add_argument("--checkpoint", help="default: the embedded model")
    parser.add_argument("--baseline", help="another checkpoint on the same primers and seeds")
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--length", type=float, default=20.0)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--temperature", type=float, help="default: the engine's")
    parser.add_argument("--top-p", type=float, help="default: the engine's")
    parser.add_argument("--min-p", type=float, help="default: the engine's")
    parser.add_argument("--key-hold", type=float, help="default: the engine's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data = TokenData(args.data)
    candidates = choose_pieces(data, None, args.window, args.length, args.split)  # all, in order
    cuts = usable_cuts(data, candidates, args.pieces, args.window, args.length, args.split)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = {"temperature": args.temperature, "top_p": args.top_p, "min_p": args.min_p, "key_hold": args.key_hold}
    sampling = {k: v for k, v in chosen.items() if v is not None}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "data": args.data, "split": args.split, "sampling": sampling or "engine default",
        "window_s": args.window, "length_s": args.length, "seeds": seeds,
        "pieces": [c["entry"]["work"] for c in cuts],
        "model": run_model(args.checkpoint, cuts, seeds, args.window, args.length, sampling),
    }
    if args.baseline:
        result["baseline"] = run_model(args.baseline, cuts, seeds, args.window, args.length, sampling)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
