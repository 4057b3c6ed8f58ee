"""Issue 12: the continuation as long as asked, the seam heard, the primer's instruments kept,
and the live view (incremental decoding, the streamed render) equal to the finished result."""

from __future__ import annotations

import io
import random

import numpy as np
import pretty_midi
import pytest

from midi_fixtures import band_with_drums, midi_bytes, piano_performance
from perceiver_music import tokenizer as tk
from perceiver_music.engine import (FIRST_NOTE_WITHIN_SECONDS, ContinueRequest, _continuation_notes, continue_midi,
                                    render_full)
from perceiver_music.live import IncrementalDecoder, LiveAudio, LiveRun
from perceiver_music.render import performance_of_notes, render


@pytest.fixture(scope="module")
def ten_minutes():
    return midi_bytes(piano_performance(seed=12, seconds=600))


def request(checkpoint, **kw) -> ContinueRequest:
    base = dict(length_seconds=5.0, seed=3, checkpoint=str(checkpoint), top_p=1.0)
    base.update(kw)
    return ContinueRequest(**base)


def seconds(audio, rate=44100) -> float:
    return len(audio) / rate


def test_a_model_that_always_prefers_eos_still_gives_the_asked_length(eos_checkpoint):
    primer = midi_bytes(piano_performance(seed=4, seconds=10))
    timed = continue_midi(request(eos_checkpoint, primer=primer, variations=2, render_audio=False))
    for v in timed.variations:
        assert v.stats["seconds_of_music"] == 5.0 and v.stats["new_notes"] > 0
        assert tk.EOS not in v.new_ids and not v.stats["ended_by_model"] and v.notice is None
        assert v.provenance["settings"]["allow_end"] is False
    counted = continue_midi(request(eos_checkpoint, primer=primer, length_seconds=None, length_tokens=40,
                                    render_audio=False))
    assert len(counted.variations[0].new_ids) == 40


def test_allow_end_lets_it_stop_at_once_and_says_so(eos_checkpoint):
    primer = midi_bytes(piano_performance(seed=4, seconds=10))
    result = continue_midi(request(eos_checkpoint, primer=primer, allow_end=True))
    v = result.variations[0]
    assert v.new_ids == [] and v.stats["ended_by_model"] is True
    assert v.notice == "The model ended the piece after 0.0 s."
    assert v.provenance["settings"]["allow_end"] is True
    assert seconds(v.audio) < 8 + 4.1  # the lead-in and its tail: nothing was added


def test_a_long_silence_after_the_primer_is_cut_short(tmp_path):
    """A model whose favourite id is the longest TIME_SHIFT (1 s): left alone it waits for many
    seconds; the engine makes the continuation sound within 2 s of the seam."""
    import torch

    from model_fixtures import pin_logits
    from perceiver_music.checkpoint import save_checkpoint
    from perceiver_music.generate import generate
    from perceiver_music.model import PerceiverAR, PerceiverARConfig

    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(max_context=512, num_latents=64, d_model=64, n_heads=2, cross_heads=2,
                                          n_layers=2))
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.5)
    longest = tk.TIME_SHIFT_BASE + tk.MAX_SHIFT_STEPS - 1
    pin_logits(model, low=tk.EOS, high=longest)
    save_checkpoint(model, tmp_path / "waits", metadata={"step": 0})
    primer = midi_bytes(piano_performance(seed=4, seconds=10))
    left_alone = generate(model, tk.encode(primer)[-400:], max_seconds=10, seed=1)[0]
    assert all(t == longest for t in left_alone)  # ten seconds of silence
    result = continue_midi(request(tmp_path / "waits", primer=primer, length_seconds=10.0, render_audio=False))
    notes = tk.decode(result.variations[0].new_ids).notes
    assert notes and min(n.start_time for n in notes) <= FIRST_NOTE_WITHIN_SECONDS <= 2.0


