"""MIDI to audio with fluidsynth, in process: the music as written, at one fixed loudness.

How a render works:

- Each instrument plays on its own channel with its own program; drums play on channel 10
  (index 9) from bank 128. Sustain pedal (CC64) and every other control change and pitch bend
  go to fluidsynth at their times. Notes, controls and bends are sent in time order and the gap
  between two event times is rendered in one call, straight into a preallocated buffer.
  (fluidsynth starts events on its 64-frame blocks: 1.5 ms at 44.1 kHz.)
- Time 0 of the audio is time 0 of the music, so a primer and its continuation line up.
- The release tail is rendered, not cut: after the last event the pedals are lifted and the synth
  keeps playing until the sound (notes and reverb) falls below -80 dBFS, at most TAIL_MAX_SECONDS.

Loudness: every clip is rendered with the same fixed gain (GAIN), never normalised by its own
peak. A primer and its continuation rendered separately therefore sound equally loud, and a
quiet passage stays quiet. GAIN is set so that a fortissimo ten-note piano chord with the pedal
down just reaches full scale with FluidR3; a lively piano performance peaks around -10 dBFS.
Louder material (many instruments, loud organs) is caught by a soft limiter that leaves every
sample under LIMIT_KNEE untouched and bends only the samples above it smoothly towards full
scale, so nothing clips and nothing quieter changes. fluidsynth writes floats for us
(`fluid_synth_write_float`), so the limiter sees the true peaks, not 16-bit samples that the
synth has already clipped.

Speed (bench/render.py, BENCHMARKS.md):
- Loaded synths are kept in a small lock-protected pool keyed by (soundfont file, sample rate).
  A render checks one out, so a synth is never shared between threads; the pool resets it to
  the state of a new synth before the next render (see _reset_synth). `preload` loads one
  ahead of time, in a thread if asked.
- fluidsynth renders voices on CPU_CORES threads. Chorus is off (GM pianos do not send to it;
  it costs time); reverb stays on, for about 10% of the time, because a dry piano sounds boxed in.
- MIDI files are read with pretty_midi and checked with midi_input's checks, but not converted
  to a NoteSequence: importing note_seq alone takes about 1.5 s.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import BadRequestError, FluidsynthMissingError, OutputPathError, SoundfontError

DEFAULT_SAMPLE_RATE = 44100
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 96000  # fluidsynth's own range for synth.sample-rate
SOUNDFONT_ENV = "PERCEIVER_MUSIC_SOUNDFONT"
# Debian's fluid-soundfont-gm: better than the embedded TimGM6mb when present.
SYSTEM_SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),)
EMBEDDED_SOUNDFONT_NAME = "TimGM6mb.sf2"  # ships inside the pretty_midi wheel

# fluidsynth renders voices on this many threads: 1.3x faster with 2 than 1 on the 2-core dev
# machine, measured while it was busy with other work (more than 4 gains little: the threads
# meet every 64 frames).
CPU_CORES = max(1, min(4, os.cpu_count() or 1))
REVERB = True  # about 10% of render time (bench/render.py measures it); a dry piano sounds boxed in
GAIN = 0.4  # fluidsynth's synth.gain, the same for every clip (see the module docstring)
LIMIT_KNEE = 0.9  # samples below this are never touched by the limiter
TAIL_MAX_SECONDS = 4.0
TAIL_BLOCK_SECONDS = 0.05
TAIL_SILENCE = 1e-4  # -80 dBFS: about 3 steps of 16-bit audio
END_FADE_SECONDS = 0.05  # only when the tail is cut at TAIL_MAX_SECONDS: no click at the end

_MISSING_LIB = (
    "libfluidsynth is not installed: run `sudo apt-get install libfluidsynth3` "
    "(Debian/Ubuntu) or `brew install fluid-synth` (macOS), then try again"
)

# Events at the same sample: note-offs first (a repeated note re-strikes), then controls and
# bends, then note-ons (a pedal pressed with a chord catches it).
_NOTE_OFF, _CONTROL, _BEND, _NOTE_ON = 0, 1, 2, 3
_DRUM_CHANNEL = 9
_FLUID_BLOCK = 64  # fluidsynth renders (and applies events) in blocks of this many frames
_CHANNEL_TYPE_MELODIC, _CHANNEL_TYPE_DRUM = 0, 1
_FLUID_LOG_LEVELS_TO_SILENCE = (1, 2, 3, 4)  # ERR, WARN, INFO, DBG: we report failures ourselves


# ---- fluidsynth ----------------------------------------------------------------------------


def _import_fluidsynth():
    """Import pyfluidsynth, or say in one line how to install what is missing."""
    try:
        # pyfluidsynth prints where it found the library when $CI is set: not on our stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth
    except ModuleNotFoundError as error:
        if error.name == "fluidsynth":
            raise FluidsynthMissingError(
                "pyfluidsynth is not installed: run `.venv/bin/pip install pyfluidsynth`"
            ) from None
        raise FluidsynthMissingError(_MISSING_LIB) from None
    except (ImportError, OSError):
        # pyfluidsynth raises ImportError when it cannot find the library, OSError when the
        # library it found cannot be loaded; pretty_midi reports both as "pyfluidsynth is not
        # installed", which sends people to pip instead of apt.
        raise FluidsynthMissingError(_MISSING_LIB) from None
    return fluidsynth


class _Lib:
    """The few C functions pyfluidsynth does not wrap the way we need them."""

    def __init__(self, fluidsynth):
        from ctypes import c_float, c_int, c_void_p

        cfunc = fluidsynth.cfunc
        self.write_float = cfunc(
            "fluid_synth_write_float", c_int,
            ("synth", c_void_p, 1), ("len", c_int, 1),
            ("lout", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
            ("rout", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1),
        )  # fmt: skip
        self.set_channel_type = cfunc(
            "fluid_synth_set_channel_type", c_int, ("synth", c_void_p, 1), ("chan", c_int, 1), ("type", c_int, 1)
        )
        self.set_log_function = cfunc(
            "fluid_set_log_function", c_void_p, ("level", c_int, 1), ("fun", c_void_p, 1), ("data", c_void_p, 1)
        )
        # Deprecated in fluidsynth 2.x but still exported; it rebuilds the reverb (see _reset_synth).
        self.set_sample_rate = cfunc(
            "fluid_synth_set_sample_rate", None, ("synth", c_void_p, 1), ("sample_rate", c_float, 1)
        )
        self.noteon = fluidsynth.fluid_synth_noteon
        self.noteoff = fluidsynth.fluid_synth_noteoff
        self.cc = fluidsynth.fluid_synth_cc
        self.pitch_bend = fluidsynth.fluid_synth_pitch_bend
        if self.write_float is None:
            raise FluidsynthMissingError("this libfluidsynth is too old (no fluid_synth_write_float); install 2.x")


_lib_lock = threading.Lock()
_lib: _Lib | None = None


def _fluid() -> tuple[Any, _Lib]:
    global _lib
    with _lib_lock:  # also keeps the stdout redirection of the first import to one thread
        fluidsynth = _import_fluidsynth()
        if _lib is None:
            lib = _Lib(fluidsynth)
            if lib.set_log_function is not None:
                # fluidsynth prints warnings ("No preset found on channel 9") and errors to
                # stderr; the CLI promises one line, and every failure is checked here anyway.
                for level in _FLUID_LOG_LEVELS_TO_SILENCE:
                    lib.set_log_function(level, None, None)
            _lib = lib
        return fluidsynth, _lib


# ---- soundfonts ----------------------------------------------------------------------------


def embedded_soundfont() -> Path | None:
    """TimGM6mb.sf2 inside the installed pretty_midi, found without importing pretty_midi."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / EMBEDDED_SOUNDFONT_NAME
    return path if path.is_file() else None


