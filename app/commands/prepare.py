"""`perceiver-music prepare SOURCE... -o DATA_DIR`: MIDI folders or the music21 corpus to token shards."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="a folder of MIDI files (searched recursively), or 'music21' for the corpus in the music21 wheel")
    parser.add_argument("-o", "--out", required=True, metavar="DATA_DIR", help="where the shards go")
    parser.add_argument("--workers", type=int, default=0, help="parallel workers (default: all cores)")
    parser.add_argument("--no-convert", action="store_true",
                        help="music21: use only works already converted into the cache (converting all takes "
                             "about an hour on two cores; a later run adds the rest)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from perceiver_music.data import prepare

    stats = prepare(args.sources, args.out, workers=args.workers, progress=not args.quiet,
                    convert_music21=not args.no_convert)
    for split in ("train", "val", "test"):
        print(f"{split:5s}: {stats.works.get(split, 0):6,} works {stats.notes.get(split, 0):10,} notes "
              f"{stats.tokens.get(split, 0):11,} tokens {stats.hours.get(split, 0):8.2f} hours")
    if stats.duplicates:
        print(f"skipped {stats.duplicates} duplicate file(s) (same content as another)")
    if stats.failed:
        print(f"skipped {stats.failed} file(s) that could not be used; reasons in {args.out}/failed.jsonl")
    return 0
