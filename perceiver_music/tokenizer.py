"""MIDI ⇄ NoteSequence ⇄ performance events ⇄ ids.

The vocabulary is Music Transformer's performance encoding (note-seq's `Performance` and
`PerformanceOneHotEncoding`): 128 NOTE_ON, 128 NOTE_OFF, 100 TIME_SHIFT (10 ms … 1 s) and
32 VELOCITY events = 388, after three special ids PAD=0, EOS=1, SOS=2: 391 ids in all.

Everything becomes one piano: instruments merge, drums (channel 10) are left out, the sustain
pedal is folded into note durations. `encode_with_report` says what was dropped.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .midi_input import DEFAULT_LIMITS, MidiLimits, import_note_seq, load_note_sequence

PAD, EOS, SOS = 0, 1, 2
NUM_SPECIAL = 3
STEPS_PER_SECOND = 100
NUM_VELOCITY_BINS = 32
MAX_SHIFT_STEPS = 100
NUM_PITCHES = 128
NUM_EVENTS = 2 * NUM_PITCHES + MAX_SHIFT_STEPS + NUM_VELOCITY_BINS  # 388
VOCAB_SIZE = NUM_SPECIAL + NUM_EVENTS  # 391

# First id of each event range, in note-seq's one-hot order.
NOTE_ON_BASE = NUM_SPECIAL
NOTE_OFF_BASE = NOTE_ON_BASE + NUM_PITCHES
TIME_SHIFT_BASE = NOTE_OFF_BASE + NUM_PITCHES  # TIME_SHIFT of 1 step
VELOCITY_BASE = TIME_SHIFT_BASE + MAX_SHIFT_STEPS  # VELOCITY bin 1

# Steps of time that each id advances: lets generation count music seconds without decoding.
STEPS_PER_ID = np.zeros(VOCAB_SIZE, dtype=np.int64)
STEPS_PER_ID[TIME_SHIFT_BASE : TIME_SHIFT_BASE + MAX_SHIFT_STEPS] = np.arange(1, MAX_SHIFT_STEPS + 1)


def seconds_of(ids: Iterable[int]) -> float:
    """Music time that a run of ids spans, counted through its TIME_SHIFT events."""
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
    if arr.size == 0:
        return 0.0
    return float(STEPS_PER_ID[np.clip(arr, 0, VOCAB_SIZE - 1)].sum()) / STEPS_PER_SECOND


def describe_id(token: int) -> str:
    """A readable name for one id, for debugging and the UI's token view."""
    if token == PAD:
        return "PAD"
    if token == EOS:
        return "EOS"
    if token == SOS:
        return "SOS"
    if NOTE_ON_BASE <= token < NOTE_OFF_BASE:
        return f"NOTE_ON({token - NOTE_ON_BASE})"
    if NOTE_OFF_BASE <= token < TIME_SHIFT_BASE:
        return f"NOTE_OFF({token - NOTE_OFF_BASE})"
    if TIME_SHIFT_BASE <= token < VELOCITY_BASE:
        return f"TIME_SHIFT({token - TIME_SHIFT_BASE + 1})"
    if VELOCITY_BASE <= token < VOCAB_SIZE:
        return f"VELOCITY({token - VELOCITY_BASE + 1})"
    raise ValueError(f"id {token} is outside the vocabulary of {VOCAB_SIZE}")