def _check_soundfont(path: Path, where: str = "soundfont") -> Path:
    """A readable SoundFont 2/3 file (RIFF....sfbk), or a one-line SoundfontError naming it."""
    if not path.exists():
        raise SoundfontError(f"{where} {path} does not exist")
    if path.is_dir():
        raise SoundfontError(f"{where} {path} is a folder, not a .sf2 file")
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except PermissionError:
        raise SoundfontError(f"{where} {path} cannot be read: permission denied") from None
    except OSError as error:
        raise SoundfontError(f"{where} {path} cannot be read: {error.strerror or error}") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise SoundfontError(f"{where} {path} is not a SoundFont (.sf2/.sf3) file")
    return path.resolve()


def find_soundfont(explicit: str | os.PathLike | None = None) -> Path:
    """The soundfont to use: `explicit`, else $PERCEIVER_MUSIC_SOUNDFONT, else FluidR3_GM when
    installed, else the TimGM6mb that ships with pretty_midi."""
    if explicit is not None and str(explicit) != "":
        return _check_soundfont(Path(explicit).expanduser())
    from_env = os.environ.get(SOUNDFONT_ENV, "").strip()
    if from_env:
        return _check_soundfont(Path(from_env).expanduser(), f"soundfont {SOUNDFONT_ENV}=")
    for system in SYSTEM_SOUNDFONTS:
        if system.is_file():
            with contextlib.suppress(SoundfontError):  # a broken system file: use the embedded one
                return _check_soundfont(system)
    embedded = embedded_soundfont()
    if embedded is None:
        raise SoundfontError(f"no soundfont found: pass --soundfont PATH or set {SOUNDFONT_ENV}")
    return _check_soundfont(embedded)


