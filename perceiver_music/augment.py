"""Training-time augmentation on note arrays: transpose, time stretch, and humanising.

The default corpus is scores (one velocity, quantised timing) while people bring performances
(dynamics, rubato, pedal). `humanize` closes that gap on score-like crops: phrase-level dynamics
with accents and melody voicing, tempo drift, onset and chord-spread jitter, and sustain pedal on
keyboard textures. Crops that already carry varied velocities are real performances and keep
their own dynamics and timing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .events import Notes, ids_to_notes, join_stretches, notes_to_ids, split_stretches

VELOCITY_BIN_SIZE = 4  # 127 velocities in 32 bins


@dataclass
class AugmentConfig:
    transpose: int = 5  # uniform in [-transpose, +transpose] semitones
    stretch: float = 0.05  # tempo factor uniform in [1 - stretch, 1 + stretch]
    humanize: float = 0.8  # probability of humanising a score-like crop
    pedal: float = 0.5  # probability of sustain pedal on a humanised keyboard texture

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        return self.transpose == 0 and self.stretch == 0 and self.humanize == 0


def to_velocity_bin(velocity: np.ndarray) -> np.ndarray:
    return (np.clip(np.round(velocity), 1, 127).astype(np.int64) - 1) // VELOCITY_BIN_SIZE + 1


def from_velocity_bin(bins: np.ndarray) -> np.ndarray:
    return (bins - 1) * VELOCITY_BIN_SIZE + 1 + (VELOCITY_BIN_SIZE - 1) / 2


def transpose(notes: Notes, semitones: int) -> Notes:
    shifted = Notes(notes.start, notes.end, notes.pitch + semitones, notes.velocity_bin, notes.duration)
    return shifted.select((shifted.pitch >= 0) & (shifted.pitch <= 127))


def stretch(notes: Notes, factor: float) -> Notes:
    return Notes(notes.start * factor, notes.end * factor, notes.pitch, notes.velocity_bin, notes.duration * factor)


def is_score_like(notes: Notes) -> bool:
    """A few velocities (one per dynamics mark and part) carry nearly every note: a score.
    In a performance nearly every note has its own velocity."""
    known = notes.velocity_bin[notes.velocity_bin > 0]
    if known.size < 8:
        return True
    counts = np.sort(np.bincount(known))[::-1]
    return counts[:3].sum() >= 0.9 * known.size


def _tempo_drift(rng: np.random.Generator):
    """A smooth, monotonic time warp: the local tempo swings by up to ±8 % over 6-20 s phrases."""
    depth = rng.uniform(0.0, 0.08)
    period = rng.uniform(6.0, 20.0)
    phase = rng.uniform(0, 2 * np.pi)
    k = 2 * np.pi / period

    def warp(t: np.ndarray) -> np.ndarray:
        return t + depth / k * (np.cos(phase) - np.cos(k * t + phase))

    return warp


def _chord_groups(start: np.ndarray) -> np.ndarray:
    """An id per group of onsets within 15 ms of each other (NaN onsets get their own)."""
    order = np.argsort(np.nan_to_num(start, nan=-1.0), kind="stable")
    group = np.empty(len(start), dtype=np.int64)
    current, last = -1, None
    for i in order:
        t = start[i]
        if np.isnan(t) or last is None or t - last > 0.015:
            current += 1
        group[i] = current
        last = t
    return group


def _dynamics(notes: Notes, onset: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Velocities: the score's own level (its dynamics marks) scaled, phrase swells, melody
    voicing, accents and a little noise."""
    n = len(notes)
    t = np.nan_to_num(onset, nan=0.0)
    marked = np.where(notes.velocity_bin > 0, from_velocity_bin(notes.velocity_bin), 72.0)
    level = marked * rng.uniform(0.6, 1.1)
    swells = np.zeros(n)
    for _ in range(2):
        swells += rng.uniform(4, 16) * np.sin(2 * np.pi * t / rng.uniform(3.0, 14.0) + rng.uniform(0, 2 * np.pi))
    velocity = level + swells + rng.normal(0, 4.0, n)
    groups = _chord_groups(notes.start)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if members.size > 1:  # voice the top note, soften the inner ones
            top = members[np.argmax(notes.pitch[members])]
            velocity[members] -= rng.uniform(0, 6)
            velocity[top] += rng.uniform(4, 12)
    accents = rng.random(n) < 0.12
    velocity[accents] += rng.uniform(5, 15, accents.sum())
    return np.clip(velocity, 8, 127)


def _pedal(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, duration: float, rng) -> np.ndarray:
    """Hold notes released under a pressed pedal until it lifts; a re-struck key ends its old note."""
    end = end.copy()
    t = rng.uniform(0.0, 0.5)
    while t < duration:
        down, up = t, t + rng.uniform(0.8, 3.0)
        held = ~np.isnan(end) & (end >= down) & (end < up)
        end[held] = up
        t = up + rng.uniform(0.03, 0.4)
    for p in np.unique(pitch):
        same = np.flatnonzero((pitch == p) & ~np.isnan(start))
        same = same[np.argsort(start[same])]
        for a, b in zip(same[:-1], same[1:]):
            if not np.isnan(end[a]) and end[a] > start[b]:
                end[a] = max(start[b], start[a] + 0.02)
    return end


def _is_keyboard_texture(notes: Notes) -> bool:
    """Chords or several voices at once: music a pianist would pedal."""
    groups = _chord_groups(notes.start)
    return len(notes) >= 8 and np.bincount(groups).max() >= 3


def humanize(notes: Notes, rng: np.random.Generator, pedal_probability: float = 0.5) -> Notes:
    if len(notes) == 0:
        return notes
    warp = _tempo_drift(rng)
    start, end = warp(notes.start), warp(notes.end)
    duration = float(warp(np.array([notes.duration]))[0])
    groups = _chord_groups(notes.start)
    chord_shift = rng.normal(0, 0.012, groups.max() + 1)[groups]  # a chord lands together, a little late or early
    start = start + chord_shift + rng.normal(0, 0.006, len(notes))  # and spreads a few ms
    end = end + chord_shift + rng.normal(0, 0.012, len(notes))
    start = np.maximum(start, 0.0)
    known = ~np.isnan(start) & ~np.isnan(end)
    end = np.where(known, np.maximum(end, start + 0.02), end)
    velocity_bin = to_velocity_bin(_dynamics(notes, start, rng))
    if rng.random() < pedal_probability and _is_keyboard_texture(notes):
        end = _pedal(start, end, notes.pitch, duration, rng)
    latest = np.nanmax(np.concatenate([start, end, [duration]]))
    return Notes(start, end, notes.pitch, velocity_bin, max(duration, float(latest)))


def augment_ids(ids: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> list[int]:
    """Augment a crop of ids (it may hold separators); one transposition and tempo for it all."""
    semitones = int(rng.integers(-config.transpose, config.transpose + 1)) if config.transpose else 0
    factor = float(rng.uniform(1 - config.stretch, 1 + config.stretch)) if config.stretch else 1.0
    pieces = []
    for marker, stretch_ids in split_stretches(ids):
        notes = ids_to_notes(stretch_ids)
        if semitones:
            notes = transpose(notes, semitones)
        if factor != 1.0:
            notes = stretch(notes, factor)
        if config.humanize and is_score_like(notes) and rng.random() < config.humanize:
            notes = humanize(notes, rng, config.pedal)
        pieces.append((marker, notes_to_ids(notes)))
    return join_stretches(pieces)
