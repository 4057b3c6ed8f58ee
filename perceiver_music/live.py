"""What a front end shows and plays while a continuation is being written.

- `IncrementalDecoder`: ids in, notes out as soon as they are certain, with exactly the notes
  that `tokenizer.decode(ids, max_note_seconds=...)` gives for the finished ids.
- `LiveAudio`: the lead-in of the primer and the continuation, rendered by fluidsynth as the ids
  arrive (`render.StreamRenderer`): the same synth calls as the final render of the same music.
- `LiveRun`: handed to `engine.continue_midi(..., live=...)`; the engine fills it in, a front
  end reads it from another thread (ids so far, music seconds, the lead-in).
- `AudioStream`: what a front end plays of variation 1 while it is written (the page and the
  notebook widget share it): the lead-in at once, then the music as it becomes certain, as long
  as the model writes faster than the music plays.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .tokenizer import (EOS, NOTE_OFF_BASE, NOTE_ON_BASE, NUM_SPECIAL, NUM_VELOCITY_BINS, STEPS_PER_SECOND,
                        TIME_SHIFT_BASE, VELOCITY_BASE, VOCAB_SIZE)


@dataclass
class LiveNote:
    """A note with NoteSequence's field names (what render and the piano roll read)."""

    pitch: int
    velocity: int
    start_time: float
    end_time: float
    instrument: int = 0
    program: int = 0
    is_drum: bool = False