# ---- synth pool ----------------------------------------------------------------------------


@dataclass
class _LoadedSynth:
    synth: Any  # fluidsynth.Synth
    sfid: int
    sample_rate: int
    frames: int = 0  # rendered so far: fluidsynth works in blocks of 64, see _reset_synth

    @property
    def ptr(self) -> int:
        return self.synth.synth


def _load_synth(soundfont: Path, sample_rate: int) -> _LoadedSynth:
    fluidsynth, _ = _fluid()
    synth = fluidsynth.Synth(
        gain=GAIN,
        samplerate=sample_rate,
        **{
            "synth.chorus.active": 0,
            "synth.reverb.active": int(REVERB),
            # A synth is used by one render at a time (the pool checks it out), so fluidsynth's
            # own per-call mutex is not needed.
            "synth.threadsafe-api": 0,
            "synth.cpu-cores": CPU_CORES,
            # Load only the samples of the programs a render selects (the piano, not all 140 MB
            # of FluidR3: 0.04 s instead of 0.1 to 0.7 s), and do not mlock them: we render
            # offline, so a page fault is no audible glitch.
            "synth.dynamic-sample-loading": 1,
            "synth.lock-memory": 0,
        },
    )
    sfid = synth.sfload(str(soundfont))
    if sfid < 0:
        synth.delete()
        raise SoundfontError(f"fluidsynth cannot load the soundfont {soundfont}")
    return _LoadedSynth(synth, sfid, sample_rate)


def _reset_synth(loaded: _LoadedSynth, lib: _Lib) -> None:
    """Back to the state of a new synth, so that a clip renders the same every time.

    - system_reset only *releases* voices (they ring on); all_sounds_off after it stops them.
    - The reverb still rings: render it away (no voices: a few ms).
    - fluidsynth applies events at the start of its 64-frame blocks: bring the frame count back
      to a whole block, or the next render's notes start up to 63 frames off.
    - The reverb's modulation keeps running even in silence, and no API resets it except
      setting the sample rate again, which rebuilds the reverb; so that comes last, with no
      rendering after it. Measured: without it each reuse drifted further from a new synth
      (1%, 1.3%, 1.5%, ... of the signal's RMS); with it a reused synth stays within 0.1%
      (-60 dB) of a new one, render after render.
    """
    loaded.synth.system_reset()
    loaded.synth.all_sounds_off(-1)
    scratch = np.zeros((_FLUID_BLOCK * 64, 2), dtype=np.float32)  # 93 ms at 44.1 kHz
    for _ in range(200):  # at most ~18 s of audio; in practice about 1.5 s
        _write(lib, loaded, scratch, 0, len(scratch))
        if float(np.abs(scratch).max()) < 1e-6:
            break
    else:
        raise RuntimeError("fluidsynth did not fall silent after a reset")
    _write(lib, loaded, scratch, 0, -loaded.frames % _FLUID_BLOCK)
    if lib.set_sample_rate is not None:
        lib.set_sample_rate(loaded.ptr, float(loaded.sample_rate))