def test_ten_minute_primer_gives_the_lead_in_and_the_continuation(random_checkpoint, ten_minutes, tmp_path):
    result = continue_midi(request(random_checkpoint, primer=ten_minutes, output_dir=tmp_path))
    v = result.variations[0]
    assert result.seam_seconds > 590
    assert v.lead_in_seconds == 8.0 and v.audio_start_seconds == pytest.approx(result.seam_seconds - 8.0)
    assert 8 + 5 - 0.01 <= seconds(v.audio) <= 8 + 5 + 4.1  # and the release tail
    import soundfile

    info = soundfile.info(str(v.files["audio"]))
    assert 8 + 5 - 0.01 <= info.frames / info.samplerate <= 8 + 5 + 4.1
    assert v.pianoroll_png.startswith(b"\x89PNG")
    full = pretty_midi.PrettyMIDI(io.BytesIO(v.full_midi))
    assert full.get_end_time() >= result.seam_seconds + 4.0  # the full MIDI is the whole piece, unchanged
    whole = render_full(v)
    assert seconds(whole) >= result.seam_seconds + 5.0
    # None: the whole piece in the audio, as batch renders by default
    everything = continue_midi(request(random_checkpoint, primer=ten_minutes, lead_in_seconds=None))
    assert seconds(everything.variations[0].audio) >= result.seam_seconds + 5.0


def test_a_band_primer_keeps_its_instruments_and_drums(random_checkpoint):
    band = midi_bytes(band_with_drums(seed=2, seconds=12))
    result = continue_midi(request(random_checkpoint, primer=band, lead_in_seconds=6.0))
    assert result.notice and "drums" in result.notice and "piano" in result.notice
    v = result.variations[0]
    for data in (v.full_midi, v.seam_midi):
        pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
        tracks = {(i.program, i.is_drum) for i in pm.instruments if i.notes}
        assert {(33, False), (48, False), (80, False)} <= tracks and any(d for _, d in tracks)
    pm = pretty_midi.PrettyMIDI(io.BytesIO(v.full_midi))
    drums = next(i for i in pm.instruments if i.is_drum)
    assert len(drums.notes) >= 40  # the band's drums, as written
    continuation = [i for i in pm.instruments if i.name == "continuation (piano)"]
    assert len(continuation) == 1 and continuation[0].program == 0 and not continuation[0].is_drum
    assert min(n.start for n in continuation[0].notes) >= result.seam_seconds - 1e-3
    # a piano primer says nothing
    piano = continue_midi(request(random_checkpoint, primer=midi_bytes(piano_performance(seconds=6)),
                                  render_audio=False))
    assert piano.notice is None


def test_incremental_decoding_gives_decode_s_notes():
    rng = random.Random(0)
    ids = [rng.randrange(3, tk.VOCAB_SIZE) for _ in range(3000)]
    decoder = IncrementalDecoder(4.0)
    for i in range(0, len(ids), 7):
        decoder.feed(ids[i:i + 7])
    decoder.finish()
    want = sorted((n.pitch, round(n.start_time, 6), round(n.end_time, 6), n.velocity)
                  for n in tk.decode(ids, max_note_seconds=4.0).notes)
    got = sorted((n.pitch, round(n.start_time, 6), round(n.end_time, 6), n.velocity) for n in decoder.notes)
    assert len(want) > 500 and got == want


def test_the_streamed_render_is_the_final_render():
    rng = random.Random(1)
    ids = [rng.randrange(3, tk.VOCAB_SIZE) for _ in range(800)]
    lead = [n for i in piano_performance(seed=3, seconds=8.0).instruments for n in i.notes]
    from perceiver_music.live import LiveNote

    lead = [LiveNote(n.pitch, n.velocity, n.start, n.end) for n in lead]
    final = render(performance_of_notes(lead + _continuation_notes(ids, 8.0, (1, 0))))
    live = LiveAudio(lead, 8.0, (1, 0), 4.0)
    chunks = [live.start()]
    assert seconds(chunks[0]) == pytest.approx(8.0, abs=1e-4)  # the lead-in, at once
    for i in range(0, len(ids), 13):
        chunks.append(live.advance(ids[:i + 13]))
    streamed = live.finish(ids)  # the whole audio, from the lead-in on
    heard = np.concatenate(chunks)
    assert 0 < len(heard) < len(streamed) and np.array_equal(heard, streamed[: len(heard)])
    assert len(live.advance(ids)) == len(streamed) - len(heard)  # then the tail, for the stream
    assert len(streamed) == len(final)
    # the same synth calls at the same samples; a pooled synth reused after a reset is within
    # -60 dB of a new one (render._reset_synth), the only difference left
    difference = np.sqrt(np.mean((streamed - final) ** 2)) / np.sqrt(np.mean(final**2))
    assert difference < 1e-3, difference


