"""Corpora to token shards, and training crops from them.

A prepared DATA_DIR holds, for each split (train / val / test):
  `{split}.bin`        uint16 ids: every work as [SOS, ids..., EOS], packed end to end, so a
                       training crop of any length fills all its latents with real targets;
  `{split}.index.json` one entry per work: name, offset, length, notes, seconds;
plus `meta.json` (format and vocabulary), `stats.json` (works, notes, tokens, hours per split),
`failed.jsonl` (files skipped and why) and `.cache/` (tokens per file content, so that a re-run
only encodes new files). Files are split by a hash of their *group*: deterministic, and a group
never lands in two splits. A file is its own group unless its source folder was given a group
rule (`--group FOLDER=parent` or `=N`), so that several performances of one piece (ASAP keeps
them in one folder per piece) stay together and held-out figures are on unseen music.
Every index entry also names its `source` (the folder's name, or `music21`), so that training
can weigh corpora (`train.source_weights`) and `stats.json` reports each corpus by split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .atomic_io import atomic_path, ensure_output_dir, write_bytes, write_json
from .errors import DataError, UserFacingError
from .tokenizer import EOS, SOS, VOCAB_SIZE

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MIDI_SUFFIXES = {".mid", ".midi", ".kar", ".smf"}
MUSIC21 = "music21"
VAL_PERCENT, TEST_PERCENT = 3, 3


def _work_hash(work: str) -> int:
    return int(hashlib.sha1(work.encode("utf-8")).hexdigest()[:8], 16)


def split_of(work: str) -> str:
    """Deterministic split by the work's name: 3 % test, 3 % val, the rest train."""
    bucket = _work_hash(work) % 100
    if bucket < TEST_PERCENT:
        return "test"
    if bucket < TEST_PERCENT + VAL_PERCENT:
        return "val"
    return "train"


@dataclass(frozen=True)
class Work:
    name: str  # unique and stable: "music21:bach/bwv66.6.mxl" or "<folder>/<relative path>"
    path: Path  # a MIDI file
    group: str = ""  # what the split is decided by; "" = the name itself

    @property
    def split_key(self) -> str:
        return self.group or self.name


def source_of(work_name: str) -> str:
    """The corpus a work came from: 'music21' or the name of the folder it was found in."""
    if work_name.startswith(MUSIC21 + ":"):
        return MUSIC21
    return work_name.split("/", 1)[0]


def parse_group_rule(rule: str) -> int | None:
    """'parent' (a file's own folder is its group) -> None; 'N' (the first N folders under the
    source) -> N. See group_of."""
    if rule == "parent":
        return None
    if rule.isdigit() and int(rule) > 0:
        return int(rule)
    raise DataError(f"a group rule is 'parent' or a folder depth of 1 or more, not {rule!r}")


def group_of(label: str, relative: Path, rule: str | None) -> str:
    """The split group of a file at `relative` under source folder `label`, by a group rule:
    'parent' takes the file's own folder (ASAP: asap/Chopin/Etudes_op_10/1), 'N' its first N
    folders (a file less deep takes all its folders), None the file alone."""
    if rule is None:
        return ""
    depth = parse_group_rule(rule)
    folders = relative.parent.parts
    if depth is not None:
        folders = folders[:depth]
    return "/".join((label, *folders)) + "/"


def works_in_folder(folder: Path, group: str | None = None) -> list[Work]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of MIDI files (nor '{MUSIC21}')")
    label = folder.resolve().name
    works = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in MIDI_SUFFIXES and path.is_file():
            relative = path.relative_to(folder)
            works.append(Work(f"{label}/{relative.as_posix()}", path, group_of(label, relative, group)))
    return works


def music21_works(workers: int, progress: bool, convert: bool = True) -> tuple[list[Work], list[dict]]:
    """The music21 corpus, converted to MIDI once into a cache (about 1 s per work).

    `convert=False` takes only the files already in the cache."""
    from . import music21_corpus

    cache = music21_corpus.default_cache_dir()
    files = music21_corpus.corpus_files()
    if not convert:
        files = [f for f in files if music21_corpus.is_converted(f, cache)]
    files.sort(key=lambda f: -f.path.stat().st_size)  # big opus files first: a short tail
    works, failed = [], []
    records = _parallel_map(_convert_music21_file, [(f, cache) for f in files], workers, progress, "music21 → MIDI")
    for record in records:
        for entry in record["works"]:
            works.append(Work(f"music21:{entry['work']}", cache / "midi" / entry["midi"]))
        failed.extend({"work": f"music21:{f['work']}", "reason": f["reason"]} for f in record["failed"])
    works.sort(key=lambda w: w.name)
    return works, failed


