"""The engine: requests, primer windows, variations, provenance, files, cancel, errors."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from dataclasses import replace

import mido
import numpy as np
import pytest
import soundfile

from midi_fixtures import midi_bytes, piano_performance
from perceiver_music import tokenizer as tk
from perceiver_music.checkpoint import ModelCache
from perceiver_music.engine import ContinueRequest, check_request, continue_midi, prepare_primer
from perceiver_music.errors import BadMidiError, BadRequestError, CheckpointError


@pytest.fixture(scope="module")
def primer():
    return midi_bytes(piano_performance(seed=21, seconds=30))


def request(checkpoint, **kw) -> ContinueRequest:
    base = dict(length_seconds=3.0, seed=7, checkpoint=str(checkpoint), temperature=1.0, top_p=1.0)
    base.update(kw)
    return ContinueRequest(**base)


def midi_text(data: bytes) -> list[str]:
    return [m.text for t in mido.MidiFile(file=io.BytesIO(data)).tracks for m in t if m.type == "text"]


def test_continue_gives_every_output_with_provenance(random_checkpoint, primer, tmp_path):
    result = continue_midi(request(random_checkpoint, primer=primer, primer_name="mine.mid", window_seconds=10,
                                   variations=2, key_hold=1.5, output_dir=tmp_path))
    assert [v.index for v in result.variations] == [1, 2]
    assert result.output_dir.parent == tmp_path
    for v in result.variations:
        assert v.new_ids and all(tk.NUM_SPECIAL <= t < tk.VOCAB_SIZE for t in v.new_ids)
        full, continuation = tk.decode(tk.encode(v.full_midi)), tk.decode(tk.encode(v.continuation_midi))
        primer_notes = len(result.primer_ids and tk.decode(result.primer_ids).notes)
        assert len(full.notes) == primer_notes + len(continuation.notes)
        assert v.audio.dtype == np.float32 and v.audio.shape[1] == 2 and np.abs(v.audio).max() > 0.01
        assert len(v.audio) / v.sample_rate >= result.seam_seconds
        assert v.pianoroll_png.startswith(b"\x89PNG")
        p = v.provenance
        assert p["seed"] == 7 and p["variation"] == v.index
        assert p["checkpoint"]["sha256"] and p["primer"]["name"] == "mine.mid"
        assert p["primer"]["last_seconds"] == 10
        assert p["settings"]["key_hold"] == 1.5
        assert p["primer"]["sha256"] == hashlib.sha256(primer).hexdigest()
        assert json.loads(midi_text(v.full_midi)[0]) == p  # the MIDI carries it too
        assert json.loads(v.files["provenance"].read_text()) == p
        data, rate = soundfile.read(v.files["audio"])
        assert rate == 44100 and data.shape[1] == 2
        assert v.files["full_midi"].read_bytes() == v.full_midi
    assert result.variations[0].new_ids != result.variations[1].new_ids  # sampled, not copies
    assert not list(tmp_path.rglob("*.part*"))


def test_seeded_requests_are_reproducible_and_greedy_variations_agree(random_checkpoint, primer):
    a = continue_midi(request(random_checkpoint, primer=primer, render_audio=False))
    b = continue_midi(request(random_checkpoint, primer=primer, render_audio=False))
    assert a.variations[0].new_ids == b.variations[0].new_ids
    greedy = continue_midi(request(random_checkpoint, primer=primer, temperature=0, variations=3, render_audio=False))
    assert greedy.variations[0].new_ids == greedy.variations[1].new_ids == greedy.variations[2].new_ids


def test_length_in_seconds_and_tokens(random_checkpoint, primer):
    timed = continue_midi(request(random_checkpoint, primer=primer, length_seconds=2.0, render_audio=False))
    assert tk.seconds_of(timed.variations[0].new_ids) <= 2.0 + 1e-9
    counted = continue_midi(request(random_checkpoint, primer=primer, length_seconds=None, length_tokens=25,
                                    render_audio=False))
    assert len(counted.variations[0].new_ids) <= 25


def test_primer_windows(random_checkpoint, primer):
    whole = prepare_primer(request(random_checkpoint, primer=primer))
    assert whole.ids[0] == tk.SOS  # from the beginning of the piece, as training works start
    tail = prepare_primer(request(random_checkpoint, primer=primer, window_seconds=5))
    assert tail.ids[0] != tk.SOS and tail.seconds <= 5.0 + 0.01
    span = prepare_primer(request(random_checkpoint, primer=primer, window_span=(4.0, 9.0)), 512, 64)
    assert span.seconds <= 5.0 + 0.01
    assert min(n.start_time for n in span.sequence.notes) == 0.0  # leading silence dropped
    assert span.budget["context"] == 512 and span.budget["primer_tokens"] == len(span.ids)
    with pytest.raises(BadMidiError, match="no notes between"):
        prepare_primer(request(random_checkpoint, primer=primer, window_span=(500.0, 600.0)))


def test_no_primer_starts_from_nothing(random_checkpoint):
    result = continue_midi(request(random_checkpoint, primer=None, render_audio=False))
    assert result.primer_ids == [] and result.seam_seconds == 0.0
    assert result.variations[0].new_ids


def test_continue_this_output(random_checkpoint, primer):
    first = continue_midi(request(random_checkpoint, primer=primer, window_seconds=6, render_audio=False))
    again = continue_midi(request(random_checkpoint, primer=first.variations[0].full_midi, primer_name="take-1.mid"))
    assert again.seam_seconds == pytest.approx(first.seam_seconds + tk.seconds_of(first.variations[0].new_ids), abs=0.05)


def test_cancel_keeps_what_exists(random_checkpoint, primer):
    cancel = threading.Event()
    seen = []

    def progress(event):
        seen.append(event)
        if event.stage == "generating" and event.done > 0:
            cancel.set()

    result = continue_midi(request(random_checkpoint, primer=primer, length_seconds=120, render_audio=False),
                           progress=progress, cancel=cancel)
    assert result.cancelled
    assert 0 < tk.seconds_of(result.variations[0].new_ids) < 120
    assert result.variations[0].stats["cancelled"] is True
    assert seen[0].stage == "loading" and seen[-1].stage == "done"


@pytest.mark.parametrize("change, words", [
    (dict(variations=5), "variations must be 1 to 4"),
    (dict(length_seconds=0), "length must be"),
    (dict(length_seconds=None, length_tokens=None), "give a length"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top-p"),
    (dict(min_p=1.0), "min-p"),
    (dict(key_hold=-0.5), "key hold"),
    (dict(key_hold=10.0), "key hold"),
    (dict(sample_rate=12345), "sample rate"),
    (dict(window_span=(5.0, 2.0)), "primer span"),
    (dict(audio_format="mp4"), "audio format"),
])
def test_bad_requests_are_one_line(random_checkpoint, change, words):
    with pytest.raises(BadRequestError, match=words):
        check_request(request(random_checkpoint, **change))


def test_bad_primer_and_checkpoint(random_checkpoint, tmp_path):
    with pytest.raises(BadMidiError, match="not a MIDI file"):
        continue_midi(request(random_checkpoint, primer=b"hello, not midi"))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "model.sha256"):
        (damaged / name).write_bytes((random_checkpoint / name).read_bytes())
    weights = bytearray((random_checkpoint / "model.safetensors").read_bytes())
    weights[-10] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="damaged"):
        continue_midi(request(damaged, primer=None), models=ModelCache())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        continue_midi(request(tmp_path / "nowhere"), models=ModelCache())


def test_unwritable_output_folder(random_checkpoint, tmp_path):
    from perceiver_music.errors import OutputPathError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError):
        continue_midi(request(random_checkpoint, output_dir=blocker / "sub"))


def test_a_batch_of_requests_gives_each_its_own_result(random_checkpoint, primer, tmp_path):
    from perceiver_music.engine import continue_batch

    def req(data, name, seed, window):
        return request(random_checkpoint, primer=data, primer_name=name, window_seconds=window, seed=seed,
                       render_audio=False, output_dir=tmp_path / name)

    short = req(primer, "a", 1, 5)
    b = req(midi_bytes(piano_performance(seed=22, seconds=30)), "b", 2, 15)
    c = req(midi_bytes(piano_performance(seed=23, seconds=30)), "c", 3, 15)
    first, second = continue_batch([short, b])
    assert (first.seed, second.seed) == (1, 2) and first.output_dir.parent == tmp_path / "a"
    length = len(first.primer_ids)
    assert len(second.primer_ids) > length  # the longer primer was cut to the batch's length
    for result in (first, second):
        assert result.variations[0].stats["prompt_tokens"] == length
        assert result.variations[0].stats["batch_size"] == 2
    # with another batch-mate (no shorter than it), a request gets the same music
    again, _ = continue_batch([short, c])
    assert again.variations[0].new_ids == first.variations[0].new_ids
    with pytest.raises(BadRequestError, match="must share"):
        continue_batch([short, replace(b, temperature=0.5)])
    with pytest.raises(BadRequestError, match="cannot mix"):
        continue_batch([short, replace(b, primer=None)])