def _velocity(bin_: int) -> int:
    from note_seq.performance_lib import _velocity_bin_size

    size = _velocity_bin_size(NUM_VELOCITY_BINS)
    return min(127, 1 + (bin_ - 1) * size + (size - 1) // 2)  # decode(): the bin's centre


class IncrementalDecoder:
    """Performance ids to notes, one id at a time, paired as note-seq's Performance.to_sequence
    pairs them (so the finished notes equal `tokenizer.decode(ids, max_note_seconds=...)`'s):
    NOTE_OFF ends the oldest open note of its pitch, zero-length notes are dropped, a note lasts
    at most `max_note_seconds`, notes still open at the end end with the music.

    `feed` returns synth events as soon as they are certain: a note-on once time has moved past
    its start (so it is not zero-length), a note-off once its end is known. `notes` holds the
    finished notes; `open_notes()` those still sounding (drawn up to now).
    """

    def __init__(self, max_note_seconds: float | None, offset: float = 0.0, instrument: int = 0,
                 program: int = 0) -> None:
        self.max_steps = None if max_note_seconds is None else int(round(max_note_seconds * STEPS_PER_SECOND))
        self.offset, self.instrument, self.program = offset, instrument, program
        self.step = 0
        self.velocity = _velocity_default()
        self.open: dict[int, list] = defaultdict(list)  # pitch -> [[start_step, velocity, state], ...]
        self.notes: list[LiveNote] = []
        self.ended = False

    def _time(self, step: float) -> float:
        return self.offset + step / STEPS_PER_SECOND

    def _end(self, pitch: int, entry: list, end_step: int, events: list) -> None:
        start, velocity = entry[0], entry[1]
        if self.max_steps is not None:
            end_step = min(end_step, start + self.max_steps)
        events.append((self._time(end_step), False, pitch, 0))
        self.notes.append(LiveNote(pitch, velocity, self._time(start), self._time(end_step), self.instrument,
                                   self.program))

    def feed(self, ids: Sequence[int]) -> list[tuple[float, bool, int, int]]:
        """Events (seconds, is_note_on, pitch, velocity) that became certain."""
        events: list = []
        for token in ids:
            token = int(token)
            if self.ended or token == EOS:
                self.ended = True
                break
            if token < NUM_SPECIAL or token >= VOCAB_SIZE:
                continue
            if token < NOTE_OFF_BASE:
                self.open[token - NOTE_ON_BASE].append([self.step, self.velocity, "new"])
            elif token < TIME_SHIFT_BASE:
                pitch = token - NOTE_OFF_BASE
                queue = self.open.get(pitch)
                if queue:
                    entry = queue.pop(0)
                    if entry[2] == "on":  # "new": zero length, dropped; "capped": ended already
                        self._end(pitch, entry, self.step, events)
            elif token < VELOCITY_BASE:
                self.step += token - TIME_SHIFT_BASE + 1
                for pitch, queue in self.open.items():
                    for entry in queue:
                        if entry[2] == "new":  # time moved past its start: it sounds
                            entry[2] = "on"
                            events.append((self._time(entry[0]), True, pitch, entry[1]))
                        if (entry[2] == "on" and self.max_steps is not None
                                and self.step - entry[0] >= self.max_steps):
                            entry[2] = "capped"
                            self._end(pitch, entry, entry[0] + self.max_steps, events)
            else:
                self.velocity = _velocity(token - VELOCITY_BASE + 1)
        return events

    @property
    def seconds(self) -> float:
        return self.step / STEPS_PER_SECOND

    def open_notes(self) -> list[LiveNote]:
        """Notes sounding now whose end is not known yet, drawn up to now."""
        return [LiveNote(pitch, e[1], self._time(e[0]), self._time(self.step), self.instrument, self.program)
                for pitch, queue in self.open.items() for e in queue if e[2] == "on"]

    def finish(self) -> list[tuple[float, bool, int, int]]:
        """The music has ended: open notes end now."""
        events: list = []
        for pitch, queue in self.open.items():
            for entry in queue:
                if entry[2] == "on":
                    self._end(pitch, entry, self.step, events)
        self.open.clear()
        return events


def _velocity_default() -> int:
    from note_seq.performance_lib import _velocity_bin_size

    return min(127, 100 + (_velocity_bin_size(NUM_VELOCITY_BINS) - 1) // 2)


class LiveAudio:
    """The lead-in and the continuation of one variation, rendered as it is written.

    `start()` gives the lead-in's audio at once (its notes are all known); `advance(ids)` takes
    the ids so far and gives the audio of what became certain since; `finish(ids)` the rest and
    the release tail. Chunks are float32 stereo at `sample_rate`.
    """

    def __init__(self, lead_in_notes: Sequence[Any], lead_in_seconds: float, continuation_track: tuple[int, int],
                 max_note_seconds: float | None, soundfont=None, sample_rate: int = 44100) -> None:
        from .render import StreamRenderer

        self.track = (continuation_track[0], continuation_track[1], False)
        tracks = sorted({(n.instrument, n.program, bool(n.is_drum)) for n in lead_in_notes} | {self.track})
        self.renderer = StreamRenderer(tracks, soundfont, sample_rate)
        self.soundfont = soundfont
        self.renderer.add_notes(lead_in_notes)
        self.lead_in_seconds = lead_in_seconds
        self.decoder = IncrementalDecoder(max_note_seconds, offset=lead_in_seconds,
                                          instrument=continuation_track[0], program=continuation_track[1])
        self.fed = 0
        self.sample_rate = sample_rate
        self.frames = 0  # rendered so far
        self.chunks: list[np.ndarray] = []  # everything rendered, in order
        self.taken = 0  # chunks handed to the stream so far
        self.finished = False
        self.lock = threading.Lock()  # the stream's thread advances, the engine's may finish

    def _send(self, events) -> None:
        for seconds, on, pitch, velocity in events:
            self.renderer.add_event(seconds, on, self.track, pitch, velocity)

    def _keep(self, chunk: np.ndarray) -> None:
        if len(chunk):
            self.chunks.append(chunk)
            self.frames += len(chunk)

    def _pending(self) -> np.ndarray:
        new = self.chunks[self.taken:]
        self.taken = len(self.chunks)
        return np.concatenate(new) if new else np.zeros((0, 2), dtype=np.float32)

    def start(self) -> np.ndarray:
        with self.lock:
            self._keep(self.renderer.render_until(self.lead_in_seconds))
            return self._pending()

    def _advance(self, ids: Sequence[int]) -> None:
        if self.renderer.closed:  # its synth is back in the pool: never touch it again
            raise RuntimeError("this stream was closed")
        new = list(ids[self.fed:])
        self.fed += len(new)
        self._send(self.decoder.feed(new))
        # every event before the decoder's time is certain now
        self._keep(self.renderer.render_until(self.lead_in_seconds + self.decoder.seconds))

    def advance(self, ids: Sequence[int]) -> np.ndarray:
        """The audio of what became certain since the last call (after `finish`: its tail)."""
        with self.lock:
            if not self.finished and not self.renderer.closed:
                self._advance(ids)
            return self._pending()

    def finish(self, ids: Sequence[int]) -> np.ndarray:
        """The music is complete (`ids` are all of it): render the rest and the release tail.
        Returns the whole audio, lead-in first: what `render` gives for the same notes."""
        with self.lock:
            if not self.finished:
                self._advance(ids)
                self._send(self.decoder.finish())
                self._keep(self.renderer.finish())
                self.finished = True
            return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 2), dtype=np.float32)

    def close(self) -> None:
        with self.lock:
            self.renderer.close()


