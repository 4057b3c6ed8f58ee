"""Held-out performance-like data for the model card: test-split scores played by a simulated pianist.

The simulated pianist is written independently of the training augmentation
(perceiver_music.augment.humanize), so a model does not score well here just because it saw
this exact transformation: a random-walk tempo with ritardandos before pauses, random-walk
dynamics with melody lead and voicing, metric accents, articulation, and pedal changes on each
new bass note (legato pedalling), folded into durations.

usage: python bench/performance_like.py DATA_DIR OUT_DIR [--seed 0]
OUT_DIR becomes a prepared data folder with only a test split, for `perceiver-music eval`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.atomic_io import ensure_output_dir, write_json  # noqa: E402
from perceiver_music.data import FORMAT_VERSION, TokenData  # noqa: E402
from perceiver_music.events import Notes, ids_to_notes, notes_to_ids, split_stretches  # noqa: E402
from perceiver_music.tokenizer import EOS, SOS, VOCAB_SIZE  # noqa: E402


def _groups(start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Onset groups (chords) in time order: group id per note, and each group's onset."""
    order = np.argsort(start, kind="stable")
    ids = np.empty(len(start), dtype=np.int64)
    onsets, current = [], -1
    for i in order:
        if current < 0 or start[i] - onsets[-1] > 0.02:
            onsets.append(start[i])
            current += 1
        ids[i] = current
    return ids, np.asarray(onsets)


def perform(notes: Notes, rng: np.random.Generator) -> Notes:
    known = ~np.isnan(notes.start) & ~np.isnan(notes.end)
    notes = notes.select(known)
    if len(notes) == 0:
        return notes
    group, onsets = _groups(notes.start)
    n_groups = len(onsets)

    # Tempo: a mean-reverting random walk of the log rate, slowing before each pause.
    log_rate = np.zeros(n_groups)
    for g in range(1, n_groups):
        log_rate[g] = 0.9 * log_rate[g - 1] + rng.normal(0, 0.03)
    gaps = np.diff(onsets, append=onsets[-1] + 1.0)
    for g in np.flatnonzero(gaps > 0.6):
        for back in range(max(0, g - 4), g + 1):
            log_rate[back] -= 0.04 * (back - g + 5)
    ioi = np.diff(onsets, prepend=0.0)
    performed_onsets = np.cumsum(ioi / np.exp(log_rate))

    def warp(t: np.ndarray) -> np.ndarray:
        return np.interp(t, onsets, performed_onsets, right=None) + np.where(
            t > onsets[-1], (t - onsets[-1]) / np.exp(log_rate[-1]), 0.0)

    # Dynamics: a random-walk level, melody and bass voicing, accents on the beat.
    level = np.empty(n_groups)
    level[0] = rng.uniform(50, 80)
    for g in range(1, n_groups):
        level[g] = np.clip(level[g - 1] + 0.05 * (64 - level[g - 1]) + rng.normal(0, 3.0), 25, 110)
    beat = np.median(ioi[ioi > 0.05]) * 2 if np.any(ioi > 0.05) else 0.5
    on_beat = np.abs((onsets / beat) - np.round(onsets / beat)) < 0.05
    velocity = level[group] + rng.normal(0, 3.0, len(notes)) + 6.0 * on_beat[group]
    lead = np.zeros(len(notes))
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        if members.size > 1:
            top = members[np.argmax(notes.pitch[members])]
            bottom = members[np.argmin(notes.pitch[members])]
            velocity[members] -= 4
            velocity[top] += 12
            velocity[bottom] += 5
            lead[members] = 0.02  # the melody sounds ~20 ms before the rest of the chord
            lead[top] = 0.0
    start = warp(notes.start) + lead + rng.normal(0, 0.006, len(notes))
    start = np.maximum(start, 0.0)
    articulation = rng.uniform(0.75, 1.05, n_groups)[group]
    end = start + (warp(notes.end) - warp(notes.start)) * articulation
    end = np.maximum(end, start + 0.03)

    # Legato pedal: change right after each new bass note, fold into durations.
    bass_onsets = [onsets[g] for g in range(n_groups)
                   if g == 0 or notes.pitch[group == g].min() != notes.pitch[group == g - 1].min()]
    changes = np.sort(warp(np.asarray(bass_onsets)) + 0.06)
    for down, up in zip(changes[:-1], changes[1:] - 0.02):
        held = (end >= down) & (end < up) & (start < down)
        end[held] = up
    for p in np.unique(notes.pitch):
        same = np.flatnonzero(notes.pitch == p)
        same = same[np.argsort(start[same])]
        for a, b in zip(same[:-1], same[1:]):
            if end[a] > start[b]:
                end[a] = max(start[b], start[a] + 0.02)
    bins = (np.clip(np.round(velocity), 1, 127).astype(np.int64) - 1) // 4 + 1
    return Notes(start, end, notes.pitch, bins, float(max(end.max(), start.max())))


def perform_ids(ids: np.ndarray, rng: np.random.Generator) -> list[int]:
    out = []
    for marker, stretch in split_stretches(np.asarray(ids)):
        if marker is not None:
            out.append(marker)
        out.extend(notes_to_ids(perform(ids_to_notes(stretch), rng)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = TokenData(args.data)
    out = ensure_output_dir(args.out)
    rng = np.random.default_rng(args.seed)
    index, blocks, offset = [], [], 0
    for name, ids in data.works(args.split):
        performed = perform_ids(ids[1:-1], rng)
        block = np.asarray([SOS, *performed, EOS], dtype=np.uint16)
        index.append({"work": name, "offset": offset, "length": len(block), "notes": 0, "seconds": 0})
        blocks.append(block)
        offset += len(block)
    (out / "test.bin").write_bytes(np.concatenate(blocks).tobytes() if blocks else b"")
    write_json(out / "test.index.json", index)
    write_json(out / "meta.json", {"format": FORMAT_VERSION, "vocab_size": VOCAB_SIZE,
                                   "layout": "SOS ids EOS, packed", "made_by": "bench/performance_like.py"})
    print(json.dumps({"works": len(index), "tokens": offset, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
