"""Rendering with the real fluidsynth: timing, tail, loudness, soundfonts, writers, the CLI verb."""

from __future__ import annotations

import builtins
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile

from perceiver_music import render as R
from perceiver_music.errors import (
    BadMidiError,
    BadRequestError,
    FluidsynthMissingError,
    OutputPathError,
    SoundfontError,
)

REPO = Path(__file__).resolve().parents[1]
SR = 44100
# The embedded soundfont: the one CI has, and the fastest to load.
TIMGM = R.embedded_soundfont()


@pytest.fixture(autouse=True)
def _no_soundfont_env(monkeypatch):
    monkeypatch.delenv(R.SOUNDFONT_ENV, raising=False)


def piano_piece(seconds: float = 3.0, velocity: int = 90, start: float = 0.0) -> pretty_midi.PrettyMIDI:
    """Chords and a melody with the pedal down; the last chord is released at the end."""
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    t = start
    while t < start + seconds - 1e-9:
        for pitch in (48, 55, 64):
            piano.notes.append(pretty_midi.Note(velocity, pitch, t, t + 0.45))
        piano.notes.append(pretty_midi.Note(velocity, 72 + int(t * 2) % 7, t + 0.25, t + 0.5))
        t += 0.5
    piano.control_changes.append(pretty_midi.ControlChange(64, 127, start))
    piano.control_changes.append(pretty_midi.ControlChange(64, 0, start + seconds - 0.6))
    pm.instruments.append(piano)
    return pm


def peak(audio: np.ndarray) -> float:
    return float(np.abs(audio).max()) if audio.size else 0.0


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


# ---- timing and tail -----------------------------------------------------------------------


def test_render_is_the_music_then_a_decaying_tail():
    pm = piano_piece(3.0)
    end = pm.get_end_time()
    audio = R.render(pm, soundfont=TIMGM)
    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[1] == 2
    music, tail = audio[: int(end * SR)], audio[int(end * SR) :]
    assert rms(music) > 1e-3  # sound, not silence
    assert 0.05 < len(tail) / SR <= R.TAIL_MAX_SECONDS + 0.01
    first, last = tail[: int(0.05 * SR)], tail[-int(0.05 * SR) :]
    assert peak(first) > 1e-3  # the release is rendered, not cut
    assert peak(last) < R.TAIL_SILENCE  # and it ends because it decayed
    assert peak(first) > 30 * peak(last)


def test_audio_starts_at_music_time_zero():
    audio = R.render(piano_piece(1.0, start=1.0), soundfont=TIMGM)
    assert peak(audio[: int(0.99 * SR)]) < 1e-5  # the reverb keeps a floor near 1e-8
    assert peak(audio[int(1.0 * SR) : int(1.1 * SR)]) > 1e-3


def test_other_sample_rate_gives_the_same_duration():
    pm = piano_piece(2.0)
    at_44k = R.render(pm, soundfont=TIMGM, sample_rate=44100)
    at_22k = R.render(pm, soundfont=TIMGM, sample_rate=22050)
    assert abs(len(at_44k) / 44100 - len(at_22k) / 22050) < 0.2
    assert rms(at_22k) > 1e-3
    with pytest.raises(BadRequestError, match="sample rate"):
        R.render(pm, soundfont=TIMGM, sample_rate=1000)


def test_sustain_pedal_reaches_the_synth():
    def short_note(pedal: bool) -> pretty_midi.PrettyMIDI:
        pm = pretty_midi.PrettyMIDI()
        piano = pretty_midi.Instrument(program=0)
        piano.notes.append(pretty_midi.Note(100, 60, 0.0, 0.1))
        piano.notes.append(pretty_midi.Note(1, 100, 2.0, 2.01))  # keeps the music 2 s long
        if pedal:
            piano.control_changes += [pretty_midi.ControlChange(64, 127, 0.0), pretty_midi.ControlChange(64, 0, 1.9)]
        pm.instruments.append(piano)
        return pm

    window = slice(int(0.8 * SR), int(1.5 * SR))
    with_pedal = rms(R.render(short_note(True), soundfont=TIMGM)[window])
    without = rms(R.render(short_note(False), soundfont=TIMGM)[window])
    assert with_pedal > 10 * without


