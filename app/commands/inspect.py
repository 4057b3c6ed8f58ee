"""`perceiver-music inspect FILE.mid`: what the tokenizer sees in a MIDI file."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", help="a .mid/.midi file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from perceiver_music.tokenizer import encode_with_report

    _, report = encode_with_report(args.midi)
    info = report.to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    minutes, seconds = divmod(report.duration_seconds, 60)
    programs = ", ".join(str(p) for p in report.programs) or "none"
    print(f"file:        {args.midi}")
    print(f"duration:    {int(minutes)}:{seconds:05.2f}")
    print(f"notes:       {report.notes_kept:,} kept of {report.notes_in:,}")
    print(f"dropped:     {report.drum_notes_dropped:,} drum notes (channel 10)")
    print(f"programs:    {programs} in {report.instruments} instrument(s), merged to piano")
    print(f"pedal:       {'sustain folded into durations' if report.had_sustain_pedal else 'none'}")
    if report.restrikes_trimmed:
        print(f"re-strikes:  {report.restrikes_trimmed} notes end where the same key is struck again")
    print(f"tokens:      {report.tokens:,}")
    return 0
