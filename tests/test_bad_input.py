"""Malformed input never gives a traceback: a BadMidiError in the library, exit 2 and one line in the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app.cli import main
from malformed import make_malformed, valid_midi
from perceiver_music.errors import BadMidiError, UserFacingError
from perceiver_music.tokenizer import encode_with_report

EXPECTED_WORDS = {  # each message says what is wrong, in words a person knows
    "empty.mid": "empty",
    "text_renamed.mid": "not a MIDI file",
    "truncated.mid": "truncated",
    "header_cut.mid": "truncated",
    "no_notes.mid": "no notes",
    "only_controls.mid": "no notes",
    "drums_only.mid": "drum",
    "absurd_tempo_fast.mid": "tempo",
    "absurd_tempo_slow.mid": "tempo",
    "hundred_thousand_notes.mid": "notes; the limit",
    "ten_hours.mid": "minutes",
    "png_renamed.mid": "not a MIDI file",
    "wav_renamed.mid": "not a MIDI file",
    "gzipped.mid": "not a MIDI file",
    "json.mid": "not a MIDI file",
    "random_bytes.mid": "not a MIDI file",
    "garbage_after_header.mid": "damaged",
    "track_length_lies.mid": "damaged",
    "zero_division.mid": "ticks per beat",
    "header_only.mid": "damaged",
    "a_folder.mid": "folder",
    "missing.mid": "no such file",
    "huge.mid": "MB",
}


@pytest.fixture(scope="module")
def malformed(tmp_path_factory):
    return make_malformed(tmp_path_factory.mktemp("malformed"))


def test_every_case_is_covered(malformed):
    assert set(malformed) == set(EXPECTED_WORDS)
    assert len(malformed) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED_WORDS))
def test_library_raises_bad_midi_error(malformed, name):
    with pytest.raises(BadMidiError) as caught:
        encode_with_report(malformed[name])
    message = str(caught.value)
    assert "\n" not in message
    assert EXPECTED_WORDS[name] in message


@pytest.mark.parametrize("name", sorted(EXPECTED_WORDS))
def test_cli_inspect_exits_2_with_one_line(malformed, name, capsys):
    assert main(["inspect", str(malformed[name])]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert EXPECTED_WORDS[name] in lines[0]
    assert captured.out == ""


def test_bytes_sources_fail_the_same_way(malformed):
    with pytest.raises(BadMidiError, match="not a MIDI file"):
        encode_with_report(malformed["json.mid"].read_bytes())
    with pytest.raises(BadMidiError, match="cannot read MIDI from a int"):
        encode_with_report(42)


def test_a_real_process_prints_no_traceback(malformed, tmp_path):
    """The installed console script, as a person runs it."""
    exe = [sys.executable, "-m", "app.cli"]
    for name in ("truncated.mid", "text_renamed.mid"):
        proc = subprocess.run(exe + ["inspect", str(malformed[name])], capture_output=True, text=True)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1
    good = tmp_path / "good.mid"
    good.write_bytes(valid_midi())
    proc = subprocess.run(exe + ["inspect", "--json", str(good)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"notes_kept": 64' in proc.stdout


def test_json_output_is_only_json_when_ci_is_set(tmp_path):
    """pyfluidsynth prints where it found libfluidsynth when $CI is set; none of it reaches stdout."""
    good = tmp_path / "good.mid"
    good.write_bytes(valid_midi())
    env = {**os.environ, "CI": "1"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "inspect", "--json", str(good)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["notes_kept"] == 64


def test_user_facing_errors_are_one_line():
    assert str(UserFacingError("two\nlines   here")) == "two lines here"