def test_drums_play_on_channel_10_and_instruments_on_their_own_channels():
    pm = piano_piece(1.0, start=2.0)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes += [pretty_midi.Note(110, 38, t, t + 0.1) for t in (0.0, 0.5)]  # snare
    violin = pretty_midi.Instrument(program=40)
    violin.notes.append(pretty_midi.Note(80, 76, 2.0, 2.5))
    pm.instruments += [drums, violin]
    ns = R._load_music(pm)
    channels = R._assign_channels(ns, 256)
    drum_channels = {c for (_, _, is_drum), c in channels.by_track.items() if is_drum}
    assert drum_channels == {9}
    assert len(set(channels.by_track.values())) == 3
    assert channels.presets[9][0] == 128  # drum bank
    audio = R.render(pm, soundfont=TIMGM)
    assert peak(audio[: int(1.0 * SR)]) > 1e-2  # the drums, alone before the piano starts


# ---- loudness ------------------------------------------------------------------------------


def test_the_same_notes_are_equally_loud_in_clips_of_different_peaks():
    """A fixed gain: a per-clip normaliser would turn the first clip up or the second down."""
    loud = piano_piece(2.0, velocity=110)
    alone = R.render(loud, soundfont=TIMGM)
    longer = piano_piece(2.0, velocity=110)
    cluster = longer.instruments[0]
    for t in np.arange(5.0, 7.0, 0.25):  # much louder, later, after the passage has died away
        cluster.notes += [pretty_midi.Note(127, p, t, t + 0.25) for p in range(36, 90, 3)]
    with_more = R.render(longer, soundfont=TIMGM)
    assert len(with_more) > len(alone) + 3 * SR and peak(with_more) > 1.5 * peak(alone)
    window = slice(0, int(2.0 * SR))
    # A normaliser would differ by the ratio of the peaks (> 1.5x); renders differ by < 0.1 dB.
    assert rms(with_more[window]) == pytest.approx(rms(alone[window]), rel=0.02)


def test_soft_limiter_touches_only_samples_above_the_knee():
    x = np.linspace(-3.0, 3.0, 6001, dtype=np.float32)
    y = R._soft_limit(x.copy())
    quiet = np.abs(x) <= R.LIMIT_KNEE
    assert np.array_equal(y[quiet], x[quiet])
    assert np.all(np.abs(y) <= 1.0) and np.all(np.diff(y) >= 0)
    assert np.all(np.abs(y[np.abs(x) < 1.2]) < 1.0)


def test_a_very_loud_clip_never_exceeds_full_scale():
    pm = pretty_midi.PrettyMIDI()
    for program in (19, 30, 48, 61, 81):  # organ, distortion guitar, strings, brass, lead
        inst = pretty_midi.Instrument(program=program)
        inst.notes += [pretty_midi.Note(127, p, 0.0, 1.0) for p in range(40, 90, 2)]
        pm.instruments.append(inst)
    audio = R.render(pm, soundfont=TIMGM)
    assert 0.9 < peak(audio) <= 1.0


# ---- the synth pool ------------------------------------------------------------------------


def same_music(a: np.ndarray, b: np.ndarray, seconds: float) -> bool:
    """The same render, give or take what a reused fluidsynth voice carries over (measured -60 dB)."""
    n = int(seconds * SR)
    return len(a) >= n and len(b) >= n and rms(a[:n] - b[:n]) < 0.005 * rms(a[:n])


def test_a_reused_synth_starts_silent_and_renders_the_same():
    loud = piano_piece(2.0, velocity=127)
    R.clear_synth_cache()
    first = R.render(loud, soundfont=TIMGM)  # a new synth; it goes back to the pool used
    late = R.render(piano_piece(1.0, start=1.0), soundfont=TIMGM)
    assert peak(late[: int(0.99 * SR)]) < 1e-5  # no voices, no reverb left over
    again = R.render(loud, soundfont=TIMGM)
    assert same_music(again, first, 2.0)
    assert abs(len(again) - len(first)) < 0.2 * SR