class SynthPool:
    """Loaded synths by (soundfont file, sample rate). Thread-safe: a render checks one out, so
    no two threads ever share a synth; at most `max_idle` idle synths are kept per key.

    `preload` loads one ahead of time (at app start, or while the CLI reads the MIDI file); a
    checkout that finds a preload under way waits for it rather than loading a second copy.
    """

    def __init__(self, max_idle: int = 2):
        self.max_idle = max_idle
        self.loads = 0  # synths created so far: for tests and benchmarks
        self._lock = threading.Condition()
        self._idle: dict[tuple, list[_LoadedSynth]] = {}
        self._preloading: dict[tuple, int] = {}

    @staticmethod
    def _key(soundfont: Path, sample_rate: int) -> tuple:
        stat = soundfont.stat()  # a soundfont replaced on disk is loaded again
        return (str(soundfont), stat.st_mtime_ns, stat.st_size, sample_rate)

    def _load(self, soundfont: Path, sample_rate: int) -> _LoadedSynth:
        loaded = _load_synth(soundfont, sample_rate)  # slow: never under the lock
        with self._lock:
            self.loads += 1
        return loaded

    def _put_back(self, key: tuple, loaded: _LoadedSynth) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(loaded)
                self._lock.notify_all()
                return
        loaded.synth.delete()

    def preload(self, soundfont: Path, sample_rate: int, background: bool = False) -> None:
        """Load a synth into the pool. In the background the intent is registered before this
        returns, so a checkout that follows waits for this synth instead of loading another."""
        key = self._key(soundfont, sample_rate)
        with self._lock:
            if self._idle.get(key):
                return
            self._preloading[key] = self._preloading.get(key, 0) + 1
        if background:
            threading.Thread(target=self._finish_preload, args=(key, soundfont, sample_rate, True), daemon=True).start()
        else:
            self._finish_preload(key, soundfont, sample_rate, False)

    def _finish_preload(self, key: tuple, soundfont: Path, sample_rate: int, quiet: bool) -> None:
        try:
            loaded = self._load(soundfont, sample_rate)
        except Exception:
            if not quiet:
                raise
            return  # the checkout that follows loads again and reports the error itself
        finally:
            with self._lock:
                self._preloading[key] -= 1
                self._lock.notify_all()
        self._put_back(key, loaded)

    @contextlib.contextmanager
    def checkout(self, soundfont: Path, sample_rate: int) -> Iterator[_LoadedSynth]:
        _, lib = _fluid()
        key = self._key(soundfont, sample_rate)
        with self._lock:
            while not self._idle.get(key) and self._preloading.get(key, 0) > 0:
                self._lock.wait()
            idle = self._idle.get(key)
            loaded = idle.pop() if idle else None
        if loaded is None:
            loaded = self._load(soundfont, sample_rate)
        try:
            yield loaded
            _reset_synth(loaded, lib)
        except BaseException:
            loaded.synth.delete()  # its state is unknown: never hand it out again
            raise
        self._put_back(key, loaded)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for synths in idle.values():
            for loaded in synths:
                loaded.synth.delete()


SYNTH_POOL = SynthPool()


def preload(
    soundfont: str | os.PathLike | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE, background: bool = False
) -> Path:
    """Load a synth for this soundfont and rate into the pool now, so the next render starts at
    once (the web app at start-up; the CLI while it reads the MIDI file). Returns the soundfont
    it resolved to. With `background`, loading runs in a thread and errors surface at render."""
    path = find_soundfont(soundfont)
    SYNTH_POOL.preload(path, _check_sample_rate(sample_rate), background=background)
    return path


def clear_synth_cache() -> None:
    """Free every idle synth (and the soundfont samples it holds)."""
    SYNTH_POOL.clear()


# ---- rendering -----------------------------------------------------------------------------


def _write(lib: _Lib, loaded: _LoadedSynth, buffer: np.ndarray, start: int, count: int) -> None:
    """Render `count` frames into rows [start, start+count) of a C-contiguous (n, 2) float32 buffer."""
    if count <= 0:
        return
    address = buffer.ctypes.data + start * 2 * 4
    # Left samples at even floats, right at odd ones: interleaved stereo in place, no copies.
    lib.write_float(loaded.ptr, count, address, 0, 2, address, 1, 2)
    loaded.frames += count


@dataclass(frozen=True)
class _Channels:
    by_track: dict[tuple, int]  # (instrument, program, is_drum) -> channel
    presets: dict[int, tuple[int, int, bool]]  # channel -> (bank, program, is_drum)