@dataclass
class EncodeReport:
    """What encoding kept and what it dropped, for `inspect` and the UI."""

    notes_in: int
    notes_kept: int
    drum_notes_dropped: int
    programs: list[int] = field(default_factory=list)
    instruments: int = 0
    had_sustain_pedal: bool = False
    restrikes_trimmed: int = 0
    duration_seconds: float = 0.0
    tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def to_piano_sequence(ns, keep_folded: list | None = None):
    """Fold the sustain pedal, drop drums and merge every instrument into one piano.

    Returns the merged NoteSequence (seconds, unquantised) and an EncodeReport without tokens.
    `keep_folded`, a list, gets the pedal-folded sequence with its own instruments and drums appended
    (the primer as written, for the outputs).
    """
    import_note_seq()
    from note_seq import music_pb2, sequences_lib

    had_pedal = any(cc.control_number == 64 for cc in ns.control_changes)
    folded = sequences_lib.apply_sustain_control_changes(ns) if had_pedal else ns
    if keep_folded is not None:
        keep_folded.append(folded)
    piano = music_pb2.NoteSequence()
    piano.ticks_per_quarter = ns.ticks_per_quarter or 220
    piano.tempos.add(qpm=120.0)
    drums = 0
    programs, instruments = set(), set()
    notes = []
    for note in folded.notes:
        if note.is_drum:
            drums += 1
            continue
        programs.add(int(note.program))
        instruments.add(int(note.instrument))
        start = max(0.0, note.start_time)
        notes.append([start, max(start, note.end_time), note.pitch, max(1, min(127, note.velocity))])
    trimmed = _trim_nested_restrikes(notes)
    # Same-pitch notes with one onset go shortest first, so note-seq's first-in-first-out
    # pairing of NOTE_ON and NOTE_OFF gives each its own offset back.
    notes.sort(key=lambda n: (n[0], n[2], n[1]))
    for start, end, pitch, velocity in notes:
        out = piano.notes.add()
        out.start_time, out.end_time, out.pitch, out.velocity = start, end, pitch, velocity
    piano.total_time = max((n.end_time for n in piano.notes), default=0.0)
    report = EncodeReport(
        notes_in=len(ns.notes),
        notes_kept=len(notes),
        drum_notes_dropped=drums,
        programs=sorted(programs),
        instruments=len(instruments),
        had_sustain_pedal=had_pedal,
        restrikes_trimmed=trimmed,
        duration_seconds=round(piano.total_time, 3),
    )
    return piano, report


def _trim_nested_restrikes(notes: list[list]) -> int:
    """End a note where the same key is struck again, if the new note ends first.

    Performance events cannot tell a note struck inside a longer note of the same pitch from two
    staggered ones (NOTE_ONs and NOTE_OFFs pair first in, first out). A piano cannot sound one key
    twice either: the earlier note ends at the re-strike. Staggered overlaps are kept as they are.
    Notes are [start, end, pitch, velocity]; returns how many were trimmed.
    """
    trimmed = 0
    by_pitch: dict[int, list[list]] = {}
    for note in sorted(notes, key=lambda n: (n[0], n[1])):
        sounding = by_pitch.setdefault(note[2], [])
        for earlier in sounding:
            if earlier[0] < note[0] and earlier[1] > note[1]:
                earlier[1] = note[0]
                trimmed += 1
        sounding[:] = [n for n in sounding if n[1] > note[0]] + [note]
    return trimmed


def _event_to_id(event) -> int:
    from note_seq.performance_lib import PerformanceEvent

    kind, value = event.event_type, event.event_value
    if kind == PerformanceEvent.NOTE_ON:
        return NOTE_ON_BASE + value
    if kind == PerformanceEvent.NOTE_OFF:
        return NOTE_OFF_BASE + value
    if kind == PerformanceEvent.TIME_SHIFT:
        return TIME_SHIFT_BASE + value - 1
    if kind == PerformanceEvent.VELOCITY:
        return VELOCITY_BASE + value - 1
    raise ValueError(f"unexpected performance event {event}")


def _id_to_event(token: int):
    from note_seq.performance_lib import PerformanceEvent

    if NOTE_ON_BASE <= token < NOTE_OFF_BASE:
        return PerformanceEvent(PerformanceEvent.NOTE_ON, token - NOTE_ON_BASE)
    if NOTE_OFF_BASE <= token < TIME_SHIFT_BASE:
        return PerformanceEvent(PerformanceEvent.NOTE_OFF, token - NOTE_OFF_BASE)
    if TIME_SHIFT_BASE <= token < VELOCITY_BASE:
        return PerformanceEvent(PerformanceEvent.TIME_SHIFT, token - TIME_SHIFT_BASE + 1)
    return PerformanceEvent(PerformanceEvent.VELOCITY, token - VELOCITY_BASE + 1)


def piano_sequence_to_ids(piano) -> list[int]:
    """A merged piano NoteSequence (from `to_piano_sequence`) to ids, on the 10 ms grid."""
    import_note_seq()
    from note_seq import performance_lib, sequences_lib

    if len(piano.notes) == 0:
        return []
    quantized = sequences_lib.quantize_note_sequence_absolute(piano, STEPS_PER_SECOND)
    performance = performance_lib.Performance(
        quantized, num_velocity_bins=NUM_VELOCITY_BINS, max_shift_steps=MAX_SHIFT_STEPS
    )
    return [_event_to_id(event) for event in performance]