def _convert_music21_file(args):
    from .music21_corpus import convert_file

    return convert_file(*args)


def _parallel_map(function: Callable, items: list, workers: int, progress: bool, label: str) -> Iterator:
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=label, unit="file", disable=not progress, dynamic_ncols=True)
    if workers <= 1:
        for item in items:
            yield function(item)
            bar.update()
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        with context.Pool(workers, maxtasksperchild=200) as pool:
            for result in pool.imap_unordered(function, items, chunksize=4):
                yield result
                bar.update()
    bar.close()


def _encode_work(args) -> dict:
    """One file to tokens, through the content-addressed cache. Runs in a worker process."""
    work, cache_dir = args
    try:
        data = work.path.read_bytes()
    except OSError as error:
        return {"work": work.name, "error": f"cannot read: {error.strerror or error}"}
    digest = hashlib.sha1(data).hexdigest()
    cached = cache_dir / f"{digest}.json"
    if cached.exists():
        record = json.loads(cached.read_text())
    else:
        from .tokenizer import encode_with_report

        try:
            ids, report = encode_with_report(data, name=work.path.name)
            np.save(cache_dir / f"{digest}.tmp.npy", np.asarray(ids, dtype=np.uint16))
            os.replace(cache_dir / f"{digest}.tmp.npy", cache_dir / f"{digest}.npy")
            record = {"notes": report.notes_kept, "seconds": report.duration_seconds, "tokens": len(ids)}
        except UserFacingError as error:
            record = {"error": str(error)}
        except Exception as error:  # a file that breaks a library: skip it, say why
            record = {"error": f"unexpected {type(error).__name__}: {error}"[:300]}
        write_bytes(cached, json.dumps(record).encode(), fsync=False)
    return {"work": work.name, "digest": digest, **record}


@dataclass
class PrepareStats:
    works: dict = field(default_factory=dict)  # files (performances) per split
    notes: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    hours: dict = field(default_factory=dict)
    failed: int = 0
    duplicates: int = 0
    sources: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)  # source -> group rule
    by_source: dict = field(default_factory=dict)  # source -> split -> files, groups, notes, tokens, hours

    def to_dict(self) -> dict:
        return {
            "works": self.works,
            "notes": self.notes,
            "tokens": self.tokens,
            "hours": self.hours,
            "failed": self.failed,
            "duplicates": self.duplicates,
            "sources": self.sources,
            "groups": self.groups,
            "by_source": self.by_source,
        }


def prepare(sources: Iterable[str], out_dir: str | os.PathLike, workers: int = 0, progress: bool = True,
            convert_music21: bool = True, groups: dict[str, str] | None = None) -> PrepareStats:
    """Folders of MIDI (recursive) and/or 'music21' to token shards in `out_dir`.

    `groups` maps a source folder (as given in `sources`) to its group rule (see group_of)."""
    out = ensure_output_dir(out_dir)
    cache_dir = ensure_output_dir(out / ".cache")
    workers = workers or max(1, (os.cpu_count() or 1))
    sources = list(sources)
    groups = dict(groups or {})
    for folder, rule in groups.items():
        if folder not in sources:
            raise DataError(f"--group names {folder}, which is not one of the sources")
        if folder == MUSIC21:
            raise DataError("music21 works are split one by one; a group rule is for MIDI folders")
        parse_group_rule(rule)
    works: list[Work] = []
    failed: list[dict] = []
    for source in sources:
        if source == MUSIC21:
            found, broken = music21_works(workers, progress, convert=convert_music21)
            works += found
            failed += broken
        else:
            works += works_in_folder(Path(source), groups.get(source))
    if not works:
        raise DataError(f"no MIDI files found in {', '.join(sources)}")
    names = [w.name for w in works]
    if len(set(names)) != len(names):
        raise DataError("two sources give works the same name; use folders with different names")

    results = list(_parallel_map(_encode_work, [(w, cache_dir) for w in works], workers, progress, "MIDI → tokens"))
    results.sort(key=lambda r: r["work"])
    failed += [{"work": r["work"], "reason": r["error"]} for r in results if "error" in r]
    stats = PrepareStats(sources=sources, failed=len(failed), groups=groups)
    split_key = {w.name: w.split_key for w in works}
    seen_digests: set[str] = set()
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for result in results:
        if "error" in result:
            continue
        if result["digest"] in seen_digests:  # the same file twice would leak across splits
            stats.duplicates += 1
            continue
        seen_digests.add(result["digest"])
        result["group"] = split_key[result["work"]]
        by_split[split_of(result["group"])].append(result)

    _hold_out_one_each(by_split)
    for split, entries in by_split.items():
        _write_split(out, cache_dir, split, entries, stats)
    stats.by_source = _stats_by_source(by_split)
    write_json(out / "meta.json", {"format": FORMAT_VERSION, "vocab_size": VOCAB_SIZE, "layout": "SOS ids EOS, packed"})
    write_json(out / "stats.json", stats.to_dict())
    lines = "".join(json.dumps(f) + "\n" for f in sorted(failed, key=lambda f: f["work"]))
    write_bytes(out / "failed.jsonl", lines.encode())
    return stats


