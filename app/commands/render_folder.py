"""`perceiver-music render-folder IN_DIR OUT_DIR`: every MIDI file under IN_DIR to audio, in parallel.

OUT_DIR mirrors IN_DIR (`a/song.mid` gives `a/song.wav`). The same manifest and resume rules as
`batch` (perceiver_music/batch.py): a re-run skips what is done; exit code 0 when every file
rendered, 1 when some failed (see report.json), 2 for a user error.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_dir", metavar="IN_DIR", help="a folder of MIDI files (searched recursively)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the audio goes, mirroring IN_DIR")
    parser.add_argument("--format", choices=["wav", "flac"], default="wav", help="audio format (default wav)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                        help="rendering processes (default: half the CPU cores; 0: render in this process)")
    parser.add_argument("--soundfont",
                        help="a .sf2 file (default: $PERCEIVER_MUSIC_SOUNDFONT, else FluidR3_GM if installed, "
                             "else TimGM6mb)")
    parser.add_argument("--sample-rate", type=int, default=44100, help="samples per second (default 44100)")
    parser.add_argument("--shard", metavar="K/N", help="do only the K-th of N parts of the folder (1-based)")
    parser.add_argument("--skip-failed", action="store_true",
                        help="do not retry files that failed in an earlier run with the same settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from perceiver_music.batch import BatchOptions, parse_shard, run_render_folder, summary_lines

    report = run_render_folder(BatchOptions(
        in_dir=args.in_dir,
        out_dir=args.out_dir,
        render=args.format,
        soundfont=args.soundfont,
        sample_rate=args.sample_rate,
        workers=args.workers,
        shard=parse_shard(args.shard),
        skip_failed=args.skip_failed,
        progress=not args.quiet,
    ))
    for line in summary_lines(report):
        print(line)
    return 1 if report["counts"]["failed"] else 0
