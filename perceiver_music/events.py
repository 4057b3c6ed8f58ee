"""A fast codec between ids and note arrays, for training-time augmentation.

`tokenizer` goes through note-seq's `Performance` objects: right for files, too slow to run on
every training crop. This module reads and writes the same event order (note-seq's: notes sorted
by onset then pitch, events sorted by step then note), so `notes_to_ids(ids_to_notes(ids)) == ids`
for anything the tokenizer wrote. It also keeps what a crop cut off: a NOTE_OFF whose NOTE_ON came
before the crop (start = NaN), a note still sounding when the crop ends (end = NaN), and notes
played before the first VELOCITY event of the crop (velocity bin 0 = unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tokenizer import (
    MAX_SHIFT_STEPS,
    NOTE_OFF_BASE,
    NOTE_ON_BASE,
    NUM_SPECIAL,
    STEPS_PER_SECOND,
    TIME_SHIFT_BASE,
    VELOCITY_BASE,
    VOCAB_SIZE,
)


@dataclass
class Notes:
    """One stretch of music between separators. Times in seconds from its start."""

    start: np.ndarray  # float64, NaN where the note began before this stretch
    end: np.ndarray  # float64, NaN where the note still sounds after it
    pitch: np.ndarray  # int64
    velocity_bin: np.ndarray  # int64, 1..32, 0 where unknown
    duration: float  # where the stretch ends (>= every known time)

    def __len__(self) -> int:
        return len(self.pitch)

    def select(self, keep: np.ndarray) -> "Notes":
        return Notes(self.start[keep], self.end[keep], self.pitch[keep], self.velocity_bin[keep], self.duration)


def ids_to_notes(ids) -> Notes:
    """Ids without specials (one stretch) to notes; NOTE_ON/NOTE_OFF pair first in, first out."""
    step = 0
    velocity = 0
    open_notes: dict[int, list[int]] = {}  # pitch -> indices of sounding notes, oldest first
    start, end, pitch, vel = [], [], [], []
    nan = float("nan")
    for token in ids:
        token = int(token)
        if token >= VELOCITY_BASE:
            velocity = token - VELOCITY_BASE + 1
        elif token >= TIME_SHIFT_BASE:
            step += token - TIME_SHIFT_BASE + 1
        elif token >= NOTE_OFF_BASE:
            p = token - NOTE_OFF_BASE
            sounding = open_notes.get(p)
            if sounding:
                end[sounding.pop(0)] = step
            else:  # its NOTE_ON came before this stretch
                start.append(nan), end.append(step), pitch.append(p), vel.append(0)
        elif token >= NOTE_ON_BASE:
            p = token - NOTE_ON_BASE
            open_notes.setdefault(p, []).append(len(pitch))
            start.append(step), end.append(nan), pitch.append(p), vel.append(velocity)
    scale = 1.0 / STEPS_PER_SECOND
    return Notes(
        start=np.asarray(start, dtype=np.float64) * scale,
        end=np.asarray(end, dtype=np.float64) * scale,
        pitch=np.asarray(pitch, dtype=np.int64),
        velocity_bin=np.asarray(vel, dtype=np.int64),
        duration=step * scale,
    )


def _shifts(steps: int, out: list[int]) -> None:
    while steps > MAX_SHIFT_STEPS:
        out.append(TIME_SHIFT_BASE + MAX_SHIFT_STEPS - 1)
        steps -= MAX_SHIFT_STEPS
    if steps > 0:
        out.append(TIME_SHIFT_BASE + steps - 1)


def notes_to_ids(notes: Notes) -> list[int]:
    """Notes to ids on the 10 ms grid, in note-seq's event order."""
    n = len(notes)
    start_steps = np.where(np.isnan(notes.start), -1, np.round(notes.start * STEPS_PER_SECOND)).astype(np.int64)
    end_steps = np.where(np.isnan(notes.end), -1, np.round(notes.end * STEPS_PER_SECOND)).astype(np.int64)
    # A note that quantises to zero length lasts one step, as note-seq does.
    both = (start_steps >= 0) & (end_steps >= 0)
    end_steps = np.where(both & (end_steps <= start_steps), start_steps + 1, end_steps)
    # By onset, then pitch. Notes begun before the stretch come first, in the order their
    # NOTE_OFFs were read, which is the order they had in the whole piece.
    orphan = start_steps < 0
    tie_break = np.where(orphan, np.arange(n), notes.pitch)
    order = np.lexsort((tie_break, start_steps))
    events = []  # (step, note rank, is_offset, pitch, velocity bin)
    for rank, i in enumerate(order):
        if start_steps[i] >= 0:
            events.append((int(start_steps[i]), rank, 0, int(notes.pitch[i]), int(notes.velocity_bin[i])))
        if end_steps[i] >= 0:
            events.append((int(end_steps[i]), rank, 1, int(notes.pitch[i]), 0))
    events.sort()
    ids: list[int] = []
    step = 0
    velocity = 0
    for event_step, _, is_offset, pitch, velocity_bin in events:
        _shifts(event_step - step, ids)
        step = max(step, event_step)
        if is_offset:
            ids.append(NOTE_OFF_BASE + pitch)
            continue
        if velocity_bin and velocity_bin != velocity:
            velocity = velocity_bin
            ids.append(VELOCITY_BASE + velocity_bin - 1)
        ids.append(NOTE_ON_BASE + pitch)
    _shifts(int(round(notes.duration * STEPS_PER_SECOND)) - step, ids)
    return ids


def split_stretches(ids: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
    """Split a crop at special ids: [(special id before the stretch or None, stretch ids)]."""
    ids = np.asarray(ids)
    cuts = np.flatnonzero(ids < NUM_SPECIAL)
    pieces = []
    previous, marker = 0, None
    for cut in cuts:
        pieces.append((marker, ids[previous:cut]))
        marker, previous = int(ids[cut]), cut + 1
    pieces.append((marker, ids[previous:]))
    return pieces


def join_stretches(pieces: list[tuple[int | None, list[int]]]) -> list[int]:
    out: list[int] = []
    for marker, stretch in pieces:
        if marker is not None:
            out.append(marker)
        out.extend(int(t) for t in stretch)
    return out


assert VOCAB_SIZE == VELOCITY_BASE + 32  # the decoder above relies on VELOCITY being the last range