def _hold_out_one_each(by_split: dict[str, list[dict]]) -> None:
    """A small corpus (a user's fine-tuning set, a 50-file corpus beside larger ones) may hash no
    group into val or test; then its training group with the smallest hash moves there, whole,
    so that every corpus of four groups or more is evaluated."""
    for source in sorted({source_of(r["work"]) for r in by_split["train"]}):
        for split in ("val", "test"):
            if any(source_of(r["work"]) == source for r in by_split[split]):
                continue
            groups = {r["group"] for r in by_split["train"] if source_of(r["work"]) == source}
            if len(groups) >= 4:
                chosen = min(groups, key=_work_hash)
                by_split[split] += [r for r in by_split["train"] if r["group"] == chosen]
                by_split[split].sort(key=lambda r: r["work"])
                by_split["train"] = [r for r in by_split["train"] if r["group"] != chosen]


def _stats_by_source(by_split: dict[str, list[dict]]) -> dict:
    table: dict = {}
    for split, entries in by_split.items():
        for entry in entries:
            row = table.setdefault(source_of(entry["work"]), {}).setdefault(
                split, {"files": 0, "groups": set(), "notes": 0, "tokens": 0, "seconds": 0.0})
            row["files"] += 1
            row["groups"].add(entry["group"])
            row["notes"] += entry["notes"]
            row["tokens"] += entry["tokens"] + 2  # with its SOS and EOS, as in the shard
            row["seconds"] += entry["seconds"]
    for splits in table.values():
        for split, row in splits.items():
            splits[split] = {"files": row["files"], "groups": len(row["groups"]), "notes": row["notes"],
                             "tokens": row["tokens"], "hours": round(row["seconds"] / 3600, 2)}
    return dict(sorted(table.items()))


def _write_split(out: Path, cache_dir: Path, split: str, entries: list[dict], stats: PrepareStats) -> None:
    index = []
    offset = 0
    with atomic_path(out / f"{split}.bin") as tmp, open(tmp, "wb") as f:
        for entry in entries:
            ids = np.load(cache_dir / f"{entry['digest']}.npy")
            block = np.concatenate([[SOS], ids, [EOS]]).astype(np.uint16)
            f.write(block.tobytes())
            index.append({"work": entry["work"], "source": source_of(entry["work"]), "group": entry["group"],
                          "offset": offset, "length": len(block), "notes": entry["notes"],
                          "seconds": entry["seconds"]})
            offset += len(block)
    write_json(out / f"{split}.index.json", index)
    stats.works[split] = len(index)
    stats.tokens[split] = offset
    stats.notes[split] = sum(e["notes"] for e in index)
    stats.hours[split] = round(sum(e["seconds"] for e in index) / 3600, 2)


# ---- reading ---------------------------------------------------------------------------------


