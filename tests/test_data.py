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
