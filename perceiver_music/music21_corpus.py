"""The music21 corpus as MIDI files: the default training data.

The music21 wheel ships ~3,200 score files (kern, MusicXML, ABC); some ABC files hold
hundreds of tunes. Converting them costs about a second per work, so each corpus file is
converted once into a cache folder of MIDI files, and later runs only read the cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic_io import write_bytes

# Roman-numeral analyses are harmony sketches, not music to learn from.
SKIPPED_SUFFIXES = {".rntxt"}


@dataclass(frozen=True)
class CorpusFile:
    path: Path  # absolute path inside the music21 package
    rel: str  # path relative to the corpus root: the stable name of the file


def corpus_files() -> list[CorpusFile]:
    from music21 import corpus

    root = Path(corpus.__file__).parent
    files = []
    for path in sorted(corpus.getCorePaths()):
        if path.suffix.lower() in SKIPPED_SUFFIXES:
            continue
        files.append(CorpusFile(path=Path(path), rel=Path(path).relative_to(root).as_posix()))
    return files


def default_cache_dir() -> Path:
    import music21

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "perceiver-music" / f"music21-{music21.__version__}"


def _score_to_midi_bytes(score) -> bytes:
    """music21's MIDI writer fails on about 8 % of the corpus: mostly ABC tunes whose time
    signatures sit twice in one part, some on repeats. Time signatures do not change the
    sound, so dropping them rescues the first kind; expanding repeats the second."""
    from music21 import meter, midi

    def write(stream) -> bytes:
        return midi.translate.music21ObjectToMidiFile(stream).writestr()

    try:
        return write(score)
    except Exception:
        pass
    for container in list(score.recurse(streamsOnly=True, includeSelf=True)):
        for signature in list(container.getElementsByClass(meter.TimeSignature)):
            container.remove(signature)
    try:
        return write(score)
    except Exception:
        return write(score.expandRepeats())


def _record_path(item: CorpusFile, cache_dir: Path) -> Path:
    return cache_dir / "records" / (item.rel + ".json")


def is_converted(item: CorpusFile, cache_dir: Path) -> bool:
    return _record_path(item, cache_dir).exists()


def convert_file(item: CorpusFile, cache_dir: Path) -> dict:
    """Convert one corpus file (one or many works) into cached MIDI files.

    Returns the file's record: the works written and the failures with their reason.
    A cached record is returned as is (delete the cache folder to convert everything again).
    """
    record_path = _record_path(item, cache_dir)
    if record_path.exists():
        return json.loads(record_path.read_text())

    from music21 import converter, stream

    record = {"file": item.rel, "works": [], "failed": []}
    try:
        parsed = converter.parse(item.path)
        scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    except Exception as error:  # a file music21 cannot read at all
        record["failed"].append({"work": item.rel, "reason": f"parse: {type(error).__name__}: {error}"[:200]})
        scores = []
    for index, score in enumerate(scores):
        work_id = item.rel if len(scores) == 1 else f"{item.rel}#{index}"
        try:
            data = _score_to_midi_bytes(score)
        except Exception as error:
            record["failed"].append({"work": work_id, "reason": f"{type(error).__name__}: {error}"[:200]})
            continue
        midi_rel = work_id.replace("#", "__") + ".mid"
        write_bytes(cache_dir / "midi" / midi_rel, data, fsync=False)
        record["works"].append({"work": work_id, "midi": midi_rel})
    write_bytes(record_path, json.dumps(record).encode(), fsync=False)
    return record
