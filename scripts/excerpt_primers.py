"""Write short excerpts of held-out real performances as example primers (assets/primers/).

Takes test-split works of the named corpora from a prepared DATA_DIR (so the shipped model never
trained on them), longest first, and writes the first `--seconds` of each as the model hears it
(one piano, pedal folded into note lengths). Only corpora whose licence allows redistribution
belong in the repository: see assets/primers/README.md.

usage: python scripts/excerpt_primers.py DATA_DIR --sources pop909,piano-midi-de,giantmidi-piano
       [--per-source 2] [--seconds 45] [-o assets/primers]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.data import TokenData, source_of  # noqa: E402
from perceiver_music.tokenizer import decode, to_midi_bytes, window_seconds  # noqa: E402


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--sources", required=True)
    parser.add_argument("--per-source", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("-o", "--out", default="assets/primers")
    args = parser.parse_args()

    data = TokenData(args.data)
    tokens = data.tokens("test")
    out = Path(args.out)
    written = []
    for source in args.sources.split(","):
        entries = [e for e in data.index("test") if (e.get("source") or source_of(e["work"])) == source
                   and e["seconds"] >= args.seconds + 10]
        for entry in sorted(entries, key=lambda e: -e["seconds"])[: args.per_source]:
            piece = decode(np.asarray(tokens[entry["offset"] : entry["offset"] + entry["length"]]))
            excerpt = window_seconds(piece, 0.0, args.seconds)
            name = f"{source}-{slug(Path(entry['work'].split('/', 1)[1]).with_suffix('').as_posix())}.mid"
            (out / name).write_bytes(to_midi_bytes(excerpt))
            written.append({"file": name, "work": entry["work"], "seconds": args.seconds,
                            "notes": len(excerpt.notes), "piece_seconds": round(entry["seconds"], 1)})
    print(json.dumps(written, indent=2))


if __name__ == "__main__":
    main()