def _assign_channels(music, channel_count: int) -> _Channels:
    """One channel per (instrument, program, drum) track; drums on 9 (then 25, 41, ...)."""
    groups = (music.notes, music.control_changes, music.pitch_bends)
    tracks = sorted({(item.instrument, item.program, bool(item.is_drum)) for group in groups for item in group})
    free = {
        False: iter([c for c in range(channel_count) if c % 16 != _DRUM_CHANNEL]),
        True: iter(range(_DRUM_CHANNEL, channel_count, 16)),
    }
    by_track: dict[tuple, int] = {}
    presets: dict[int, tuple[int, int, bool]] = {}
    first_with_sound: dict[tuple[int, bool], int] = {}
    for track in tracks:
        _, program, is_drum = track
        channel = next(free[is_drum], None)
        if channel is None:  # more tracks than channels: share with a track of the same sound
            channel = first_with_sound.get((program, is_drum), _DRUM_CHANNEL if is_drum else 0)
        first_with_sound.setdefault((program, is_drum), channel)
        by_track[track] = channel
        presets.setdefault(channel, (128 if is_drum else 0, program, is_drum))
    return _Channels(by_track, presets)


def _select_presets(loaded: _LoadedSynth, lib: _Lib, channels: _Channels) -> None:
    synth = loaded.synth
    for channel, (bank, program, is_drum) in channels.presets.items():
        if lib.set_channel_type is not None:
            lib.set_channel_type(loaded.ptr, channel, _CHANNEL_TYPE_DRUM if is_drum else _CHANNEL_TYPE_MELODIC)
        # A small soundfont lacks some presets: fall back to the bank's first, then a piano.
        for bank_try, program_try in ((bank, program), (bank, 0), (0, 0)):
            if synth.program_select(channel, loaded.sfid, bank_try, program_try) == 0:
                break


def _events(music, channels: _Channels, sample_rate: int) -> list[tuple[int, int, int, int, int]]:
    """(sample, kind, channel, a, b), sorted: the whole performance as synth calls."""
    events = []
    track = channels.by_track
    for note in music.notes:
        if note.velocity <= 0 or not 0 <= note.pitch <= 127:
            continue
        channel = track[(note.instrument, note.program, bool(note.is_drum))]
        start = round(note.start_time * sample_rate)
        end = max(round(note.end_time * sample_rate), start + 1)  # the off always after the on
        events.append((start, _NOTE_ON, channel, note.pitch, min(127, note.velocity)))
        events.append((end, _NOTE_OFF, channel, note.pitch, 0))
    for change in music.control_changes:
        channel = track[(change.instrument, change.program, bool(change.is_drum))]
        number, value = change.control_number, change.control_value
        if 0 <= number <= 127:
            events.append((round(change.time * sample_rate), _CONTROL, channel, number, min(127, max(0, value))))
    for bend in music.pitch_bends:
        channel = track[(bend.instrument, bend.program, bool(bend.is_drum))]
        value = min(16383, max(0, bend.bend + 8192))  # NoteSequence bends are -8192..8191
        events.append((round(bend.time * sample_rate), _BEND, channel, value, 0))
    events.sort()
    return events


def _soft_limit(audio: np.ndarray) -> np.ndarray:
    """Identity below LIMIT_KNEE; above it a tanh curve that approaches full scale (in place)."""
    if audio.size == 0 or (audio.max() <= LIMIT_KNEE and audio.min() >= -LIMIT_KNEE):
        return audio  # the usual case, checked without a temporary the size of the clip
    over = np.abs(audio) > LIMIT_KNEE
    room = 1.0 - LIMIT_KNEE
    excess = np.abs(audio[over]) - LIMIT_KNEE
    audio[over] = np.sign(audio[over]) * (LIMIT_KNEE + room * np.tanh(excess / room))
    return audio


def _check_sample_rate(sample_rate: int) -> int:
    if int(sample_rate) != sample_rate or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise BadRequestError(
            f"sample rate {sample_rate} is not supported (use {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
        )
    return int(sample_rate)


class _Note(NamedTuple):
    instrument: int
    program: int
    is_drum: bool
    pitch: int
    velocity: int
    start_time: float
    end_time: float


class _Control(NamedTuple):
    instrument: int
    program: int
    is_drum: bool
    time: float
    control_number: int
    control_value: int


class _Bend(NamedTuple):
    instrument: int
    program: int
    is_drum: bool
    time: float
    bend: int


@dataclass
class _Performance:
    """A PrettyMIDI's notes, controls and bends under NoteSequence's field names."""

    notes: list[_Note]
    control_changes: list[_Control]
    pitch_bends: list[_Bend]


