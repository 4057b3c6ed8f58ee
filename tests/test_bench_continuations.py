"""bench/continuations.py: its figures on music whose answers are known by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location("continuations", Path(__file__).resolve().parent.parent / "bench" / "continuations.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def notes(rows):
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def test_longest_silence_counts_the_seam_the_gaps_and_the_end():
    assert bench.longest_silence(notes([]), 20.0) == 20.0
    # sounding 1-3 and 2-4 (overlap), then 9-10: the gap 4-9 is the longest, the seam gap is 1
    music = notes([(1, 3, 60, 64), (2, 4, 62, 64), (9, 10, 64, 64)])
    assert bench.longest_silence(music, 20.0) == 10.0  # the end, 10-20
    assert bench.longest_silence(music, 11.0) == 5.0


def test_repeats_pitch_classes_and_the_summary():
    scale = notes([(i, i + 1, 60 + i, 50 + 5 * i) for i in range(8)])
    assert bench.repeat_share(scale) == 0.0
    loop = notes([(i, i + 1, [60, 62, 64, 65][i % 4], 64) for i in range(12)])
    assert bench.repeat_share(loop) == 1.0
    same_key = bench.figures(loop, loop, 12.0)
    assert same_key["pitch_class_corr"] == pytest.approx(1.0)
    assert same_key["notes_per_s"] == 1.0 and same_key["velocity_spread"] == 0.0
    other_key = bench.figures(notes([(0, 1, 61, 64), (1, 2, 66, 64)]), loop, 2.0)
    assert other_key["pitch_class_corr"] < 0
    rows = [{"generated": bench.figures(loop, loop, 12.0), "real": bench.figures(scale, loop, 12.0)}]
    summary = bench.summarise(rows)
    assert summary["empty"] == 0 and summary["notes_per_s_factor_of_means"] == pytest.approx(1.5, abs=0.01)
    assert summary["velocity_spread_factor_of_means"] is None  # a spread of 0 has no factor


def test_the_cut_leaves_room_for_window_and_continuation():
    assert bench.cut_point(300.0, 60.0, 20.0) == 150.0
    assert bench.cut_point(85.0, 60.0, 20.0) == 60.0  # the whole window before, 20 s after


def test_each_piece_is_heard_once_before_any_is_heard_again():
    class Data:
        def index(self, split):
            assert split == "val"
            ondine = [{"work": f"asap/Ravel/Ondine/p{i}.mid", "group": "asap/Ravel/Ondine/", "source": "asap",
                       "seconds": 400.0 + i} for i in range(5)]
            lark = [{"work": "asap/Glinka/Lark/a.mid", "group": "asap/Glinka/Lark/", "source": "asap", "seconds": 200.0}]
            pop = [{"work": f"pop909/{i:03d}.mid", "group": f"pop909/{i:03d}.mid", "source": "pop909",
                    "seconds": 150.0 + i} for i in range(3)]
            short = [{"work": "pop909/999.mid", "group": "pop909/999.mid", "source": "pop909", "seconds": 50.0}]
            score = [{"work": "music21/bach/x.mxl", "group": "music21/bach/x.mxl", "source": "music21", "seconds": 500.0}]
            return ondine + lark + pop + short + score

    chosen = [e["work"] for e in bench.choose_pieces(Data(), 6, 60.0, 20.0, split="val")]
    # round-robin over corpora; Ondine's longest performance, then the Lark, before Ondine again
    assert chosen == ["asap/Ravel/Ondine/p4.mid", "pop909/002.mid", "asap/Glinka/Lark/a.mid", "pop909/001.mid",
                      "asap/Ravel/Ondine/p3.mid", "pop909/000.mid"]
