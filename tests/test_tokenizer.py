"""The tokenizer: vocabulary, round trip on real music, what is dropped, primer windows."""

from __future__ import annotations

import bisect

import pretty_midi
import pytest

from midi_fixtures import CORPUS_PIECES, band_with_drums, corpus_midi_bytes, midi_bytes, piano_performance
from perceiver_music import tokenizer as tk
from perceiver_music.midi_input import import_note_seq, load_note_sequence

TOLERANCE = 0.0101  # one 10 ms step, plus float slack


def velocity_bin(velocity: int) -> int:
    from note_seq.performance_lib import velocity_to_bin

    return velocity_to_bin(velocity, tk.NUM_VELOCITY_BINS)


def matched_fraction(reference, decoded) -> float:
    """Share of reference notes that the decoded music has: same pitch, onset and offset
    within one step, same velocity bin. Each decoded note matches at most once."""
    by_pitch: dict[int, list] = {}
    for note in decoded.notes:
        by_pitch.setdefault(note.pitch, []).append(note)
    for notes in by_pitch.values():
        notes.sort(key=lambda n: n.start_time)
    used = set()
    matched = 0
    for ref in reference.notes:
        candidates = by_pitch.get(ref.pitch, [])
        starts = [n.start_time for n in candidates]
        i = bisect.bisect_left(starts, ref.start_time - TOLERANCE)
        while i < len(candidates) and candidates[i].start_time <= ref.start_time + TOLERANCE:
            cand = candidates[i]
            if (
                id(cand) not in used
                and abs(cand.end_time - ref.end_time) <= TOLERANCE
                and velocity_bin(cand.velocity) == velocity_bin(ref.velocity)
            ):
                used.add(id(cand))
                matched += 1
                break
            i += 1
    return matched / max(1, len(reference.notes))


def reference_of(midi):
    """What the round trip must keep: the input with pedal folded, drums out, merged to piano."""
    piano, _ = tk.to_piano_sequence(load_note_sequence(midi))
    return piano


def test_vocabulary_matches_note_seq_one_hot_encoding():
    import_note_seq()
    from note_seq.performance_encoder_decoder import PerformanceOneHotEncoding

    encoding = PerformanceOneHotEncoding(num_velocity_bins=32, max_shift_steps=100)
    assert encoding.num_classes == tk.NUM_EVENTS == 388
    assert tk.VOCAB_SIZE == 391
    for index in range(encoding.num_classes):
        event = encoding.decode_event(index)
        token = tk._event_to_id(event)
        assert token == tk.NUM_SPECIAL + index
        assert tk._id_to_event(token) == event


def test_describe_and_seconds_of():
    assert tk.describe_id(tk.NOTE_ON_BASE + 60) == "NOTE_ON(60)"
    assert tk.describe_id(tk.TIME_SHIFT_BASE + 99) == "TIME_SHIFT(100)"
    assert tk.describe_id(tk.VELOCITY_BASE) == "VELOCITY(1)"
    assert tk.seconds_of([tk.TIME_SHIFT_BASE + 99, tk.NOTE_ON_BASE + 1, tk.TIME_SHIFT_BASE + 49]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        tk.describe_id(tk.VOCAB_SIZE)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_round_trip_keeps_every_note_of_piano_performances(seed):
    pm = piano_performance(seed=seed, seconds=40)
    for source in (pm, midi_bytes(pm)):  # in memory and through a MIDI file
        reference = reference_of(source)
        ids = tk.encode(source)
        assert all(tk.NUM_SPECIAL <= t < tk.VOCAB_SIZE for t in ids)
        decoded = tk.decode(ids)
        assert len(decoded.notes) == len(reference.notes)
        assert matched_fraction(reference, decoded) == 1.0


@pytest.mark.parametrize("piece", CORPUS_PIECES)
def test_round_trip_on_music21_corpus_pieces(piece):
    data = corpus_midi_bytes(piece)
    reference = reference_of(data)
    decoded = tk.decode(tk.encode(data))
    assert matched_fraction(reference, decoded) >= 0.995
    assert decoded.total_time == pytest.approx(reference.total_time, abs=TOLERANCE)


def test_sustain_pedal_is_folded_into_durations():
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(80, 60, 0.0, 0.5))
    piano.control_changes += [pretty_midi.ControlChange(64, 127, 0.1), pretty_midi.ControlChange(64, 0, 2.0)]
    pm.instruments.append(piano)
    ids, report = tk.encode_with_report(pm)
    (note,) = tk.decode(ids).notes
    assert report.had_sustain_pedal
    assert note.end_time == pytest.approx(2.0, abs=TOLERANCE)


