"""Piano-roll PNGs: size, the two colours on either side of the seam, velocity, ids, threads."""

from __future__ import annotations

import io
import sys
import threading

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from perceiver_music.midi_input import import_note_seq
from perceiver_music.pianoroll import CONTINUATION_COLOUR, PRIMER_COLOUR, _colours, _pitch_range, pianoroll_png

import_note_seq()
from note_seq import music_pb2  # noqa: E402


def sequence(notes: list[tuple[int, float, float, int]]) -> music_pb2.NoteSequence:
    ns = music_pb2.NoteSequence()
    for pitch, start, end, velocity in notes:
        ns.notes.add(pitch=pitch, start_time=start, end_time=end, velocity=velocity)
    ns.total_time = max((n[2] for n in notes), default=0.0)
    return ns


def primer_then_continuation(velocity: int = 127) -> music_pb2.NoteSequence:
    """Four seconds of primer, four of continuation, a seam at 4.0."""
    notes = []
    for i in range(16):
        t = i * 0.5
        notes.append((60 + i % 12, t, t + 0.45, velocity))
        notes.append((48 + i % 5, t, t + 0.45, velocity))
    return sequence(notes)


def image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def near(pixels: np.ndarray, colour: str, tolerance: int = 12) -> np.ndarray:
    target = np.array([round(255 * c) for c in to_rgb(colour)])
    return np.abs(pixels - target).max(axis=-1) <= tolerance


def test_png_has_the_asked_size():
    png = pianoroll_png(primer_then_continuation(), seam_seconds=4.0, title="a title", width_px=800, height_px=300)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (800, 300)


def test_primer_and_continuation_have_their_own_colours():
    pixels = image(pianoroll_png(primer_then_continuation(), seam_seconds=4.0))
    columns_primer = near(pixels, PRIMER_COLOUR).any(axis=0).nonzero()[0]
    columns_continuation = near(pixels, CONTINUATION_COLOUR).any(axis=0).nonzero()[0]
    assert len(columns_primer) > 100 and len(columns_continuation) > 100
    # Every primer-coloured column lies left of every continuation-coloured one: the seam between.
    assert columns_primer.max() < columns_continuation.min()


def test_without_a_seam_everything_is_primer():
    pixels = image(pianoroll_png(primer_then_continuation()))
    assert near(pixels, PRIMER_COLOUR).sum() > 1000
    assert near(pixels, CONTINUATION_COLOUR).sum() == 0


def test_a_note_held_across_the_seam_keeps_the_primer_colour():
    colours = _colours(np.array([3.5, 4.0, 4.5]), np.array([127.0, 127.0, 127.0]), seam_seconds=4.0)
    assert np.allclose(colours[0, :3], to_rgb(PRIMER_COLOUR))
    assert np.allclose(colours[1, :3], to_rgb(CONTINUATION_COLOUR))


def test_velocity_is_opacity():
    alpha = _colours(np.zeros(3), np.array([1.0, 64.0, 127.0]), None)[:, 3]
    assert alpha[0] < alpha[1] < alpha[2] == 1.0 and alpha[0] > 0.1
    loud = image(pianoroll_png(primer_then_continuation(127)))
    soft = image(pianoroll_png(primer_then_continuation(20)))
    assert (255 - soft).sum() < 0.8 * (255 - loud).sum()  # soft notes are paler


def test_an_empty_sequence_is_a_blank_roll():
    png = pianoroll_png(music_pb2.NoteSequence(), seam_seconds=0.0)
    assert Image.open(io.BytesIO(png)).size == (1200, 360)
    pixels = image(png)
    assert near(pixels, PRIMER_COLOUR).sum() + near(pixels, CONTINUATION_COLOUR).sum() < 300  # labels only


def test_token_ids_draw_like_their_notes():
    from perceiver_music.tokenizer import decode, encode

    ns = primer_then_continuation()
    ids = encode(ns)
    assert pianoroll_png(ids, seam_seconds=4.0) == pianoroll_png(decode(ids), seam_seconds=4.0)


def test_pitch_range_fits_the_notes():
    low, high = _pitch_range(np.array([60, 61]))
    assert low <= 60 and high >= 61 and high - low >= 24
    low, high = _pitch_range(np.array([21, 108]))
    assert low <= 21 and high >= 108
    assert _pitch_range(np.array([0, 127])) == (0, 127)


def test_threads_draw_at_once_without_pyplot():
    had_pyplot = "matplotlib.pyplot" in sys.modules
    ns = primer_then_continuation()
    expected = pianoroll_png(ns, seam_seconds=4.0, title="t")
    results = [None] * 4

    def draw(i: int) -> None:
        results[i] = pianoroll_png(ns, seam_seconds=4.0, title="t")

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result == expected for result in results)
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules


def test_absurd_sizes_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        pianoroll_png(primer_then_continuation(), width_px=0)
