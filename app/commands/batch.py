"""`perceiver-music batch IN_DIR OUT_DIR`: continue every MIDI file under IN_DIR into OUT_DIR.

OUT_DIR mirrors IN_DIR: `a/song.mid` gives `a/song.mid` (the continuation), `a/song.full.mid`
(primer window + continuation) and `a/song.wav` (unless --render none); with --variations N,
`a/song-1.mid` ... `a/song-N.*`. OUT_DIR/manifest.jsonl records every file (done or failed, why,
outputs, seed, provenance); a re-run skips what is done and redoes the rest, also after a
kill -9. Exit code 0: every file done; 1: some failed (see report.json); 2: a user error.
Many machines: `--shard K/N` on each (a Slurm array: --shard $((SLURM_ARRAY_TASK_ID+1))/N).
The logic lives in perceiver_music/batch.py.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.commands.generate import add_generation_arguments

    parser.add_argument("in_dir", metavar="IN_DIR", help="a folder of MIDI files (searched recursively)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the outputs go, mirroring IN_DIR")
    parser.add_argument("--render", choices=["wav", "flac", "none"], default="wav",
                        help="audio of each full piece (default wav), or none")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes rendering audio while generation goes on (default 1; 0: render in turn)")
    parser.add_argument("--files-per-batch", type=int, metavar="N",
                        help="files whose primers go through the model together (default: 8 on a GPU, 1 on a "
                             "CPU); primers of one batch are cut to its shortest, so files are grouped by length")
    parser.add_argument("--shard", metavar="K/N", help="do only the K-th of N parts of the folder (1-based)")
    parser.add_argument("--skip-failed", action="store_true",
                        help="do not retry files that failed in an earlier run with the same settings")
    parser.add_argument("--lead-in", type=float, metavar="SECONDS",
                        help="render only the seam: the primer's last SECONDS, then the continuation "
                             "(default: the whole piece)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_generation_arguments(parser)
    for action in parser._actions:
        if action.dest == "seed":
            action.help = ("the base seed: each file's seed comes from it and the file's path (default: the "
                           "one in OUT_DIR's manifest, else a random one)")


def run(args: argparse.Namespace) -> int:
    from app.commands.generate import request_from_args
    from perceiver_music.batch import BatchOptions, parse_shard, run_batch, summary_lines

    options = BatchOptions(
        in_dir=args.in_dir,
        out_dir=args.out_dir,
        request=request_from_args(args, seed=None),
        render=None if args.render == "none" else args.render,
        soundfont=args.soundfont,
        sample_rate=args.sample_rate,
        workers=args.workers,
        shard=parse_shard(args.shard),
        seed=args.seed,
        skip_failed=args.skip_failed,
        files_per_batch=args.files_per_batch,
        progress=not args.quiet,
    )
    report = run_batch(options)
    for line in summary_lines(report):
        print(line)
    return 1 if report["counts"]["failed"] else 0