def encode_with_report(
    midi: Any, *, limits: MidiLimits = DEFAULT_LIMITS, name: str | None = None
) -> tuple[list[int], EncodeReport]:
    """Path, bytes, PrettyMIDI or NoteSequence to ids, with what was kept and dropped."""
    ns = load_note_sequence(midi, limits, name=name)
    piano, report = to_piano_sequence(ns)
    ids = piano_sequence_to_ids(piano)
    report.tokens = len(ids)
    return ids, report


def encode(midi: Any, *, limits: MidiLimits = DEFAULT_LIMITS) -> list[int]:
    return encode_with_report(midi, limits=limits)[0]


def _velocity_bin_centre_offset() -> int:
    from note_seq.performance_lib import _velocity_bin_size

    return (_velocity_bin_size(NUM_VELOCITY_BINS) - 1) // 2


def decode(ids: Sequence[int], *, max_note_seconds: float | None = None):
    """Ids to a piano NoteSequence. PAD and SOS are skipped; EOS ends the music.

    Notes never turned off end with the music; `max_note_seconds` caps any note (generated
    music can forget a NOTE_OFF; a recorded one cannot).
    """
    import_note_seq()
    from note_seq import performance_lib

    performance = performance_lib.Performance(
        steps_per_second=STEPS_PER_SECOND,
        num_velocity_bins=NUM_VELOCITY_BINS,
        max_shift_steps=MAX_SHIFT_STEPS,
    )
    for token in ids:
        token = int(token)
        if token == EOS:
            break
        if token < NUM_SPECIAL:
            continue
        if token >= VOCAB_SIZE:
            raise ValueError(f"id {token} is outside the vocabulary of {VOCAB_SIZE}")
        performance.append(_id_to_event(token))
    ns = performance.to_sequence(max_note_duration=max_note_seconds)
    # note-seq decodes a velocity bin to its lowest value; the centre of the bin is closer on average.
    centre = _velocity_bin_centre_offset()
    for note in ns.notes:
        note.velocity = min(127, note.velocity + centre)
    ns.tempos.add(qpm=120.0)
    return ns


def _as_sequence(music):
    if isinstance(music, (list, tuple, np.ndarray)):
        return decode(music)
    return music


def to_pretty_midi(music):
    """A NoteSequence (or ids) to a PrettyMIDI with one piano track."""
    import_note_seq()
    from note_seq import midi_io

    return midi_io.note_sequence_to_pretty_midi(_as_sequence(music))


def to_midi_bytes(music, *, text: str | None = None) -> bytes:
    """A NoteSequence (or ids) to standard MIDI file bytes; `text` adds a text meta-event."""
    buffer = io.BytesIO()
    to_pretty_midi(music).write(buffer)
    return _add_text_event(buffer.getvalue(), text) if text else buffer.getvalue()


def _add_text_event(midi_bytes: bytes, text: str) -> bytes:
    import mido

    mid = mido.MidiFile(file=io.BytesIO(midi_bytes))
    mid.tracks[0].insert(0, mido.MetaMessage("text", text=text, time=0))
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


# ---- primer windows -------------------------------------------------------------------------


def window_seconds(ns, start: float, end: float | None = None):
    """The notes that start in [start, end), clipped at `end` and shifted so `start` is 0."""
    import_note_seq()
    from note_seq import music_pb2

    end = float("inf") if end is None else end
    if end <= start:
        raise ValueError(f"empty primer window [{start}, {end})")
    out = music_pb2.NoteSequence()
    out.ticks_per_quarter = ns.ticks_per_quarter or 220
    out.tempos.add(qpm=120.0)
    for note in ns.notes:
        if start <= note.start_time < end:
            copy = out.notes.add()
            copy.CopyFrom(note)
            copy.start_time = note.start_time - start
            copy.end_time = min(note.end_time, end) - start
    out.total_time = max((n.end_time for n in out.notes), default=0.0)
    return out


def last_seconds(ns, seconds: float):
    """The last `seconds` of the music (up to the last note's end)."""
    end = max((n.end_time for n in ns.notes), default=0.0)
    return window_seconds(ns, max(0.0, end - seconds), end + 1e-6)


def last_tokens(ids: Sequence[int], count: int) -> list[int]:
    """The last `count` ids (a model's context is counted in ids)."""
    if count <= 0:
        return []
    return list(ids[-count:])
