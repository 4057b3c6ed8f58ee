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
    parser.add_argument("--group", action="append", default=[], metavar="FOLDER=RULE",
                        help="split the files of FOLDER (one of the sources) by group instead of one by one, so "
                             "that no group is in two splits: RULE 'parent' makes a file's own folder its group "
                             "(several performances of one piece in one folder, as in ASAP), a number N its first "
                             "N folders under FOLDER (e.g. 1 for one folder per composer); repeat per folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from perceiver_music.data import prepare
    from perceiver_music.errors import DataError

    groups = {}
    for rule in args.group:
        folder, sep, how = rule.rpartition("=")
        if not sep or not folder:
            raise DataError(f"--group wants FOLDER=RULE (RULE 'parent' or a depth), got {rule!r}")
        groups[folder] = how
    stats = prepare(args.sources, args.out, workers=args.workers, progress=not args.quiet,
                    convert_music21=not args.no_convert, groups=groups)
    for split in ("train", "val", "test"):
        print(f"{split:5s}: {stats.works.get(split, 0):6,} works {stats.notes.get(split, 0):10,} notes "
              f"{stats.tokens.get(split, 0):11,} tokens {stats.hours.get(split, 0):8.2f} hours")
    if len(stats.by_source) > 1:
        for source, splits in stats.by_source.items():
            cells = "  ".join(f"{split} {row['groups']:,} works/{row['files']:,} files {row['tokens']:,} tokens "
                              f"{row['hours']:.1f} h" for split, row in splits.items())
            print(f"  {source}: {cells}")
    if stats.duplicates:
        print(f"skipped {stats.duplicates} duplicate file(s) (same content as another)")
    if stats.failed:
        print(f"skipped {stats.failed} file(s) that could not be used; reasons in {args.out}/failed.jsonl")
    return 0
