"""Twenty-odd malformed inputs, made by code: each must give exit code 2 and one line."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import mido


def _midi(messages, ticks_per_beat=480, extra_tracks=()) -> bytes:
    mid = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack(messages)
    mid.tracks.append(track)
    for t in extra_tracks:
        mid.tracks.append(mido.MidiTrack(t))
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


def _notes(count, channel=0, gap=120, tempo=500000):
    msgs = [mido.MetaMessage("set_tempo", tempo=tempo, time=0)]
    for i in range(count):
        pitch = 40 + (i * 7) % 48
        msgs.append(mido.Message("note_on", note=pitch, velocity=80, channel=channel, time=0 if i == 0 else gap))
        msgs.append(mido.Message("note_off", note=pitch, velocity=0, channel=channel, time=gap))
    return msgs


def valid_midi() -> bytes:
    return _midi(_notes(64))


def make_malformed(folder: Path) -> dict[str, Path]:
    """Write the malformed inputs into `folder`; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    good = valid_midi()
    files: dict[str, bytes] = {
        "empty.mid": b"",
        "text_renamed.mid": b"These are my lyrics, not a MIDI file.\n" * 20,
        "truncated.mid": good[: len(good) // 2],
        "header_cut.mid": good[:10],
        "no_notes.mid": _midi([mido.MetaMessage("set_tempo", tempo=500000, time=0),
                               mido.MetaMessage("end_of_track", time=960)]),
        "only_controls.mid": _midi([mido.Message("program_change", program=5, time=0),
                                    mido.Message("control_change", control=64, value=127, time=100),
                                    mido.Message("control_change", control=64, value=0, time=500)]),
        "drums_only.mid": _midi(_notes(50, channel=9)),
        "absurd_tempo_fast.mid": _midi(_notes(200, tempo=1)),
        "absurd_tempo_slow.mid": _midi(_notes(20, tempo=16_777_215)),
        "hundred_thousand_notes.mid": _midi(_notes(100_000, gap=1)),
        "ten_hours.mid": _midi(_notes(10, gap=480 * 1800)),
        "png_renamed.mid": b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(300)),
        "wav_renamed.mid": b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(200),
        "gzipped.mid": gzip.compress(good),
        "json.mid": b'{"notes": [60, 62, 64]}',
        "random_bytes.mid": bytes(rng.randrange(256) for _ in range(4096)),
        "garbage_after_header.mid": good[:14] + bytes(rng.randrange(256) for _ in range(500)),
        "track_length_lies.mid": good[:18] + (10**6).to_bytes(4, "big") + good[22:],
        "zero_division.mid": good[:12] + b"\x00\x00" + good[14:],
        "header_only.mid": good[:14],
    }
    paths = {}
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths[name] = path
    folder_named_mid = folder / "a_folder.mid"
    folder_named_mid.mkdir(exist_ok=True)
    paths["a_folder.mid"] = folder_named_mid
    paths["missing.mid"] = folder / "does_not_exist.mid"
    huge = folder / "huge.mid"
    with open(huge, "wb") as f:  # 20 MB, mostly a hole on disk
        f.write(b"MThd")
        f.seek(20 * 1024 * 1024)
        f.write(b"\0")
    paths["huge.mid"] = huge
    return paths


if __name__ == "__main__":  # write them for a manual try: python tests/malformed.py /tmp/bad
    import sys

    for name, path in make_malformed(Path(sys.argv[1])).items():
        print(path)
