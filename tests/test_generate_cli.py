"""`perceiver-music generate`: one primer in, MIDI (and audio) out, with the engine's controls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pretty_midi
import soundfile

from app.cli import main
from app.commands.generate import output_names
from midi_fixtures import midi_bytes, piano_performance
from perceiver_music.render import embedded_soundfont

REPO = Path(__file__).resolve().parents[1]
SOUNDFONT = str(embedded_soundfont())


def notes(path: Path) -> list[tuple]:
    return [(n.pitch, n.velocity, round(n.start, 3)) for i in pretty_midi.PrettyMIDI(str(path)).instruments
            for n in i.notes]


def test_generate_writes_continuation_full_and_audio(tmp_path, random_checkpoint, capsys):
    primer = tmp_path / "my primer.mid"
    primer.write_bytes(midi_bytes(piano_performance(3, 6.0)))
    out = tmp_path / "out folder" / "song.mid"
    args = ["generate", str(primer), "-o", str(out), "--audio", str(tmp_path / "out folder" / "song.wav"),
            "--checkpoint", str(random_checkpoint), "--length", "2", "--window", "3", "--seed", "42",
            "--temperature", "0.9", "--top-k", "64", "--top-p", "0.9", "--min-p", "0.01",
            "--soundfont", SOUNDFONT, "--sample-rate", "22050", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "seed 42" in printed
    for name in ("song.mid", "song.full.mid", "song.wav"):
        assert str(tmp_path / "out folder" / name) in printed
    full = notes(tmp_path / "out folder" / "song.full.mid")
    continuation = notes(out)
    assert len(full) > len(continuation) >= 0 and full  # the primer window comes first
    info = soundfile.info(str(tmp_path / "out folder" / "song.wav"))
    assert info.samplerate == 22050 and info.frames > 22050

    # The same seed gives the same music.
    again = tmp_path / "again.mid"
    assert main([*args[:3], str(again), *args[6:]]) == 0
    assert notes(again) == continuation


def test_generate_variations_and_from_scratch(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "v.mid"
    assert main(["generate", "--from-scratch", "-o", str(out), "--checkpoint", str(random_checkpoint),
                 "--length", "2", "--variations", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    seed_line = printed.splitlines()[0]
    assert seed_line.startswith("seed ") and int(seed_line.split()[1]) >= 0
    for i in (1, 2, 3):
        assert (tmp_path / f"v-{i}.mid").is_file()
        pretty_midi.PrettyMIDI(str(tmp_path / f"v-{i}.mid"))
        assert not (tmp_path / f"v-{i}.full.mid").exists()  # from scratch: nothing to prepend
    assert not out.exists()
    assert output_names("x/o.mid", "x/o.flac", 2, True, audio_full="x/w.wav") == [
        {"continuation": "x/o-1.mid", "full": "x/o-1.full.mid", "audio": "x/o-1.flac", "audio_full": "x/w-1.wav"},
        {"continuation": "x/o-2.mid", "full": "x/o-2.full.mid", "audio": "x/o-2.flac", "audio_full": "x/w-2.wav"},
    ]


def test_generate_user_errors_exit_2_with_one_line(tmp_path, random_checkpoint, capsys):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")  # a header cut short
    common = ["--checkpoint", str(random_checkpoint), "--length", "2", "--quiet"]
    cases = [
        ["generate", str(bad), "-o", str(tmp_path / "o.mid"), *common],
        ["generate", str(tmp_path / "missing.mid"), "-o", str(tmp_path / "o.mid"), *common],
        ["generate", "-o", str(tmp_path / "o.mid"), *common],  # neither a primer nor --from-scratch
        ["generate", "--from-scratch", "-o", str(tmp_path / "o.wav"), *common],  # not a MIDI name
        ["generate", "--from-scratch", "-o", str(tmp_path / "o.mid"), "--audio", str(tmp_path / "o.xyz"), *common],
        ["generate", "--from-scratch", "-o", str(tmp_path / "o.mid"), "--variations", "9", *common],
        ["generate", "--from-scratch", "-o", str(tmp_path / "o.mid"), "--checkpoint", str(tmp_path / "nope")],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (args, err)
    assert not list(tmp_path.glob("o*"))


def test_generate_console_script_bad_primer(tmp_path, random_checkpoint):
    """Through the real entry point: one line on stderr, exit code 2, no traceback."""
    bad = tmp_path / "song.mid"
    bad.write_bytes(b"this is not MIDI")
    done = subprocess.run([sys.executable, "-m", "app.cli", "generate", str(bad), "-o", str(tmp_path / "o.mid"),
                           "--checkpoint", str(random_checkpoint)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: song.mid")
    assert "Traceback" not in done.stderr and not (tmp_path / "o.mid").exists()


def test_generate_audio_is_the_seam_of_a_ten_minute_primer_and_audio_full_the_whole(tmp_path, random_checkpoint,
                                                                                    eos_checkpoint, capsys):
    """A 10-minute primer made by code: --audio is the 8 s lead-in and the asked 3 s (and the
    release tail), --audio-full the whole piece; a model that always wants to stop still writes
    3 s, and with --allow-end it stops and the CLI says so."""
    primer = tmp_path / "whole piece.mid"
    primer.write_bytes(midi_bytes(piano_performance(seed=12, seconds=600)))
    out, seam, whole = tmp_path / "c.mid", tmp_path / "seam.wav", tmp_path / "whole.wav"
    args = ["generate", str(primer), "-o", str(out), "--audio", str(seam), "--audio-full", str(whole),
            "--checkpoint", str(eos_checkpoint), "--length", "3", "--seed", "1", "--soundfont", SOUNDFONT, "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the last 8.0 s of the primer, then the continuation" in printed and "the whole piece" in printed
    info = soundfile.info(str(seam))
    assert 8 + 3 - 0.01 <= info.frames / info.samplerate <= 8 + 3 + 4.1
    assert soundfile.info(str(whole)).frames / 44100 >= 595 + 3
    assert pretty_midi.PrettyMIDI(str(out)).get_end_time() > 2.0  # the continuation, as long as asked
    lead = tmp_path / "lead.wav"
    assert main([*args[:4], "--audio", str(lead), "--lead-in", "2", *args[8:]]) == 0
    assert 2 + 3 - 0.01 <= soundfile.info(str(lead)).frames / 44100 <= 2 + 3 + 4.1
    capsys.readouterr()
    assert main([*args[:4], *args[8:], "--allow-end"]) == 0
    assert "The model ended the piece after 0.0 s." in capsys.readouterr().out


def test_a_band_primer_says_the_continuation_is_piano(tmp_path, random_checkpoint, capsys):
    from midi_fixtures import band_with_drums

    primer = tmp_path / "band.mid"
    primer.write_bytes(midi_bytes(band_with_drums(seconds=10)))
    assert main(["generate", str(primer), "-o", str(tmp_path / "b.mid"), "--checkpoint", str(random_checkpoint),
                 "--length", "2", "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "piano" in line]
    assert len(lines) == 1 and "drums" in lines[0] and "continuation is piano" in lines[0]
    full = pretty_midi.PrettyMIDI(str(tmp_path / "b.full.mid"))
    assert any(i.is_drum for i in full.instruments) and {33, 48, 80} <= {i.program for i in full.instruments}