def _performance_from_pretty_midi(pm) -> _Performance:
    notes, controls, bends = [], [], []
    for index, inst in enumerate(pm.instruments):
        track = (index, inst.program, bool(inst.is_drum))
        notes += [_Note(*track, n.pitch, n.velocity, n.start, n.end) for n in inst.notes]
        controls += [_Control(*track, c.time, c.number, c.value) for c in inst.control_changes]
        bends += [_Bend(*track, b.time, b.pitch) for b in inst.pitch_bends]
    return _Performance(notes, controls, bends)


def performance_of_notes(notes) -> _Performance:
    """Notes with NoteSequence's field names (instrument, program, is_drum, pitch, velocity,
    start_time, end_time) as something `render` takes, without a round trip through MIDI."""
    return _Performance([_Note(int(n.instrument), int(n.program), bool(n.is_drum), int(n.pitch), int(n.velocity),
                               float(n.start_time), float(n.end_time)) for n in notes], [], [])


def _load_music(midi: Any):
    """A validated NoteSequence, or for MIDI files, bytes and PrettyMIDIs a _Performance.

    MIDI is checked with midi_input's own checks (size, header, damage, tempo, notes, length)
    but not converted to a NoteSequence: importing note_seq costs about 1.5 s (it pulls in
    bokeh, pandas and scipy), a quarter of the budget for rendering five minutes from the CLI.
    """
    from . import midi_input

    if isinstance(midi, (list, tuple, np.ndarray)):  # token ids from the model
        from .tokenizer import decode

        midi = decode(midi)
    if isinstance(midi, _Performance):
        return midi
    limits = midi_input.DEFAULT_LIMITS
    if isinstance(midi, (str, os.PathLike)):
        name = Path(midi).name or str(midi)
        pm = midi_input.parse_midi_bytes(midi_input.read_midi_bytes(midi, limits), name, limits)
    elif isinstance(midi, (bytes, bytearray, memoryview)):
        name = "the MIDI input"
        pm = midi_input.parse_midi_bytes(bytes(midi), name, limits)
    elif type(midi).__name__ == "PrettyMIDI":
        name, pm = "the MIDI input", midi
    else:  # a NoteSequence, or something load_note_sequence refuses in its own words
        return midi_input.load_note_sequence(midi)
    midi_input._check_tempo(pm, name, limits)
    performance = _performance_from_pretty_midi(pm)
    midi_input.check_sequence(performance, name, limits)
    return performance


