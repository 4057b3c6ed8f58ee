"""`batch` and `render-folder`: real model (tiny, random), real fluidsynth, real files and processes.

Folders with odd names and broken files, the manifest and resume after kill -9, shards, stable
seeds, parallel rendering, and the manifest's own guarantees (torn lines, concurrent appends).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pretty_midi
import pytest
import soundfile

from app.cli import main
from midi_fixtures import midi_bytes, piano_performance
from perceiver_music import batch as B
from perceiver_music.render import embedded_soundfont

REPO = Path(__file__).resolve().parents[1]
SOUNDFONT = str(embedded_soundfont())  # the one every machine has, and the fastest to load

GOOD = ["a.mid", "sub dir/ünïcödé ♫/b c.MID", "sub dir/deep/x  y.midi"]
BAD = {
    "broken.mid": midi_bytes(piano_performance(9, 3.0))[:40],  # cut in the middle of a chunk
    "sub dir/empty.mid": b"",
    "sub dir/ünïcödé ♫/notes.txt.mid": b"not a midi file at all",
}


def make_folder(root: Path, good=GOOD, bad=BAD, seconds: float = 4.0) -> Path:
    for index, rel in enumerate(good):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(midi_bytes(piano_performance(index, seconds)))
    for rel, data in bad.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "readme.txt").write_text("not MIDI: ignored")
    return root


def manifest_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / B.MANIFEST).read_text().splitlines() if line.strip()]


def latest(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in manifest_records(out)}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and (B.is_temp_file(p.name) or ".part" in p.name)]


def assert_outputs_sound(out: Path) -> None:
    """Every output is whole: each MIDI parses, each audio file reads with frames in it. Temp
    files are not outputs: a kill in mid-write leaves one (a rerun sweeps them; tested apart)."""
    temps = set(temp_files(out))
    for path in out.rglob("*"):
        if path in temps:
            continue
        if path.suffix == ".mid":
            pretty_midi.PrettyMIDI(str(path))
        elif path.suffix in (".wav", ".flac"):
            info = soundfile.info(str(path))
            assert info.frames > 0, path


def batch_args(in_dir, out_dir, checkpoint, *extra) -> list[str]:
    return ["batch", str(in_dir), str(out_dir), "--checkpoint", str(checkpoint), "--length", "2",
            "--soundfont", SOUNDFONT, "--sample-rate", "22050", "--quiet", *extra]


# ---- the whole path ------------------------------------------------------------------------------


def test_batch_nested_odd_names_bad_files_report_and_rerun(tmp_path, random_checkpoint, capsys):
    in_dir = make_folder(tmp_path / "in put")
    out = tmp_path / "out"
    code = main(batch_args(in_dir, out, random_checkpoint, "--seed", "11", "--variations", "2", "--workers", "0"))
    printed = capsys.readouterr().out
    assert code == 1  # some files failed

    records = latest(out)
    assert set(records) == set(GOOD) | set(BAD)
    for rel in GOOD:
        record = records[rel]
        assert record["status"] == "done", record
        assert record["seed"] == B.file_seed(11, rel)
        stem = rel.rsplit(".", 1)[0]
        expected = [f"{stem}-{i}{role}" for i in (1, 2) for role in (".mid", ".full.mid", ".wav")]
        assert record["outputs"] == expected
        for output in expected:
            assert (out / output).is_file(), output
        provenance = record["provenance"]
        assert provenance["seed"] == record["seed"]
        assert provenance["primer"]["name"] == rel and len(provenance["primer"]["sha256"]) == 64
        assert provenance["checkpoint"]["sha256"]
        assert [v["index"] for v in provenance["variations"]] == [1, 2]
        assert soundfile.info(str(out / f"{stem}-1.wav")).samplerate == 22050
        full = pretty_midi.PrettyMIDI(str(out / f"{stem}-1.full.mid"))
        assert full.instruments and full.instruments[0].notes  # the primer window is in it
    for rel in BAD:
        assert records[rel]["status"] == "failed"
        reason = records[rel]["reason"]
        assert reason and "\n" not in reason and "Traceback" not in reason
    assert "ends in the middle" in records["broken.mid"]["reason"]
    assert not (out / "readme").exists() and not list(out.rglob("*.txt"))
    assert_outputs_sound(out)
    assert not temp_files(out)

    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"files": 6, "done": 3, "skipped": 0, "failed": 3, "other_shards": 0}
    assert {f["path"] for f in report["failures"]} == set(BAD)
    assert report["new_tokens"] > 0 and report["tokens_per_s"] > 0
    assert report["timings"]["wall_s"] > 0 and report["base_seed"] == 11
    assert "3 failed" in printed and "report.json" in printed

    # A re-run (no --seed: the manifest's base seed is reused) skips what is done.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mid")}
    code = main(batch_args(in_dir, out, random_checkpoint, "--variations", "2", "--workers", "0"))
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["skipped"] == 3 and report["counts"]["done"] == 0
    assert report["base_seed"] == 11
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mid")} == mtimes

    # Other settings are other work: a different length redoes the files.
    code = main(batch_args(in_dir, out, random_checkpoint, "--variations", "2", "--workers", "0",
                           "--skip-failed", "--length", "1"))
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["done"] == 3 and report["counts"]["skipped"] == 0


def test_seeds_and_music_stable_when_files_are_added(tmp_path, random_checkpoint):
    small = make_folder(tmp_path / "small", good=["x.mid", "y.mid"], bad={})
    big = make_folder(tmp_path / "big", good=["x.mid", "y.mid", "aa.mid", "zz/w.mid"], bad={})
    (big / "x.mid").write_bytes((small / "x.mid").read_bytes())
    for folder, out in ((small, tmp_path / "out-small"), (big, tmp_path / "out-big")):
        assert main(batch_args(folder, out, random_checkpoint, "--seed", "5", "--render", "none")) == 0
    a, b = latest(tmp_path / "out-small"), latest(tmp_path / "out-big")
    assert a["x.mid"]["seed"] == b["x.mid"]["seed"] == B.file_seed(5, "x.mid")
    assert b["aa.mid"]["seed"] != b["x.mid"]["seed"]

    def notes(path):
        return [(n.pitch, n.velocity, round(n.start, 3), round(n.end, 3))
                for inst in pretty_midi.PrettyMIDI(str(path)).instruments for n in inst.notes]

    assert notes(tmp_path / "out-small" / "x.mid") == notes(tmp_path / "out-big" / "x.mid")
    assert not list((tmp_path / "out-big").rglob("*.wav"))  # --render none


def test_shards_split_a_folder_exactly_once(tmp_path, random_checkpoint):
    names = [f"set {i // 50}/piece {i}.mid" for i in range(1000)]
    for n in (2, 3, 7):
        parts = [[r for r in names if B.shard_of(r, n) == k] for k in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(names)
        assert all(len(p) > 1000 / n * 0.7 for p in parts)  # a hash, roughly even
    assert B.parse_shard("2/4") == (2, 4)

    good = [f"p{i}.mid" for i in range(5)]
    in_dir = make_folder(tmp_path / "in", good=good, bad={"bad.mid": b"MThd broken"})
    out = tmp_path / "out"  # both shards write into one OUT_DIR, as a Slurm array would
    codes = [main(batch_args(in_dir, out, random_checkpoint, "--seed", "1", "--render", "none",
                             "--shard", f"{k}/2")) for k in (1, 2)]
    records = manifest_records(out)
    done = [r["path"] for r in records if r["status"] == "done"]
    assert sorted(done) == sorted(good)  # every file exactly once
    reports = [json.loads((out / f"report-{k}-of-2.json").read_text()) for k in (1, 2)]
    assert sum(r["counts"]["files"] for r in reports) == 6
    assert all(r["counts"]["other_shards"] + r["counts"]["files"] == 6 for r in reports)
    shard_of_bad = B.shard_of("bad.mid", 2)
    assert codes[shard_of_bad - 1] == 1 and codes[2 - shard_of_bad] == 0
    assert {r["shard"] for r in records} == {"1/2", "2/2"}


# ---- kill -9 and resume ----------------------------------------------------------------------------


def test_kill_9_mid_batch_then_rerun_completes_the_rest(tmp_path, random_checkpoint):
    good = [f"piece {i}.mid" for i in range(6)]
    in_dir = make_folder(tmp_path / "in", good=good, bad={"bad.mid": b"nope"})
    out = tmp_path / "out"
    log = tmp_path / "batch.log"
    command = [sys.executable, "-m", "app.cli", *batch_args(in_dir, out, random_checkpoint, "--length", "3",
                                                            "--seed", "2", "--workers", "1")]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own group: the pool dies with it
    deadline = time.monotonic() + 240
    try:
        while True:
            if (out / B.MANIFEST).exists() and any(r["status"] == "done" for r in manifest_records(out)):
                break
            assert process.poll() is None, f"batch ended before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # like a node dying: main process and render workers
        process.wait()

    before = latest(out)
    done_before = {rel for rel, r in before.items() if r["status"] == "done"}
    assert done_before and len(done_before) < len(good), "the kill came too late to test anything"
    assert_outputs_sound(out)  # whatever exists is whole (temp files aside)
    mtimes = {o: (out / o).stat().st_mtime_ns for rel in done_before for o in before[rel]["outputs"]}
    # A writer killed in the middle of its line: the next run must cut it off and go on.
    with open(out / B.MANIFEST, "ab") as f:
        f.write(b'{"path": "piece 5.mid", "status": "do')

    assert main(batch_args(in_dir, out, random_checkpoint, "--length", "3", "--workers", "1")) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["skipped"] == len(done_before)
    assert report["counts"]["done"] == len(good) - len(done_before)
    assert report["base_seed"] == 2
    assert any("torn" in note for note in report["notes"])
    records = latest(out)
    assert all(records[rel]["status"] == "done" for rel in good) and records["bad.mid"]["status"] == "failed"
    assert all(records[rel]["seed"] == B.file_seed(2, rel) for rel in good)
    assert {o: (out / o).stat().st_mtime_ns for o in mtimes} == mtimes  # done files were not redone
    assert not temp_files(out)
    assert_outputs_sound(out)
    for line in (out / B.MANIFEST).read_text().splitlines():
        json.loads(line)  # the repaired manifest is all whole lines


# ---- render-folder ----------------------------------------------------------------------------------


def test_render_folder_parallel_with_manifest_and_resume(tmp_path):
    in_dir = make_folder(tmp_path / "in", seconds=3.0)
    out = tmp_path / "out"
    args = ["render-folder", str(in_dir), str(out), "--workers", "2", "--format", "flac",
            "--soundfont", SOUNDFONT, "--sample-rate", "22050", "--quiet"]
    assert main(args) == 1
    records = latest(out)
    for rel in GOOD:
        assert records[rel]["status"] == "done"
        audio, rate = soundfile.read(str(out / (rel.rsplit(".", 1)[0] + ".flac")))
        assert rate == 22050 and len(audio) > 2 * rate and abs(audio).max() > 0.01
    assert all(records[rel]["status"] == "failed" for rel in BAD)
    assert all(r["kind"] == "render" for r in records.values())
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["done"] == 3 and report["counts"]["failed"] == 3 and report["audio_seconds"] > 6
    assert not temp_files(out)

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    (out / "a.flac").unlink()  # a lost output is redone; the others are skipped
    assert main(args) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["done"] == 1 and report["counts"]["skipped"] == 2
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items() if p.name != "a.flac")
    assert (out / "a.flac").is_file()


def test_user_errors_exit_2_with_one_line(tmp_path, random_checkpoint, capsys):
    in_dir = make_folder(tmp_path / "in", good=["a.mid"], bad={})
    cases = [
        ["batch", str(tmp_path / "missing"), str(tmp_path / "o1"), "--checkpoint", str(random_checkpoint)],
        ["batch", str(in_dir), str(in_dir), "--checkpoint", str(random_checkpoint)],
        batch_args(in_dir, tmp_path / "o2", random_checkpoint, "--shard", "3/2"),
        batch_args(in_dir, tmp_path / "o3", tmp_path / "no-checkpoint"),
        batch_args(in_dir, tmp_path / "o4", random_checkpoint, "--temperature", "9"),
        ["render-folder", str(in_dir), str(tmp_path / "o5"), "--soundfont", str(tmp_path / "none.sf2")],
        ["render-folder", str(tmp_path / "missing"), str(tmp_path / "o6")],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o5").exists()


# ---- the parts ---------------------------------------------------------------------------------------


def test_listing_outputs_and_conflicts(tmp_path):
    make_folder(tmp_path / "in", good=["a.mid", "A.MIDI", "b.mid", "b.full.mid", "c/d.kar"], bad={})
    out = tmp_path / "in" / "out"  # OUT_DIR inside IN_DIR: its MIDI files are not inputs
    (out / "x").mkdir(parents=True)
    (out / "x" / "old.mid").write_bytes(b"")
    (tmp_path / "in" / ".a.mid.abcd1234.part.mid").write_bytes(b"")  # a temp file is no input
    rels = B.list_midi_files(tmp_path / "in", exclude=[out])
    assert rels == ["A.MIDI", "a.mid", "b.full.mid", "b.mid", "c/d.kar"]
    outputs, conflicts = B.assign_outputs(rels, lambda r: B.batch_outputs(r, 1, "wav"))
    assert outputs["A.MIDI"] == ["A.mid", "A.full.mid", "A.wav"] and "a.mid" in conflicts  # same name, any case
    assert "b.mid" in conflicts and "b.full.mid" in conflicts["b.mid"]
    assert outputs["c/d.kar"] == ["c/d.mid", "c/d.full.mid", "c/d.wav"]
    assert B.batch_outputs("s.mid", 2, None) == ["s-1.mid", "s-1.full.mid", "s-2.mid", "s-2.full.mid"]
    assert B.render_outputs("s t/u.midi", "flac") == ["s t/u.flac"]
    assert B.file_seed(1, "a.mid") == B.file_seed(1, "a.mid") != B.file_seed(2, "a.mid")
    assert 0 <= B.file_seed(2**62, "ü.mid") < 2**63


def test_stale_temp_files_of_own_outputs_only_are_removed(tmp_path):
    (tmp_path / "d").mkdir()
    mine = tmp_path / "d" / ".song.mid.k2j4h5g6.part.mid"
    theirs = tmp_path / "d" / ".other.mid.a1b2c3d4.part.mid"
    for path in (mine, theirs, tmp_path / "d" / "song.mid"):
        path.write_bytes(b"x")
    assert B.remove_stale_temp_files(tmp_path, ["d/song.mid", "d/song.wav"]) == 1
    assert not mine.exists() and theirs.exists() and (tmp_path / "d" / "song.mid").exists()


def test_manifest_repairs_a_torn_line_and_skips_garbage(tmp_path):
    manifest = B.Manifest(tmp_path)
    manifest.append({"path": "a.mid", "status": "done", "kind": "batch"})
    with open(manifest.path, "ab") as f:
        f.write(b"garbage line\n")
        f.write(b'{"path": "b.mid", "status": "do')  # torn: no newline
    records = manifest.read()
    assert [r["path"] for r in records] == ["a.mid"] and manifest.bad_lines == 1
    assert manifest.repaired_bytes == len(b'{"path": "b.mid", "status": "do')
    assert manifest.path.read_bytes().endswith(b"garbage line\n")
    with open(manifest.path, "ab") as f:
        f.write(b'{"path": "c.mid"')  # torn again; the next append cuts it before writing
    manifest.append({"path": "b.mid", "status": "failed", "kind": "batch", "reason": "x"})
    assert [r["path"] for r in manifest.read()] == ["a.mid", "b.mid"]
    assert set(manifest.latest("batch")) == {"a.mid", "b.mid"}


def _append_many(args) -> None:
    folder, worker, count = args
    manifest = B.Manifest(folder)
    for i in range(count):
        manifest.append({"path": f"w{worker}/f{i}.mid", "status": "done", "kind": "batch",
                         "padding": "x" * (100 * (i % 7))})


def test_manifest_concurrent_appends_from_processes_stay_whole(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(str(tmp_path), w, 40) for w in range(4)])
    lines = (tmp_path / B.MANIFEST).read_bytes().splitlines()
    assert len(lines) == 160
    paths = {json.loads(line)["path"] for line in lines}
    assert paths == {f"w{w}/f{i}.mid" for w in range(4) for i in range(40)}


@pytest.mark.parametrize("text", ["1", "0/2", "3/2", "a/b", "1/0"])
def test_bad_shard_specs(text):
    from perceiver_music.errors import BadRequestError

    with pytest.raises(BadRequestError):
        B.parse_shard(text)


def test_files_generated_together_in_groups(tmp_path, random_checkpoint, monkeypatch):
    """--files-per-batch (automatic on a GPU): primers of similar length go through the model
    together; bad files fail alone; every file gets its outputs and its own seed."""
    from perceiver_music import engine

    folder = make_folder(tmp_path / "in", good=["a.mid", "b.mid", "c.mid", "d.mid", "e.mid"], bad=BAD)
    batches = []
    real = engine.continue_batch

    def spy(requests, *args, **kwargs):
        batches.append([r.primer_name for r in requests])
        return real(requests, *args, **kwargs)

    monkeypatch.setattr(engine, "continue_batch", spy)
    out = tmp_path / "out"
    assert main(batch_args(folder, out, random_checkpoint, "--seed", "4", "--files-per-batch", "3",
                           "--window", "2", "--render", "none")) == 1
    records = latest(out)
    good = {"a.mid", "b.mid", "c.mid", "d.mid", "e.mid"}
    assert {r for r, rec in records.items() if rec["status"] == "done"} == good
    assert {r for r, rec in records.items() if rec["status"] == "failed"} == set(BAD)
    assert any(len(b) > 1 for b in batches) and all(len(b) <= 3 for b in batches)
    names = [name for b in batches for name in b]
    assert sorted(names) == sorted(good)  # each good file generated once; bad ones never reach the model
    for rel in good:
        assert records[rel]["seed"] == B.file_seed(4, rel)
        pretty_midi.PrettyMIDI(str(out / rel))
    assert not temp_files(out)


def test_batch_renders_the_whole_piece_unless_told_lead_in_and_allow_end_lets_the_model_stop(
        tmp_path, random_checkpoint, eos_checkpoint):
    folder = make_folder(tmp_path / "in", good=["p.mid"], bad={}, seconds=20.0)
    whole, seam = tmp_path / "whole", tmp_path / "seam"
    assert main(batch_args(folder, whole, random_checkpoint, "--seed", "1", "--workers", "0")) == 0
    assert main(batch_args(folder, seam, random_checkpoint, "--seed", "1", "--workers", "0", "--lead-in", "3")) == 0
    whole_s = soundfile.info(str(whole / "p.wav")).frames / 22050
    seam_s = soundfile.info(str(seam / "p.wav")).frames / 22050
    assert whole_s >= 19 + 2 and 3 + 2 - 0.01 <= seam_s <= 3 + 2 + 4.1
    stops = tmp_path / "stops"
    assert main(batch_args(folder, stops, eos_checkpoint, "--render", "none", "--allow-end")) == 0
    assert pretty_midi.PrettyMIDI(str(stops / "p.mid")).instruments == [] or not any(
        i.notes for i in pretty_midi.PrettyMIDI(str(stops / "p.mid")).instruments)
    assert latest(stops)["p.mid"]["status"] == "done"