class TokenData:
    """A prepared DATA_DIR, memory-mapped."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise DataError(f"{self.root} is not a prepared data folder (no meta.json); run `perceiver-music prepare`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("vocab_size") != VOCAB_SIZE:
            raise DataError(f"{self.root} was prepared by another version; prepare it again")

    def tokens(self, split: str) -> np.ndarray:
        path = self.root / f"{split}.bin"
        if not path.exists() or path.stat().st_size == 0:
            return np.zeros(0, dtype=np.uint16)
        return np.memmap(path, dtype=np.uint16, mode="r")

    def index(self, split: str) -> list[dict]:
        path = self.root / f"{split}.index.json"
        return json.loads(path.read_text()) if path.exists() else []

    def work_spans(self, split: str) -> np.ndarray:
        """(offset, length) of every work of a split, as an int64 array of shape (n, 2)."""
        spans = [(e["offset"], e["length"]) for e in self.index(split)]
        return np.asarray(spans, dtype=np.int64).reshape(-1, 2)

    def source_spans(self, split: str) -> dict[str, tuple[int, int, np.ndarray]]:
        """Each source's region of a split's stream: source -> (start, end, work spans relative
        to start). Works are packed sorted by name, so a source's works are contiguous."""
        regions: dict[str, list] = {}
        for entry in self.index(split):
            regions.setdefault(entry.get("source") or source_of(entry["work"]), []).append(
                (entry["offset"], entry["length"]))
        out = {}
        for source, spans in regions.items():
            spans = np.asarray(spans, dtype=np.int64)
            start, end = int(spans[:, 0].min()), int((spans[:, 0] + spans[:, 1]).max())
            if end - start != int(spans[:, 1].sum()):
                raise DataError(f"{self.root}: the works of {source} are not contiguous; prepare it again")
            out[source] = (start, end, spans - np.array([start, 0]))
        return out

    def works(self, split: str) -> Iterator[tuple[str, np.ndarray]]:
        """Each work of a split as (name, ids with its SOS and EOS)."""
        tokens = self.tokens(split)
        for entry in self.index(split):
            yield entry["work"], np.asarray(tokens[entry["offset"] : entry["offset"] + entry["length"]])


def _crop_start(stream_length: int, raw_length: int, rng: np.random.Generator,
                works: np.ndarray | None, long_share: float) -> int:
    """Uniform over the packed stream; or, with probability `long_share`, inside one work long
    enough to hold the whole crop, so that long context is context from the same piece."""
    if long_share > 0 and works is not None and rng.random() < long_share:
        fits = works[works[:, 1] >= raw_length]
        if len(fits):
            room = (fits[:, 1] - raw_length + 1).astype(np.float64)
            i = int(rng.choice(len(fits), p=room / room.sum()))
            return int(fits[i, 0] + rng.integers(0, int(room[i])))
    return int(rng.integers(0, stream_length - raw_length + 1))


def sample_crop(
    stream: np.ndarray, length: int, rng: np.random.Generator, augment=None, max_tries: int = 8,
    works: np.ndarray | None = None, long_share: float = 0.0,
) -> np.ndarray:
    """A random crop of `length` ids from a packed stream, augmented when `augment` is given.

    `works` ((offset, length) rows, from TokenData.work_spans) and `long_share` let a share of
    the crops lie wholly inside long works (see _crop_start). Augmentation changes how many ids
    the music takes (tempo, added velocities), so it works on a longer raw crop and keeps the
    first `length` ids of the result: the end of the raw crop, where notes are cut off, is
    never used.
    """
    if len(stream) < length:
        raise DataError(f"the data has {len(stream):,} tokens; a crop needs {length:,}")
    if augment is None or augment.is_identity:
        start = _crop_start(len(stream), length, rng, works, long_share)
        return np.asarray(stream[start : start + length], dtype=np.int64)
    from .augment import augment_ids

    margin = 1.5
    for _ in range(max_tries):
        raw_length = min(len(stream), int(length * margin) + 64)
        start = _crop_start(len(stream), raw_length, rng, works, long_share)
        out = augment_ids(np.asarray(stream[start : start + raw_length]), rng, augment)
        if len(out) >= length:
            return np.asarray(out[:length], dtype=np.int64)
        margin *= 1.5
    # Rare: augmentation kept shrinking the music (e.g. a transposition out of range). Skip it.
    start = int(rng.integers(0, len(stream) - length + 1))
    return np.asarray(stream[start : start + length], dtype=np.int64)