def render(midi: Any, soundfont: str | os.PathLike | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Render MIDI to float32 stereo audio of shape (frames, 2), at the project's fixed gain.

    `midi` is a path, MIDI bytes, a PrettyMIDI, a NoteSequence or a list of token ids. Raises
    BadMidiError, SoundfontError, FluidsynthMissingError or BadRequestError (sample rate).
    """
    sample_rate = _check_sample_rate(sample_rate)
    music = _load_music(midi)
    soundfont_path = find_soundfont(soundfont)
    _, lib = _fluid()
    with SYNTH_POOL.checkout(soundfont_path, sample_rate) as loaded:
        return _render_loaded(music, loaded, lib)


def _render_loaded(music, loaded: _LoadedSynth, lib: _Lib) -> np.ndarray:
    sample_rate = loaded.sample_rate
    channels = _assign_channels(music, int(loaded.synth.get_setting("synth.midi-channels") or 16))
    _select_presets(loaded, lib, channels)
    events = _events(music, channels, sample_rate)
    music_end = events[-1][0] if events else 0
    tail_max = int(TAIL_MAX_SECONDS * sample_rate)
    audio = np.zeros((music_end + tail_max, 2), dtype=np.float32)

    synth, noteon, noteoff, cc, bend = loaded.ptr, lib.noteon, lib.noteoff, lib.cc, lib.pitch_bend
    position = 0
    for sample, kind, channel, a, b in events:
        if sample > position:  # the whole gap up to this event in one call
            _write(lib, loaded, audio, position, sample - position)
            position = sample
        if kind == _NOTE_ON:
            noteon(synth, channel, a, b)
        elif kind == _NOTE_OFF:
            noteoff(synth, channel, a)
        elif kind == _CONTROL:
            cc(synth, channel, a, b)
        else:
            bend(synth, channel, a)

    # The music has ended: lift the pedals (sustain, sostenuto) so the notes release naturally,
    # then render the tail until it is silent.
    for channel in channels.presets:
        cc(synth, channel, 64, 0)
        cc(synth, channel, 66, 0)
    block = max(1, int(TAIL_BLOCK_SECONDS * sample_rate))
    end = len(audio)
    while position < end:
        count = min(block, end - position)
        _write(lib, loaded, audio, position, count)
        position += count
        if float(np.abs(audio[position - count : position]).max()) < TAIL_SILENCE:
            break
    else:
        fade = min(position, int(END_FADE_SECONDS * sample_rate))
        audio[position - fade : position] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    return _soft_limit(audio[:position])


class StreamRenderer:
    """Render while the music is still being written: the same synth calls, in the same order, as
    `render` makes for the finished music, so the stream sounds exactly like the final render.

    The tracks (instrument, program, is_drum) are named up front (they fix the channels). Notes
    are added as they become known; `render_until(t)` renders every event before t and the
    audio up to t (call it only once every event before t has been added); `finish()` renders
    the rest and the release tail. A synth is checked out of the pool until `close()`.
    """

    def __init__(self, tracks, soundfont: str | os.PathLike | None = None,
                 sample_rate: int = DEFAULT_SAMPLE_RATE) -> None:
        import heapq

        self._heapq = heapq
        self.sample_rate = _check_sample_rate(sample_rate)
        _, self._lib = _fluid()
        self._stack = contextlib.ExitStack()
        self._loaded = self._stack.enter_context(SYNTH_POOL.checkout(find_soundfont(soundfont), self.sample_rate))
        stub = _Performance([_Note(i, p, bool(d), 60, 1, 0.0, 0.0) for i, p, d in tracks], [], [])
        self._channels = _assign_channels(stub, int(self._loaded.synth.get_setting("synth.midi-channels") or 16))
        _select_presets(self._loaded, self._lib, self._channels)
        self._events: list = []
        self._on_at: dict = {}
        self.position = 0  # samples rendered so far
        self._last_event = 0
        self.closed = False

    def add_notes(self, notes) -> None:
        """Whole notes with NoteSequence fields (instrument, program, is_drum, pitch, velocity, times)."""
        rate = self.sample_rate
        for note in notes:
            if note.velocity <= 0 or not 0 <= note.pitch <= 127:
                continue
            track = (note.instrument, note.program, bool(note.is_drum))
            start = round(note.start_time * rate)
            self._push(start, True, track, note.pitch, note.velocity)
            self._push(max(round(note.end_time * rate), start + 1), False, track, note.pitch, 0)

    def add_event(self, seconds: float, on: bool, track: tuple, pitch: int, velocity: int = 0) -> None:
        """One note-on or note-off, for notes whose end is not known when they start. A note-off
        is sent at least one sample after its note-on, as `render` does."""
        sample = round(seconds * self.sample_rate)
        if not on:
            sample = max(sample, self._on_at.get((track, pitch), -1) + 1)
        self._push(sample, on, track, pitch, velocity)

    def _push(self, sample: int, on: bool, track: tuple, pitch: int, velocity: int) -> None:
        if not 0 <= pitch <= 127 or (on and velocity <= 0):
            return
        channel = self._channels.by_track[(track[0], track[1], bool(track[2]))]
        if on:
            self._on_at[(track, pitch)] = sample
            self._heapq.heappush(self._events, (sample, _NOTE_ON, channel, pitch, min(127, velocity)))
        else:
            self._heapq.heappush(self._events, (sample, _NOTE_OFF, channel, pitch, 0))

    def _run_events(self, until: int | None, audio_parts: list) -> None:
        lib, loaded = self._lib, self._loaded
        synth, noteon, noteoff = loaded.ptr, lib.noteon, lib.noteoff
        pop = self._heapq.heappop
        while self._events and (until is None or self._events[0][0] < until):
            sample, kind, channel, a, b = pop(self._events)
            if sample > self.position:
                audio_parts.append(self._write(sample - self.position))
            self._last_event = max(self._last_event, sample)
            if kind == _NOTE_ON:
                noteon(synth, channel, a, b)
            else:
                noteoff(synth, channel, a)

    def _write(self, count: int) -> np.ndarray:
        buffer = np.zeros((count, 2), dtype=np.float32)
        _write(self._lib, self._loaded, buffer, 0, count)
        self.position += count
        return buffer

    def render_until(self, seconds: float) -> np.ndarray:
        """The audio from where the last call ended up to `seconds`."""
        until = round(seconds * self.sample_rate)
        parts: list = []
        self._run_events(until, parts)
        if until > self.position:
            parts.append(self._write(until - self.position))
        return _soft_limit(np.concatenate(parts)) if parts else np.zeros((0, 2), dtype=np.float32)

    def finish(self) -> np.ndarray:
        """The rest: remaining events, then the pedals lifted and the tail until silence (as render)."""
        parts: list = []
        self._run_events(None, parts)
        lib, loaded, rate = self._lib, self._loaded, self.sample_rate
        for channel in self._channels.presets:
            lib.cc(loaded.ptr, channel, 64, 0)
            lib.cc(loaded.ptr, channel, 66, 0)
        # as _render_loaded: its buffer ends TAIL_MAX_SECONDS after the last event
        end = max(self._last_event, 0) + int(TAIL_MAX_SECONDS * rate)
        block = max(1, int(TAIL_BLOCK_SECONDS * rate))
        while self.position < end:
            chunk = self._write(min(block, end - self.position))
            parts.append(chunk)
            if float(np.abs(chunk).max()) < TAIL_SILENCE:
                break
        else:
            if parts:
                fade = min(len(parts[-1]), int(END_FADE_SECONDS * rate))
                parts[-1][len(parts[-1]) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
        self.close()
        return _soft_limit(np.concatenate(parts)) if parts else np.zeros((0, 2), dtype=np.float32)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stack.close()


def duration_seconds(audio: np.ndarray, sample_rate: int) -> float:
    return len(audio) / float(sample_rate)


# ---- writers -------------------------------------------------------------------------------

# suffix -> (libsndfile format, subtype)
AUDIO_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def available_audio_formats() -> list[str]:
    """The suffixes this machine's libsndfile can write (wav and flac always; ogg, mp3 maybe)."""
    import soundfile

    formats = soundfile.available_formats()
    usable = []
    for suffix, (fmt, subtype) in AUDIO_FORMATS.items():
        if fmt in formats and subtype in soundfile.available_subtypes(fmt):
            usable.append(suffix)
    return usable


def audio_format(path: str | os.PathLike, format: str | None = None) -> tuple[str, str]:
    """(libsndfile format, subtype) for a path's suffix or an explicit format, or OutputPathError."""
    path = Path(path)
    name = (format or path.suffix.lstrip(".")).lower()
    available = available_audio_formats()
    if name not in available:
        what = f"format {name!r}" if name else "no suffix"
        raise OutputPathError(f"cannot write {path.name}: {what}; audio formats here are {', '.join(available)}")
    return AUDIO_FORMATS[name]


def _pcm_ready(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (frames,) or (frames, channels), not {audio.shape}")
    if audio.size and (audio.max() > 1.0 or audio.min() < -1.0):
        # libsndfile wraps (not clips) floats beyond full scale when it converts to integers.
        audio = np.clip(audio, -1.0, 1.0)
    return audio


def write_audio(
    path: str | os.PathLike, audio: np.ndarray, sample_rate: int, format: str | None = None
) -> Path:
    """Write audio atomically; the format comes from `format` or the suffix (wav, flac, ogg, mp3)."""
    import soundfile

    from .atomic_io import atomic_path

    path = Path(path)
    fmt, subtype = audio_format(path, format)
    data = _pcm_ready(audio)
    with atomic_path(path) as tmp:
        try:
            soundfile.write(str(tmp), data, int(sample_rate), format=fmt, subtype=subtype)
        except (RuntimeError, soundfile.SoundFileError) as error:  # disk full, codec failure
            raise OutputPathError(f"cannot write {path}: {error}") from None
    return path


def audio_to_wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV in memory, for a browser or a notebook player."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, _pcm_ready(audio), int(sample_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


__all__: Sequence[str] = (
    "DEFAULT_SAMPLE_RATE",
    "GAIN",
    "SYNTH_POOL",
    "StreamRenderer",
    "SynthPool",
    "audio_format",
    "audio_to_wav_bytes",
    "available_audio_formats",
    "clear_synth_cache",
    "duration_seconds",
    "embedded_soundfont",
    "find_soundfont",
    "preload",
    "performance_of_notes",
    "render",
    "write_audio",
)