def test_a_live_run_shows_the_notes_as_they_come(random_checkpoint):
    import threading

    live = LiveRun()
    primer = midi_bytes(piano_performance(seed=4, seconds=20))
    frames = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            if live.ready.is_set():
                frames.append(len(live.frame(0)[0]))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = continue_midi(request(random_checkpoint, primer=primer, length_seconds=60, render_audio=False),
                           live=live)
    done.set()
    watcher.join()
    notes, written = live.frame(0)
    assert written == pytest.approx(result.variations[0].stats["seconds_of_music"], abs=1.0)
    assert len(set(frames)) >= 2 and frames == sorted(frames)
    assert "<svg" in live.svg(0) and live.lead_in_seconds == 8.0


def test_the_full_midi_is_byte_for_byte_what_pretty_midi_writes():
    """The primer's tracks are written by engine._track_chunk and joined as bytes: the file
    must be the one pretty_midi writes for the same instruments at once."""
    from perceiver_music.engine import (_continuation_notes, _midi_bytes, _PrimerParts, _pretty_instruments,
                                        prepare_primer)

    for data in (midi_bytes(band_with_drums(seed=1, seconds=20)), midi_bytes(piano_performance(seed=1, seconds=120))):
        primer = prepare_primer(ContinueRequest(primer=data), 4096, 1024)
        parts = _PrimerParts(primer)
        rng = random.Random(0)
        continuation = _pretty_instruments(_continuation_notes([rng.randrange(3, 391) for _ in range(300)],
                                                               primer.seconds, parts.track))
        assert parts.full_midi(continuation, "text") == _midi_bytes(parts.instruments() + continuation, "text")


def test_the_streamed_audio_becomes_variation_1_s_audio(random_checkpoint):
    """A front end streams variation 1 while it is written; the engine finishes that stream
    into the variation's audio rather than rendering it again, and it is the same audio."""
    import threading

    primer = midi_bytes(piano_performance(seed=4, seconds=20))
    live = LiveRun()
    streamed, done = [], threading.Event()

    def stream():
        audio = None
        while not done.wait(0.02):
            if live.ready.is_set():
                audio = audio or live.live_audio()
                streamed.append(audio.start() if not streamed else audio.advance(live.ids(0)))

    def streamed_when_finished(audio):
        # how much the stream had taken by itself when the engine began to finish it (a stream
        # that asks again after that is handed the tail: counting what it holds at the end races)
        real_finish = audio.renderer.finish

        def finish():
            taken_frames.append(sum(len(c) for c in audio.chunks[: audio.taken]))
            return real_finish()

        audio.renderer.finish = finish

    taken_frames: list[int] = []
    real_live_audio = live.live_audio

    def live_audio(*args, **kwargs):
        audio = real_live_audio(*args, **kwargs)
        streamed_when_finished(audio)
        return audio

    live.live_audio = live_audio
    watcher = threading.Thread(target=stream)
    watcher.start()
    result = continue_midi(request(random_checkpoint, primer=primer, length_seconds=20), live=live)
    done.set()
    watcher.join()
    v = result.variations[0]
    assert live.audio is not None and live.audio.finished
    assert len(taken_frames) == 1 and taken_frames[0] < len(v.audio)  # the engine finished the stream
    again = render(performance_of_notes(live.lead_in_notes + _continuation_notes(v.new_ids, 8.0, (1, 0))))
    assert len(again) == len(v.audio)
    difference = np.sqrt(np.mean((again - v.audio) ** 2)) / np.sqrt(np.mean(again**2))
    assert difference < 1e-3, difference
    heard = np.concatenate(streamed)
    assert np.array_equal(heard, v.audio[: len(heard)])  # what was heard is the start of the final audio


def test_a_primer_is_read_once_for_the_preview_and_every_generate(monkeypatch, ten_minutes):
    from perceiver_music import midi_input
    from perceiver_music.engine import prepare_primer

    parsed = []
    real = midi_input.load_note_sequence
    monkeypatch.setattr(midi_input, "load_note_sequence", lambda *a, **k: parsed.append(1) or real(*a, **k))
    first = prepare_primer(ContinueRequest(primer=ten_minutes, primer_name="long.mid", length_seconds=5), 512, 64)
    again = prepare_primer(ContinueRequest(primer=ten_minutes, primer_name="long.mid", length_seconds=30), 512, 64)
    assert len(parsed) == 1 and again.written is first.written
    assert again.budget["new_tokens_estimate"] == 1200  # the budget follows the request
    other = prepare_primer(ContinueRequest(primer=ten_minutes, primer_name="long.mid", window_seconds=20), 512, 64)
    assert len(parsed) == 2 and other.seconds <= 20.01