def test_long_silences_and_long_notes_survive():
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(64, 60, 0.0, 7.3))  # longer than the largest TIME_SHIFT
    piano.notes.append(pretty_midi.Note(64, 62, 12.345, 12.5))  # after a 5 s silence
    pm.instruments.append(piano)
    decoded = tk.decode(tk.encode(pm))
    assert [(n.pitch, round(n.start_time, 2), round(n.end_time, 2)) for n in decoded.notes] == [
        (60, 0.0, 7.3),
        (62, 12.35, 12.5),
    ] or [(n.pitch, round(n.start_time, 2), round(n.end_time, 2)) for n in decoded.notes] == [
        (60, 0.0, 7.3),
        (62, 12.34, 12.5),
    ]


def test_multi_instrument_merges_to_piano_and_drums_are_reported():
    pm = band_with_drums(seed=4)
    drum_notes = sum(len(i.notes) for i in pm.instruments if i.is_drum)
    pitched = sum(len(i.notes) for i in pm.instruments if not i.is_drum)
    ids, report = tk.encode_with_report(pm)
    assert report.drum_notes_dropped == drum_notes
    assert report.notes_kept == pitched
    assert report.notes_in == pitched + drum_notes
    assert report.programs == [33, 48, 80]
    assert report.instruments == 3
    assert report.tokens == len(ids)
    decoded = tk.decode(ids)
    assert len(decoded.notes) == pitched
    assert {n.program for n in decoded.notes} == {0}
    assert not any(n.is_drum for n in decoded.notes)


def test_decode_tolerates_what_a_model_may_emit():
    # a NOTE_OFF with no NOTE_ON, a note never turned off, specials in the middle, EOS ends it
    ids = [tk.SOS, tk.NOTE_OFF_BASE + 50, tk.VELOCITY_BASE + 20, tk.NOTE_ON_BASE + 60, tk.PAD,
           tk.TIME_SHIFT_BASE + 99, tk.TIME_SHIFT_BASE + 99, tk.EOS, tk.NOTE_ON_BASE + 70]
    ns = tk.decode(ids)
    assert [n.pitch for n in ns.notes] == [60]
    assert ns.notes[0].end_time == pytest.approx(2.0)
    capped = tk.decode(ids, max_note_seconds=0.5)
    assert capped.notes[0].end_time == pytest.approx(0.5)
    assert tk.decode([]).notes == []


def test_midi_bytes_round_trip_with_text_event():
    import mido, io

    ids = tk.encode(piano_performance(seed=5, seconds=10))
    data = tk.to_midi_bytes(ids, text='{"seed": 5}')
    texts = [m.text for m in mido.MidiFile(file=io.BytesIO(data)).tracks[0] if m.type == "text"]
    assert texts == ['{"seed": 5}']
    assert tk.encode(data) == ids


def test_window_seconds_selects_shifts_and_clips():
    ns = reference_of(piano_performance(seed=6, seconds=30))
    window = tk.window_seconds(ns, 10.0, 20.0)
    expected = [n for n in ns.notes if 10.0 <= n.start_time < 20.0]
    assert len(window.notes) == len(expected) > 0
    assert min(n.start_time for n in window.notes) >= 0.0
    assert max(n.end_time for n in window.notes) <= 10.0 + 1e-9
    assert window.notes[0].start_time == pytest.approx(expected[0].start_time - 10.0)
    with pytest.raises(ValueError):
        tk.window_seconds(ns, 5.0, 5.0)


def test_last_seconds_and_last_tokens():
    ns = reference_of(piano_performance(seed=7, seconds=30))
    end = max(n.end_time for n in ns.notes)
    tail = tk.last_seconds(ns, 8.0)
    assert len(tail.notes) == sum(1 for n in ns.notes if n.start_time >= end - 8.0)
    ids = tk.encode(ns)
    assert tk.last_tokens(ids, 100) == ids[-100:]
    assert tk.last_tokens(ids, 0) == []
    assert tk.last_tokens(ids, 10**9) == ids


def test_same_pitch_overlaps_staggered_kept_nested_trimmed_at_the_restrike():
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes += [
        pretty_midi.Note(90, 60, 0.0, 1.0),  # staggered with the next: both kept as they are
        pretty_midi.Note(50, 60, 0.5, 1.5),
        pretty_midi.Note(90, 64, 2.0, 4.0),  # a re-strike inside it: this one ends at 2.5
        pretty_midi.Note(50, 64, 2.5, 3.0),
        pretty_midi.Note(70, 67, 5.0, 6.0),  # two onsets at once: each keeps its own offset
        pretty_midi.Note(40, 67, 5.0, 5.5),
    ]
    pm.instruments.append(piano)
    ids, report = tk.encode_with_report(pm)
    got = sorted((n.pitch, round(n.start_time, 2), round(n.end_time, 2)) for n in tk.decode(ids).notes)
    assert got == [(60, 0.0, 1.0), (60, 0.5, 1.5), (64, 2.0, 2.5), (64, 2.5, 3.0), (67, 5.0, 5.5), (67, 5.0, 6.0)]
    assert report.restrikes_trimmed == 1
