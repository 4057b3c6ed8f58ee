"""Convert the music21 corpus to cached MIDI files only (the slow part of `prepare music21`).

About a second per work: run it where there are many cores, then bring the cache folder back
(`perceiver_music.music21_corpus.default_cache_dir()`); `prepare music21` then only encodes.
usage: python scripts/convert_music21.py [--workers N]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.data import music21_works  # noqa: E402
from perceiver_music.music21_corpus import default_cache_dir  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--workers", type=int, default=os.cpu_count())
args = parser.parse_args()
started = time.time()
works, failed = music21_works(args.workers, progress=False)
print(json.dumps({"works": len(works), "failed": len(failed), "seconds": round(time.time() - started, 1),
                  "cache": str(default_cache_dir())}))
