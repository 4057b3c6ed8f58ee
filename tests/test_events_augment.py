"""The fast ids ⇄ notes codec and the training augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from midi_fixtures import CORPUS_PIECES, corpus_midi_bytes, piano_performance
from perceiver_music import augment as au
from perceiver_music import events as ev
from perceiver_music import tokenizer as tk


@pytest.fixture(scope="module")
def score_ids():
    return np.array(tk.encode(corpus_midi_bytes("schumann_clara/opus17/movement3")))


@pytest.fixture(scope="module")
def performance_ids():
    return np.array(tk.encode(piano_performance(seed=11, seconds=90)))


@pytest.mark.parametrize("piece", CORPUS_PIECES)
def test_codec_is_exact_on_whole_pieces(piece):
    ids = tk.encode(corpus_midi_bytes(piece))
    assert ev.notes_to_ids(ev.ids_to_notes(ids)) == ids


def test_codec_is_exact_on_performances(performance_ids):
    ids = performance_ids.tolist()
    assert ev.notes_to_ids(ev.ids_to_notes(ids)) == ids


def test_codec_keeps_what_a_crop_cut_off(performance_ids):
    rng = np.random.default_rng(0)
    exact = 0
    for _ in range(100):
        a = int(rng.integers(0, len(performance_ids) - 600))
        crop = performance_ids[a : a + int(rng.integers(50, 600))].tolist()
        back = ev.notes_to_ids(ev.ids_to_notes(crop))
        exact += back == crop
        before, after = ev.ids_to_notes(crop), ev.ids_to_notes(back)
        # the same notes; at worst NOTE_OFFs at the cut edges are paired differently
        def onsets(notes):
            return sorted(zip(np.nan_to_num(notes.start, nan=-1.0).tolist(), notes.pitch.tolist()))

        assert onsets(before) == onsets(after)
    assert exact >= 80


def test_stretches_split_and_join_at_separators():
    ids = np.array([tk.SOS, 10, 20, tk.EOS, tk.SOS, 30, tk.EOS])
    pieces = ev.split_stretches(ids)
    assert [(m, list(s)) for m, s in pieces] == [(None, []), (tk.SOS, [10, 20]), (tk.EOS, []), (tk.SOS, [30]), (tk.EOS, [])]
    assert ev.join_stretches(pieces) == ids.tolist()


def test_transpose_and_stretch(score_ids):
    notes = ev.ids_to_notes(score_ids)
    up = au.transpose(notes, 5)
    assert np.array_equal(up.pitch, notes.pitch[(notes.pitch + 5) <= 127] + 5)
    out_of_range = au.transpose(notes, 127 - int(notes.pitch.min()))
    assert len(out_of_range) == np.count_nonzero(notes.pitch == notes.pitch.min())
    slower = ev.notes_to_ids(au.stretch(notes, 1.05))
    assert tk.seconds_of(slower) == pytest.approx(tk.seconds_of(score_ids) * 1.05, abs=0.02)


def test_score_or_performance(score_ids, performance_ids):
    assert au.is_score_like(ev.ids_to_notes(score_ids))
    assert not au.is_score_like(ev.ids_to_notes(performance_ids))


def test_humanize_gives_a_score_dynamics_and_timing(score_ids):
    rng = np.random.default_rng(3)
    notes = ev.ids_to_notes(score_ids[:3000])
    human = au.humanize(notes, rng, pedal_probability=1.0)
    assert len(human) == len(notes)
    assert len(np.unique(human.velocity_bin)) >= 10  # a score has a handful
    shift = np.abs(human.start - notes.start)
    assert 0.001 < np.nanmedian(shift) < 0.5  # moved, by rubato-sized amounts
    # pedal held some notes longer
    longer = (human.end - human.start) > (notes.end - notes.start) + 0.2
    assert np.count_nonzero(longer) > 0.05 * len(notes)
    ids = ev.notes_to_ids(human)
    assert all(tk.NUM_SPECIAL <= t < tk.VOCAB_SIZE for t in ids)
    assert len(tk.decode(ids).notes) == len(notes)


def test_augment_leaves_performances_dynamics_alone(performance_ids):
    rng = np.random.default_rng(5)
    config = au.AugmentConfig(transpose=0, stretch=0.0, humanize=1.0)
    crop = performance_ids[:2000]
    assert au.augment_ids(crop, rng, config) == crop.tolist()


def test_augment_ids_across_separators_is_valid(score_ids):
    rng = np.random.default_rng(7)
    crop = np.concatenate([score_ids[-700:], [tk.EOS, tk.SOS], score_ids[:700]])
    for _ in range(10):
        out = au.augment_ids(crop, rng, au.AugmentConfig(humanize=1.0, pedal=1.0))
        assert out.count(tk.EOS) == 1 and out.count(tk.SOS) == 1
        assert all(0 <= t < tk.VOCAB_SIZE for t in out)
