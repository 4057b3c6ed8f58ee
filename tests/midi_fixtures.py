"""MIDI fixtures made by code: piano performances built with pretty_midi, corpus pieces via music21.

Shared by the tests; nothing here is downloaded.
"""

from __future__ import annotations

import functools
import io
import random
from pathlib import Path

import pretty_midi


def piano_performance(seed: int = 0, seconds: float = 30.0, pedal: bool = True) -> pretty_midi.PrettyMIDI:
    """A piano performance: rubato, varied velocities, sustain pedal, overlapping repeated notes,
    dense chords and silences longer than one second."""
    rng = random.Random(seed)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0, name="piano")
    t = 0.0
    while t < seconds:
        texture = rng.random()
        if texture < 0.15:  # a silence longer than one second
            t += rng.uniform(1.1, 2.5)
            continue
        if texture < 0.35:  # a dense chord
            root = rng.randint(36, 72)
            for offset in rng.sample(range(0, 24), rng.randint(5, 10)):
                piano.notes.append(
                    pretty_midi.Note(rng.randint(20, 127), root + offset, t, t + rng.uniform(0.3, 2.0))
                )
            t += rng.uniform(0.2, 0.8)
            continue
        if texture < 0.45:  # the same pitch struck again while still sounding
            pitch = rng.randint(48, 84)
            piano.notes.append(pretty_midi.Note(rng.randint(30, 110), pitch, t, t + 0.6))
            piano.notes.append(pretty_midi.Note(rng.randint(30, 110), pitch, t + 0.25, t + 0.9))
            t += 1.0
            continue
        # a melodic run with rubato
        for _ in range(rng.randint(4, 12)):
            step = rng.uniform(0.06, 0.35)
            piano.notes.append(
                pretty_midi.Note(rng.randint(15, 120), rng.randint(40, 96), t, t + step * rng.uniform(0.5, 3.0))
            )
            t += step
    if pedal:
        p = 0.0
        while p < t:
            down = p + rng.uniform(0.0, 0.5)
            up = down + rng.uniform(0.5, 3.0)
            piano.control_changes.append(pretty_midi.ControlChange(64, 127, down))
            piano.control_changes.append(pretty_midi.ControlChange(64, 0, up))
            p = up + rng.uniform(0.2, 2.0)
    pm.instruments.append(piano)
    return pm


def band_with_drums(seed: int = 0, seconds: float = 12.0) -> pretty_midi.PrettyMIDI:
    """A multi-track pop-like file: bass, strings, lead, drums."""
    rng = random.Random(seed)
    pm = pretty_midi.PrettyMIDI()
    for program, low, high in [(33, 28, 48), (48, 55, 76), (80, 64, 90)]:
        inst = pretty_midi.Instrument(program=program)
        t = 0.0
        while t < seconds:
            d = rng.choice([0.25, 0.5, 1.0])
            inst.notes.append(pretty_midi.Note(rng.randint(60, 110), rng.randint(low, high), t, t + d))
            t += d
        pm.instruments.append(inst)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    for i in range(int(seconds * 4)):
        drums.notes.append(pretty_midi.Note(100, rng.choice([36, 38, 42]), i * 0.25, i * 0.25 + 0.1))
    pm.instruments.append(drums)
    return pm


def midi_bytes(pm: pretty_midi.PrettyMIDI) -> bytes:
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


CORPUS_PIECES = ["bach/bwv66.6", "bach/bwv4.8", "schumann_clara/opus17/movement3", "joplin/maple_leaf_rag"]


@functools.lru_cache(maxsize=None)
def corpus_midi_bytes(name: str) -> bytes:
    """A music21 corpus piece written to MIDI by music21 (about a second each; cached per run)."""
    from music21 import corpus, midi

    score = corpus.parse(name)
    return midi.translate.music21ObjectToMidiFile(score).writestr()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CHORALES = ["bach/bwv66.6", "bach/bwv4.8", "bach/bwv7.7", "bach/bwv10.7", "bach/bwv11.6", "bach/bwv13.6",
            "bach/bwv14.5", "bach/bwv16.6", "bach/bwv17.7", "bach/bwv18.5-lz", "bach/bwv19.7", "bach/bwv20.7"]


def write_tiny_corpus(folder: Path, with_bad_files: bool = True) -> Path:
    """A small real corpus on disk: Bach chorales and two longer piano pieces, in nested
    folders, plus a few broken files that preparation must skip."""
    (folder / "chorales").mkdir(parents=True, exist_ok=True)
    (folder / "piano" / "nested").mkdir(parents=True, exist_ok=True)
    for name in CHORALES:
        write(folder / "chorales" / (name.split("/")[1] + ".mid"), corpus_midi_bytes(name))
    write(folder / "piano" / "clara.MID", corpus_midi_bytes("schumann_clara/opus17/movement3"))
    write(folder / "piano" / "nested" / "maple leaf.midi", corpus_midi_bytes("joplin/maple_leaf_rag"))
    if with_bad_files:
        write(folder / "broken.mid", corpus_midi_bytes("bach/bwv66.6")[:40])
        write(folder / "notes.txt.mid", b"not a midi file at all")
        write(folder / "piano" / "empty.mid", b"")
    (folder / "readme.txt").write_text("ignored: not a MIDI suffix")
    return folder
