"""Preparation of token shards: layout, splits, the cache, bad files; crops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main
from perceiver_music.augment import AugmentConfig
from perceiver_music import tokenizer as tk
from perceiver_music.data import TokenData, prepare, sample_crop, split_of
from perceiver_music.errors import DataError


def test_layout_and_stats(tiny_corpus, tiny_data):
    stats = json.loads((tiny_data / "stats.json").read_text())
    assert sum(stats["works"].values()) == 14
    assert stats["failed"] == 3
    assert all(stats["works"][s] >= 1 for s in ("train", "val", "test"))
    data = TokenData(tiny_data)
    total = 0
    for split in ("train", "val", "test"):
        tokens = data.tokens(split)
        index = data.index(split)
        assert stats["tokens"][split] == len(tokens) == sum(e["length"] for e in index)
        total += len(tokens)
        for name, ids in data.works(split):
            assert ids[0] == tk.SOS and ids[-1] == tk.EOS
            relative = name.split("/", 1)[1]
            assert ids[1:-1].tolist() == tk.encode(tiny_corpus / relative)
    assert total > 20_000


def test_bad_files_are_listed_with_reasons(tiny_data):
    failed = [json.loads(line) for line in (tiny_data / "failed.jsonl").read_text().splitlines()]
    reasons = {f["work"].split("/", 1)[1]: f["reason"] for f in failed}
    assert set(reasons) == {"broken.mid", "notes.txt.mid", "piano/empty.mid"}
    assert "empty" in reasons["piano/empty.mid"]
    assert "not a MIDI file" in reasons["notes.txt.mid"]


def test_split_is_by_work_and_deterministic():
    names = [f"folk/tune{i}.mid" for i in range(5000)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    share = {s: splits.count(s) / len(names) for s in ("train", "val", "test")}
    assert 0.02 < share["val"] < 0.04 and 0.02 < share["test"] < 0.04


def test_rerun_only_encodes_new_files(tiny_corpus, tmp_path, monkeypatch):
    out = tmp_path / "data"
    prepare([str(tiny_corpus)], out, workers=1, progress=False)
    calls = []
    real = tk.encode_with_report

    def counting(*args, **kwargs):
        calls.append(kwargs.get("name"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tk, "encode_with_report", counting)
    prepare([str(tiny_corpus)], out, workers=1, progress=False)
    assert calls == []
    (tiny_corpus / "chorales" / "copy.mid").write_bytes((tiny_corpus / "piano" / "clara.MID").read_bytes())
    try:
        stats = prepare([str(tiny_corpus)], out, workers=1, progress=False)
    finally:
        (tiny_corpus / "chorales" / "copy.mid").unlink()
    assert calls == []  # same content as a cached file: nothing to encode
    assert stats.duplicates == 1


def test_prepare_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no MIDI files" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    with pytest.raises(DataError, match="not a prepared data folder"):
        TokenData(tmp_path)


def test_crops(tiny_data):
    stream = TokenData(tiny_data).tokens("train")
    rng = np.random.default_rng(0)
    plain = sample_crop(stream, 512, rng)
    assert plain.shape == (512,) and plain.dtype == np.int64
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(stream), 512)
    assert (windows == plain).all(axis=1).any()  # an exact slice of the stream
    augmented = sample_crop(stream, 512, rng, AugmentConfig())
    assert augmented.shape == (512,)
    assert augmented.min() >= 0 and augmented.max() < tk.VOCAB_SIZE
    with pytest.raises(DataError):
        sample_crop(stream[:100], 512, rng)


def test_music21_conversion_is_cached(tmp_path):
    from perceiver_music import music21_corpus

    item = next(f for f in music21_corpus.corpus_files() if f.rel.endswith("bwv66.6.mxl"))
    record = music21_corpus.convert_file(item, tmp_path)
    assert record["failed"] == [] and len(record["works"]) == 1
    midi = tmp_path / "midi" / record["works"][0]["midi"]
    assert tk.encode(midi)
    midi.write_bytes(b"changed")  # a cached record is trusted: nothing is converted again
    assert music21_corpus.convert_file(item, tmp_path) == record
    assert midi.read_bytes() == b"changed"


def test_long_work_crops_stay_inside_one_work(tiny_data):
    data = TokenData(tiny_data)
    stream, works = data.tokens("train"), data.work_spans("train")
    assert works[:, 1].sum() == len(stream)
    rng = np.random.default_rng(1)
    for _ in range(50):
        crop = sample_crop(stream, 1024, rng, works=works, long_share=1.0)
        assert (crop == tk.SOS).sum() <= 1 and (crop[1:] == tk.SOS).sum() == 0  # no second piece begins
    mixed = [sample_crop(stream, 1024, rng, works=works, long_share=0.0) for _ in range(200)]
    assert any((c[1:] == tk.SOS).any() for c in mixed)  # uniform crops do cross work boundaries


# ---- groups (several performances of one piece) and sources (corpora) ---------------------------


def _scale_file(path, pitches, seed: int):
    """A short distinct file whose notes use only `pitches`: its corpus can be told from its ids."""
    import pretty_midi

    from midi_fixtures import midi_bytes, write

    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    t = 0.0
    for _ in range(12):
        length = float(rng.uniform(0.1, 0.4))
        piano.notes.append(pretty_midi.Note(int(rng.integers(60, 110)), int(rng.choice(pitches)), t, t + length))
        t += length
    pm.instruments.append(piano)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, midi_bytes(pm))


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """'perf': 80 pieces x 3 performances, one folder per piece under a composer folder;
    'scores': 40 single files. Their notes use different pitches."""
    root = tmp_path_factory.mktemp("corpora")
    for piece in range(80):
        for take in range(3):
            _scale_file(root / "perf" / f"composer{piece % 4}" / f"piece{piece}" / f"take{take}.mid", range(40, 60), piece * 10 + take)
    for work in range(40):
        _scale_file(root / "scores" / f"tune{work}.mid", range(70, 90), 10_000 + work)
    return root


def _splits_by_group(data_dir) -> dict[str, set[str]]:
    data = TokenData(data_dir)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for entry in data.index(split):
            piece = entry["work"].rsplit("/", 1)[0]
            seen.setdefault(piece, set()).add(split)
    return seen


def test_group_rule_keeps_every_performance_of_a_piece_in_one_split(two_corpora, tmp_path):
    perf = str(two_corpora / "perf")
    prepare([perf], tmp_path / "grouped", workers=1, progress=False, groups={perf: "parent"})
    grouped = _splits_by_group(tmp_path / "grouped")
    assert len(grouped) == 80 and all(len(splits) == 1 for splits in grouped.values())
    held_out = [p for p, splits in grouped.items() if splits != {"train"}]
    assert held_out, "some pieces are held out"
    index = TokenData(tmp_path / "grouped").index("test")
    assert all(e["group"] == e["work"].rsplit("/", 1)[0] + "/" for e in index)

    # Without the rule each file is split on its own and pieces straddle splits: the leak
    # that the rule exists to prevent.
    prepare([perf], tmp_path / "files", workers=1, progress=False)
    assert any(len(splits) > 1 for splits in _splits_by_group(tmp_path / "files").values())


def test_group_rule_by_depth_and_its_errors(two_corpora, tmp_path, capsys):
    from pathlib import Path

    from perceiver_music.data import group_of

    assert group_of("perf", Path("composer1/piece5/take0.mid"), "1") == "perf/composer1/"
    assert group_of("perf", Path("composer1/piece5/take0.mid"), "parent") == "perf/composer1/piece5/"
    assert group_of("perf", Path("loose.mid"), "2") == "perf/"
    assert group_of("perf", Path("composer1/piece5/take0.mid"), None) == ""
    perf = str(two_corpora / "perf")
    prepare([perf], tmp_path / "composers", workers=1, progress=False, groups={perf: "1"})
    data = TokenData(tmp_path / "composers")
    composers = {}
    for split in ("train", "val", "test"):
        for entry in data.index(split):
            composers.setdefault(entry["work"].split("/")[1], set()).add(split)
    assert all(len(splits) == 1 for splits in composers.values())
    assert main(["prepare", perf, "-o", str(tmp_path / "x"), "--group", f"{perf}=deep", "--quiet"]) == 2
    assert main(["prepare", perf, "-o", str(tmp_path / "x"), "--group", "elsewhere=parent", "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "'parent' or a folder depth" in lines[0] and "not one of the sources" in lines[1]


def test_stats_give_each_corpus_by_split(two_corpora, tmp_path, capsys):
    perf, scores = str(two_corpora / "perf"), str(two_corpora / "scores")
    assert main(["prepare", perf, scores, "-o", str(tmp_path / "mix"), "--group", f"{perf}=parent", "--quiet"]) == 0
    assert "perf: train" in capsys.readouterr().out
    stats = json.loads((tmp_path / "mix" / "stats.json").read_text())
    table = stats["by_source"]
    assert set(table) == {"perf", "scores"}
    assert sum(row["files"] for row in table["perf"].values()) == 240
    assert sum(row["groups"] for row in table["perf"].values()) == 80
    assert sum(row["groups"] for row in table["scores"].values()) == 40
    for split in ("train", "val", "test"):
        assert sum(table[s].get(split, {}).get("tokens", 0) for s in table) == stats["tokens"][split]
    assert stats["groups"] == {perf: "parent"}


def test_source_weights_set_the_share_of_crops_from_each_corpus(two_corpora, tmp_path):
    from perceiver_music.train import TrainConfig, batch_for_step, source_mix

    perf, scores = str(two_corpora / "perf"), str(two_corpora / "scores")
    prepare([perf, scores], tmp_path / "mix", workers=1, progress=False, groups={perf: "parent"})
    data = TokenData(tmp_path / "mix")
    stream, regions = data.tokens("train"), data.source_spans("train")
    assert set(regions) == {"perf", "scores"}
    # perf has ~6x the tokens of scores: uniform crops would be mostly perf
    cfg = TrainConfig(batch_size=50, source_weights={"perf": 0.3, "scores": 0.7})
    mix = source_mix(regions, cfg.source_weights, 64)
    crops = np.concatenate([batch_for_step(stream, 64, cfg, step, 0, None, mix=mix) for step in range(8)])
    from_scores = []
    for crop in crops:
        pitches = set((crop[(crop >= tk.NOTE_ON_BASE) & (crop < tk.NOTE_OFF_BASE)] - tk.NOTE_ON_BASE).tolist())
        assert pitches and (pitches <= set(range(70, 90)) or pitches <= set(range(40, 60))), "a crop never straddles corpora"
        from_scores.append(pitches <= set(range(70, 90)))
    assert 0.6 < np.mean(from_scores) < 0.8
    with pytest.raises(Exception, match="not in the data"):
        source_mix(regions, {"nope": 1.0}, 64)


def test_every_corpus_of_four_works_or_more_gets_val_and_test(two_corpora, tmp_path):
    small = tmp_path / "small"
    for work in range(5):
        _scale_file(small / f"piece{work}.mid", range(20, 30), 20_000 + work)
    perf = str(two_corpora / "perf")
    stats = prepare([perf, str(small)], tmp_path / "mix", workers=1, progress=False, groups={perf: "parent"})
    assert {split: row["files"] for split, row in stats.by_source["small"].items()} == {"train": 3, "val": 1, "test": 1}
    grouped = {piece: splits for piece, splits in _splits_by_group(tmp_path / "mix").items() if piece.startswith("perf/")}
    assert len(grouped) == 80 and all(len(splits) == 1 for splits in grouped.values())
    TokenData(tmp_path / "mix").source_spans("train")  # sources stay contiguous after the moves
