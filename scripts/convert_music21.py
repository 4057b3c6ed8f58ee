"""Convert the music21 corpus to cached MIDI files only (the slow part of `prepare music21`).

About a second per work: run it where there are many cores, then bring the cache folder back
(`perceiver_music.music21_corpus.default_cache_dir()`); `prepare music21 --no-convert` then only
encodes what is cached.

`--sample P` converts a fair sample where time is short (a 2-core machine): every corpus file
whose name hashes into the val or test split, so held-out figures stay comparable, plus P % of
the other files chosen by a hash of their name (not the largest first, which would be mostly
folk-tune collections).

usage: python scripts/convert_music21.py [--workers N] [--sample P]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.data import _convert_music21_file, _parallel_map, _work_hash, music21_works, split_of  # noqa: E402
from perceiver_music.music21_corpus import corpus_files, default_cache_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--sample", type=float, default=100.0, help="percent of the train-split files to convert")
    args = parser.parse_args()
    started = time.time()
    if args.sample >= 100:
        works, failed = music21_works(args.workers, progress=False)
        print(json.dumps({"works": len(works), "failed": len(failed), "seconds": round(time.time() - started, 1),
                          "cache": str(default_cache_dir())}))
        return

    cache = default_cache_dir()
    chosen = [f for f in corpus_files()
              if split_of(f"music21:{f.rel}") != "train" or _work_hash("sample:" + f.rel) % 10_000 < args.sample * 100]
    chosen.sort(key=lambda f: split_of(f"music21:{f.rel}") == "train")  # held-out files first
    records = list(_parallel_map(_convert_music21_file, [(f, cache) for f in chosen], args.workers, True, "music21 → MIDI"))
    print(json.dumps({"files": len(chosen), "works": sum(len(r["works"]) for r in records),
                      "failed": sum(len(r["failed"]) for r in records), "seconds": round(time.time() - started, 1),
                      "cache": str(cache)}))


if __name__ == "__main__":  # spawned workers import this file
    main()