def test_threads_render_at_once_with_the_same_result():
    pm = piano_piece(2.0)
    expected = R.render(pm, soundfont=TIMGM)
    results, errors = [None] * 3, []

    def work(i: int) -> None:
        try:
            results[i] = R.render(pm, soundfont=TIMGM)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for result in results:
        assert same_music(result, expected, 2.0)


# ---- soundfonts ----------------------------------------------------------------------------


def fake_soundfont(path: Path) -> Path:
    """Enough of a header for find_soundfont, which checks but does not load."""
    path.write_bytes(b"RIFF\x00\x00\x00\x00sfbk" + b"\x00" * 64)
    return path


def test_soundfont_resolution_order(tmp_path, monkeypatch):
    explicit, from_env, system = (fake_soundfont(tmp_path / n) for n in ("a.sf2", "b.sf2", "FluidR3_GM.sf2"))
    monkeypatch.setattr(R, "SYSTEM_SOUNDFONTS", (system,))
    monkeypatch.setenv(R.SOUNDFONT_ENV, str(from_env))
    assert R.find_soundfont(explicit) == explicit.resolve()
    assert R.find_soundfont() == from_env.resolve()
    monkeypatch.delenv(R.SOUNDFONT_ENV)
    assert R.find_soundfont() == system.resolve()
    monkeypatch.setattr(R, "SYSTEM_SOUNDFONTS", (tmp_path / "not-installed.sf2",))
    assert R.find_soundfont() == TIMGM.resolve()
    assert TIMGM.name == "TimGM6mb.sf2"


def test_fluidr3_is_the_default_where_installed():
    fluidr3 = R.SYSTEM_SOUNDFONTS[0]
    expected = fluidr3.resolve() if fluidr3.is_file() else TIMGM.resolve()
    assert R.find_soundfont() == expected


def test_missing_soundfont_is_one_line_naming_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope.sf2"
    with pytest.raises(SoundfontError, match="nope.sf2 does not exist") as caught:
        R.find_soundfont(missing)
    assert "\n" not in str(caught.value)
    monkeypatch.setenv(R.SOUNDFONT_ENV, str(missing))
    with pytest.raises(SoundfontError, match=R.SOUNDFONT_ENV):
        R.render(piano_piece(1.0))


def test_a_text_file_is_not_a_soundfont(tmp_path):
    text = tmp_path / "notes.sf2"
    text.write_text("these are not samples\n")
    with pytest.raises(SoundfontError, match="notes.sf2 is not a SoundFont"):
        R.render(piano_piece(1.0), soundfont=text)
    with pytest.raises(SoundfontError, match="folder"):
        R.find_soundfont(tmp_path)


def test_a_damaged_soundfont_fails_to_load(tmp_path):
    damaged = fake_soundfont(tmp_path / "damaged.sf2")
    with pytest.raises(SoundfontError, match="cannot load the soundfont .*damaged.sf2"):
        R.render(piano_piece(1.0), soundfont=damaged)


def test_bad_midi_is_a_bad_midi_error(tmp_path):
    bad = tmp_path / "song.mid"
    bad.write_text("not midi")
    with pytest.raises(BadMidiError, match="song.mid is not a MIDI file"):
        R.render(bad, soundfont=TIMGM)


@pytest.mark.parametrize(
    "failure", [ImportError("Couldn't find the FluidSynth library."), OSError("libfluidsynth.so.3: cannot open")]
)
def test_missing_libfluidsynth_says_what_to_install(monkeypatch, failure):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "fluidsynth":
            raise failure
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(FluidsynthMissingError) as caught:
        R.render(piano_piece(1.0), soundfont=TIMGM)
    message = str(caught.value)
    assert message.startswith("libfluidsynth is not installed: run `sudo apt-get install libfluidsynth3`")
    assert "\n" not in message


