"""Reading MIDI input safely: any source to a validated NoteSequence, or a one-line BadMidiError.

Sources are a path, raw bytes, a `pretty_midi.PrettyMIDI` or a `NoteSequence`. Everything a
person might hand us by mistake (a folder, an empty file, a text file renamed .mid, a truncated
download, an absurd tempo, a file too large to be music) is caught here, before any model work.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadMidiError


@contextlib.contextmanager
def _quiet_third_party_import():
    """Keep what libraries say while importing off the user's output.

    note_seq imports pydub, which warns about ffmpeg (we never use pydub); pretty_midi imports
    pyfluidsynth, which prints where it found libfluidsynth when $CI is set. Either would land in
    a notebook cell's output or in front of `--json` on stdout.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def import_note_seq():
    with _quiet_third_party_import():
        import note_seq  # noqa: F401
        from note_seq import midi_io, music_pb2, performance_lib, sequences_lib  # noqa: F401
    return note_seq


def import_pretty_midi():
    with _quiet_third_party_import():
        import pretty_midi
    return pretty_midi


@dataclass(frozen=True)
class MidiLimits:
    """What we accept as a primer or a file to render. Beyond these it is not music we can use."""

    max_bytes: int = 16 * 1024 * 1024
    max_notes: int = 50_000
    max_seconds: float = 3600.0
    min_bpm: float = 4.0
    max_bpm: float = 2000.0


DEFAULT_LIMITS = MidiLimits()
MB = 1024 * 1024

# What the parser's bare exceptions mean for a MIDI file.
_DAMAGE_REASONS = {
    EOFError: "the file ends in the middle of a chunk",
    ZeroDivisionError: "its header gives 0 ticks per beat",
}


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name or str(source)
    return "the MIDI input"


def read_midi_bytes(path: str | os.PathLike, limits: MidiLimits = DEFAULT_LIMITS) -> bytes:
    path = Path(path)
    name = path.name or str(path)
    if not path.exists():
        raise BadMidiError(f"{path}: no such file")
    if path.is_dir():
        raise BadMidiError(f"{name} is a folder, not a MIDI file")
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise BadMidiError(
                f"{name} is {size / MB:.1f} MB; MIDI files over {limits.max_bytes / MB:.0f} MB are not accepted"
            )
        return path.read_bytes()
    except PermissionError:
        raise BadMidiError(f"{name} cannot be read: permission denied") from None
    except OSError as error:
        raise BadMidiError(f"{name} cannot be read: {error.strerror or error}") from None


def parse_midi_bytes(data: bytes, name: str = "the MIDI input", limits: MidiLimits = DEFAULT_LIMITS):
    """Bytes to a PrettyMIDI, with the checks a renamed or truncated file fails."""
    pretty_midi = import_pretty_midi()

    if len(data) == 0:
        raise BadMidiError(f"{name} is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise BadMidiError(f"{name} is {len(data) / MB:.1f} MB; the limit is {limits.max_bytes / MB:.0f} MB")
    if not data.startswith(b"MThd"):
        start = data[:12].decode("latin-1")
        printable = "".join(c if 32 <= ord(c) < 127 else "." for c in start)
        raise BadMidiError(f"{name} is not a MIDI file (it starts with {printable!r}, not 'MThd')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as error:  # mido and pretty_midi raise many types for damaged files
        reason = _DAMAGE_REASONS.get(type(error), str(error).strip() or type(error).__name__)
        raise BadMidiError(f"{name} is damaged or truncated and cannot be read as MIDI ({reason})") from None


def _check_tempo(pm, name: str, limits: MidiLimits) -> None:
    _, tempi = pm.get_tempo_changes()
    for bpm in tempi:
        if not limits.min_bpm <= bpm <= limits.max_bpm:
            raise BadMidiError(
                f"{name} has an absurd tempo of {bpm:.3g} BPM "
                f"(accepted: {limits.min_bpm:g} to {limits.max_bpm:g} BPM)"
            )


def check_sequence(ns, name: str, limits: MidiLimits = DEFAULT_LIMITS) -> None:
    """The checks that do not depend on where the notes came from."""
    notes = ns.notes
    if len(notes) == 0:
        raise BadMidiError(f"{name} has no notes")
    if all(note.is_drum for note in notes):
        raise BadMidiError(f"{name} has only drum notes (channel 10); the piano model leaves drums out")
    if len(notes) > limits.max_notes:
        raise BadMidiError(f"{name} has {len(notes):,} notes; the limit is {limits.max_notes:,}")
    end = max(note.end_time for note in notes)
    if end > limits.max_seconds:
        raise BadMidiError(
            f"{name} lasts {end / 60:.0f} minutes; the limit is {limits.max_seconds / 60:.0f} minutes"
        )


def load_note_sequence(source: Any, limits: MidiLimits = DEFAULT_LIMITS, name: str | None = None):
    """Any supported source to a raw (not yet piano-merged) NoteSequence, validated."""
    note_seq = import_note_seq()
    from note_seq import music_pb2

    name = name or _describe(source)
    if isinstance(source, music_pb2.NoteSequence):
        ns = source
    else:
        if isinstance(source, (str, os.PathLike)):
            pm = parse_midi_bytes(read_midi_bytes(source, limits), name, limits)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            pm = parse_midi_bytes(bytes(source), name, limits)
        elif type(source).__name__ == "PrettyMIDI":
            pm = source
        else:
            raise BadMidiError(f"cannot read MIDI from a {type(source).__name__}")
        _check_tempo(pm, name, limits)
        try:
            ns = note_seq.midi_io.midi_to_note_sequence(pm)
        except Exception as error:
            raise BadMidiError(f"{name} cannot be converted to notes ({error})") from None
    check_sequence(ns, name, limits)
    return ns