class LiveRun:
    """A generation as it runs, for a front end that streams it (give it to `continue_midi`).

    The engine fills it in from its thread: `attach` when the primer is read (`ready` is set),
    `stats["results"]` grows as ids are sampled, `generated` is set when sampling ends. A front
    end reads it from another thread: `ids(row)`, `seconds(row)` and `frame(row)`.
    """

    def __init__(self) -> None:
        self.stats: dict = {}
        self.ready = threading.Event()
        self.generated = threading.Event()
        self.started: float | None = None  # time.monotonic() when sampling began
        self.request = None
        self.primer = None
        self.lead_in_notes: list = []
        self.lead_in_seconds = 0.0
        self.seam_seconds = 0.0
        self.seed: int | None = None
        self.continuation_track = (0, 0)
        self.audio: LiveAudio | None = None
        self._decoders: dict[int, IncrementalDecoder] = {}

    def attach(self, request, primer, lead_in: tuple[list, float], seed: int) -> None:
        self.request, self.primer, self.seed = request, primer, seed
        self.lead_in_notes, self.lead_in_seconds = lead_in
        self.seam_seconds = primer.seconds
        self.continuation_track = (max((n.instrument for n in primer.written), default=-1) + 1, 0)
        self.ready.set()

    @property
    def rows(self) -> int:
        return self.request.variations if self.request is not None else 0

    def ids(self, row: int) -> list[int]:
        """The ids variation `row` (0-based) has kept so far."""
        results = self.stats.get("results")
        if not results or row >= len(results):
            return []
        return list(results[row])

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def frame(self, row: int) -> tuple[list, float]:
        """(notes of the lead-in and of the continuation so far, on the lead-in's clock; seconds
        of continuation written), from an incremental decoder kept per row."""
        decoder = self._decoders.get(row)
        if decoder is None:
            from .engine import MAX_GENERATED_NOTE_SECONDS

            decoder = self._decoders[row] = IncrementalDecoder(
                MAX_GENERATED_NOTE_SECONDS, offset=self.lead_in_seconds, instrument=self.continuation_track[0])
            decoder.fed = 0
        ids = self.ids(row)
        decoder.feed(ids[decoder.fed:])
        decoder.fed = len(ids)
        return self.lead_in_notes + decoder.notes + decoder.open_notes(), decoder.seconds

    def svg(self, row: int) -> str:
        """The live piano roll of variation `row`: its span is the lead-in and the asked length."""
        from .pianoroll import pianoroll_svg

        notes, seconds = self.frame(row)
        asked = self.request.length_seconds if self.request is not None and self.request.length_seconds else seconds
        span = self.lead_in_seconds + max(asked, seconds)
        return pianoroll_svg(notes, self.lead_in_seconds if self.primer and self.primer.ids else None, span,
                             now_seconds=self.lead_in_seconds + seconds,
                             time_offset=self.seam_seconds - self.lead_in_seconds)

    def live_audio(self, soundfont=None, sample_rate: int = 44100) -> LiveAudio:
        """A streamed render of variation 1 (call after `ready`). The engine finishes it into
        variation 1's audio instead of rendering that again (`finished_audio`)."""
        from .engine import MAX_GENERATED_NOTE_SECONDS

        self.audio = LiveAudio(self.lead_in_notes, self.lead_in_seconds, self.continuation_track,
                               MAX_GENERATED_NOTE_SECONDS, soundfont, sample_rate)
        return self.audio

    def finished_audio(self, ids: Sequence[int], soundfont, sample_rate: int) -> np.ndarray | None:
        """Variation 1's audio from its stream, finished with all its `ids`; None when nothing
        streamed it (or with other render settings)."""
        audio = self.audio
        if audio is None or audio.sample_rate != sample_rate or audio.soundfont != soundfont:
            return None
        try:
            return audio.finish(ids)
        except Exception:  # noqa: BLE001 - e.g. closed by a front end that went away: render instead
            return None


# Stream audio only where the music is written faster than it plays, with this margin: a stream
# that runs dry stutters.
STREAM_MIN_RATIO = 1.1


class AudioStream:
    """Variation 1's audio for a front end to play while the model writes it.

    Call `poll()` from the front end's thread after `live.ready`: the first call gives the
    lead-in, later ones what became certain since. From one second in, a model slower than
    `min_ratio` times the music stops the stream (`too_slow` is set; the finished audio comes
    at the end instead). Once the engine has finished the stream into variation 1's audio,
    `poll()` gives its tail, then nothing.
    """

    def __init__(self, live: LiveRun, soundfont=None, sample_rate: int = 44100, min_ratio: float = STREAM_MIN_RATIO):
        self.live = live
        self.soundfont = soundfont
        self.sample_rate = sample_rate
        self.min_ratio = min_ratio
        self.audio: LiveAudio | None = None
        self.too_slow = False

    @property
    def streaming(self) -> bool:
        return not self.too_slow

    @property
    def seconds(self) -> float:
        """Audio rendered for the stream so far."""
        return self.audio.frames / self.audio.sample_rate if self.audio is not None else 0.0

    def poll(self) -> np.ndarray | None:
        """New audio for the stream (frames x 2, float32), or None."""
        if self.too_slow:
            return None
        if self.audio is None:
            self.audio = self.live.live_audio(self.soundfont, self.sample_rate)
            return self.audio.start()  # the lead-in plays at once
        elapsed = self.live.elapsed()
        ratio = self.live.frame(0)[1] / elapsed if elapsed > 0.05 else 0.0
        if elapsed >= 1.0 and ratio < self.min_ratio and not self.live.generated.is_set():
            self.too_slow = True
            return None
        chunk = self.audio.advance(self.live.ids(0))
        return chunk if len(chunk) else None

    def close(self) -> None:
        if self.audio is not None:
            self.audio.close()