# ---- writers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return R.render(piano_piece(1.0), soundfont=TIMGM)


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_lossless_writers_round_trip(tmp_path, clip, suffix):
    path = R.write_audio(tmp_path / f"out.{suffix}", clip, SR)
    back, rate = soundfile.read(path, dtype="float32")
    assert rate == SR and back.shape == clip.shape
    assert np.abs(back - clip).max() < 2.0 / 32768  # 16-bit PCM
    assert soundfile.info(str(path)).subtype == "PCM_16"
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{suffix}"]  # no temp file left


def test_lossy_formats_where_libsndfile_has_them(tmp_path, clip):
    for suffix in set(R.available_audio_formats()) & {"ogg", "mp3"}:
        path = R.write_audio(tmp_path / f"out.{suffix}", clip, SR)
        info = soundfile.info(str(path))
        assert info.samplerate == SR and abs(info.frames - len(clip)) < SR // 10


def test_unknown_format_lists_what_is_available(tmp_path, clip):
    with pytest.raises(OutputPathError, match="audio formats here are wav, flac"):
        R.write_audio(tmp_path / "out.aiff", clip, SR)


def test_audio_to_wav_bytes(clip):
    data = R.audio_to_wav_bytes(clip, SR)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    back, rate = soundfile.read(__import__("io").BytesIO(data), dtype="float32")
    assert rate == SR and back.shape == clip.shape


def test_no_partial_file_when_the_write_fails(tmp_path, clip, monkeypatch):
    target = tmp_path / "out.wav"
    target.write_bytes(b"the previous take")

    def failing_write(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise soundfile.LibsndfileError(0, "disk full")

    monkeypatch.setattr(soundfile, "write", failing_write)
    with pytest.raises(OutputPathError, match="cannot write .*out.wav"):
        R.write_audio(target, clip, SR)
    assert target.read_bytes() == b"the previous take"
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_unwritable_output_folder(tmp_path, clip):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    with pytest.raises(OutputPathError, match="not a folder") as caught:
        R.write_audio(not_a_folder / "out.wav", clip, SR)
    assert "\n" not in str(caught.value)


# ---- the CLI verb --------------------------------------------------------------------------


def test_cli_render_writes_the_file(tmp_path, capsys):
    from app.cli import main

    midi = tmp_path / "piece.mid"
    piano_piece(2.0).write(str(midi))
    out = tmp_path / "sub" / "piece.flac"
    assert main(["render", str(midi), "-o", str(out), "--soundfont", str(TIMGM), "--sample-rate", "22050"]) == 0
    line = capsys.readouterr().out.strip()
    assert str(out) in line and "real time" in line and "\n" not in line
    assert soundfile.info(str(out)).samplerate == 22050


def test_cli_bad_midi_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")  # a truncated header
    result = subprocess.run(
        [str(REPO / ".venv/bin/perceiver-music"), "render", str(bad), "-o", str(tmp_path / "out.wav")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: bad.mid") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "out.wav").exists()


def test_a_note_sequence_renders_like_its_midi():
    """Files are read without note_seq (for speed); both ways must give the same music."""
    from perceiver_music.midi_input import load_note_sequence

    pm = piano_piece(2.0)
    pm.instruments[0].pitch_bends.append(pretty_midi.PitchBend(1024, 1.0))
    from_midi = R._load_music(pm)
    from_sequence = load_note_sequence(pm)
    channels = R._assign_channels(from_midi, 256)
    assert R._events(from_midi, channels, SR) == R._events(from_sequence, channels, SR)
    assert same_music(R.render(from_sequence, soundfont=TIMGM), R.render(pm, soundfont=TIMGM), 2.0)


def test_preload_is_used_by_the_next_render():
    R.clear_synth_cache()
    loads = R.SYNTH_POOL.loads
    R.preload(TIMGM, 32000, background=True)
    R.render(piano_piece(1.0), soundfont=TIMGM, sample_rate=32000)  # waits for the preload
    assert R.SYNTH_POOL.loads == loads + 1


def test_a_failed_background_preload_is_reported_by_the_render(tmp_path):
    damaged = fake_soundfont(tmp_path / "damaged.sf2")
    R.preload(damaged, background=True)  # the header looks right; loading fails in the thread
    with pytest.raises(SoundfontError, match="cannot load"):
        R.render(piano_piece(1.0), soundfont=damaged)
