"""Whole folders of MIDI: continue every file (`run_batch`) or render every file (`run_render_folder`).

Both walk IN_DIR recursively (data.MIDI_SUFFIXES, any case) and mirror it into OUT_DIR: the
outputs of `IN_DIR/a/b/song.mid` lie in `OUT_DIR/a/b/` and are named after `song`:

  batch, 1 variation:   song.mid (the continuation), song.full.mid (primer window +
                        continuation), song.wav or song.flac (the full piece, unless render none)
  batch, N variations:  song-1.mid, song-1.full.mid, song-1.wav, ... song-N.*
  render-folder:        song.wav or song.flac

If two inputs would write the same output (`a.mid` and `a.midi`, or `a.mid` and `a.full.mid`;
compared without case), the first in sorted order wins and the other is recorded as failed.

The manifest, `OUT_DIR/manifest.jsonl`, holds one JSON line per attempt at a file: its status
(done or failed, with a one-line reason), its outputs, its seed, the settings key and a
provenance summary. A run skips a file whose latest line says done with the same settings and
whose outputs all exist; everything else is (re)done. Every output is written atomically (a
temp file, then os.replace), and a file's line is appended only once all its outputs are
written, so a kill -9 at any moment loses at most the files in flight: the next run redoes
them. Appends take an exclusive flock and go out as one write of one whole line; a torn last
line (a writer killed mid-write, a full disk) is cut off under the lock before the next append,
and unreadable lines are skipped when reading. Temp files left by a killed run are removed by
the next run, for the outputs of its own files only (other shards may be writing beside it).

Seeds: each file's seed is derived from the base seed (`--seed`) and its path relative to
IN_DIR, so a file gets the same seed whatever else is in the folder. With no base seed a run
takes the one recorded in the manifest (a resumed run keeps its seeds), else a random one.

Sharding: `shard=(K, N)` takes the files whose relative path hashes to K (1-based) of N: many
machines (a Slurm array, a Ray job) can split one folder, all writing into one OUT_DIR. Each
shard writes its own report (`report.json`, or `report-K-of-N.json`).

Generation stays in this process, one file at a time (its variations run as one batch on the
model); rendering goes to a pool of `workers` processes (0: render inline), so on a GPU the
next file generates while the last one renders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from .atomic_io import ensure_output_dir, write_bytes, write_json
from .errors import BadRequestError, DataError, UserFacingError

MANIFEST = "manifest.jsonl"
RENDER_FORMATS = ("wav", "flac")
# atomic_io's temp files: ".{name}.{8 random chars}.part{suffix}"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.part(\.[^/]*)?$")


# ---- finding files, shards, seeds, output names -------------------------------------------------


def is_temp_file(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


def list_midi_files(in_dir: str | os.PathLike, exclude: Iterable[str | os.PathLike] = (),
                    errors: list[str] | None = None) -> list[str]:
    """Relative POSIX paths of every MIDI file under in_dir, sorted; folders in `exclude` are skipped.

    Symlinked files count; symlinked folders are not followed. Folders that cannot be read are
    reported in `errors` (one line each).
    """
    from .data import MIDI_SUFFIXES

    in_dir = Path(in_dir)
    excluded = {os.path.realpath(p) for p in exclude}
    found = []

    def unreadable(error: OSError) -> None:
        if errors is not None:
            errors.append(f"cannot read {error.filename}: {error.strerror or error}")

    for root, dirs, files in os.walk(in_dir, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in excluded)
        for name in files:
            if os.path.splitext(name)[1].lower() in MIDI_SUFFIXES and not is_temp_file(name):
                path = Path(root, name)
                if path.is_file():
                    found.append(path.relative_to(in_dir).as_posix())
    return sorted(found)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' (1 <= K <= N) to (K, N); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise BadRequestError(f"--shard must look like K/N (e.g. 3/8), not {text!r}")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise BadRequestError(f"--shard K/N needs 1 <= K <= N, not {k}/{n}")
    return k, n


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def shard_of(rel: str, n: int) -> int:
    """The shard (1..n) a relative path belongs to: a hash, so stable and independent of the others."""
    return _hash64(rel) % n + 1


def file_seed(base_seed: int, rel: str) -> int:
    """A file's seed (0 <= seed < 2^63) from the base seed and its relative path alone."""
    return _hash64(f"{int(base_seed)}\x00{rel}") >> 1


def _stem(rel: str) -> str:
    return rel[: -len(os.path.splitext(rel)[1])] if os.path.splitext(rel)[1] else rel


def batch_outputs(rel: str, variations: int, audio: str | None) -> list[str]:
    """The outputs of one input under `batch` (relative to OUT_DIR); see the module docstring."""
    stem = _stem(rel)
    names = [stem] if variations == 1 else [f"{stem}-{i}" for i in range(1, variations + 1)]
    outputs = []
    for name in names:
        outputs += [f"{name}.mid", f"{name}.full.mid"] + ([f"{name}.{audio}"] if audio else [])
    return outputs


def render_outputs(rel: str, audio: str) -> list[str]:
    return [f"{_stem(rel)}.{audio}"]


def assign_outputs(rels: list[str], outputs_of: Callable[[str], list[str]]) -> tuple[dict, dict]:
    """Outputs per input, and conflicts: {rel: reason} for inputs that would overwrite another's.

    Decided over the whole folder (before sharding) in sorted order, so every shard agrees.
    """
    claimed: dict[str, str] = {}
    outputs: dict[str, list[str]] = {}
    conflicts: dict[str, str] = {}
    for rel in sorted(rels):
        mine = outputs_of(rel)
        keys = [o.casefold() for o in mine]
        clash = next((claimed[k] for k in keys if k in claimed), None)
        if clash is not None:
            conflicts[rel] = f"its outputs would overwrite those of {clash}"
            continue
        for key in keys:
            claimed[key] = rel
        outputs[rel] = mine
    return outputs, conflicts


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the manifest -------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _flock(fd: int):
    try:
        import fcntl
    except ImportError:  # not on POSIX: one process per OUT_DIR
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class Manifest:
    """OUT_DIR/manifest.jsonl: append-only, one line per attempt; the latest line per file counts."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / MANIFEST
        self._lock = threading.Lock()  # the threads of this process; flock for other processes
        self.repaired_bytes = 0  # a torn last line cut off (by this process)
        self.bad_lines = 0  # unreadable lines skipped by the last read

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserFacingError(f"cannot open the manifest {self.path}: {error.strerror or error}") from None

    def _cut_torn_tail(self, fd: int) -> None:
        """Under the lock: a last line without its newline is from a writer that died; cut it."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            chunk = os.pread(fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        os.ftruncate(fd, keep)
        self.repaired_bytes += size - keep

    def read(self) -> list[dict]:
        """Every readable record, in the order written (repairing a torn last line first)."""
        if not self.path.exists():
            return []
        with self._lock:
            fd = self._open()
            try:
                with _flock(fd):
                    self._cut_torn_tail(fd)
                    with open(fd, "rb", closefd=False) as f:
                        f.seek(0)
                        data = f.read()
            finally:
                os.close(fd)
        records, self.bad_lines = [], 0
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if isinstance(record, dict) and "path" in record and "status" in record:
                    records.append(record)
                    continue
            except ValueError:
                pass
            self.bad_lines += 1
        return records

    def latest(self, kind: str) -> dict[str, dict]:
        """The latest record of each file for one kind of job ("batch" or "render")."""
        return {r["path"]: r for r in self.read() if r.get("kind") == kind}

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            try:
                with _flock(fd):
                    self._cut_torn_tail(fd)
                    before = os.fstat(fd).st_size
                    try:
                        view = memoryview(line)
                        while view:
                            written = os.write(fd, view)
                            view = view[written:]
                        os.fsync(fd)
                    except OSError as error:
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, before)
                        raise UserFacingError(
                            f"cannot append to the manifest {self.path}: {error.strerror or error}"
                        ) from None
            finally:
                os.close(fd)


def is_done(record: dict | None, key: str, out_dir: Path) -> bool:
    return bool(
        record
        and record.get("status") == "done"
        and record.get("settings_key") == key
        and all((out_dir / o).is_file() for o in record.get("outputs", []))
    )


def remove_stale_temp_files(out_dir: Path, outputs: Iterable[str]) -> int:
    """Remove temp files a killed run left beside these outputs (only these: others may be live)."""
    by_folder: dict[Path, set[str]] = {}
    for output in outputs:
        path = out_dir / output
        by_folder.setdefault(path.parent, set()).add(path.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            match = _TEMP_NAME.match(entry)
            if match and match["name"] in names:
                with contextlib.suppress(OSError):
                    os.unlink(folder / entry)
                    removed += 1
    return removed


# ---- rendering in a pool ------------------------------------------------------------------------


def _init_render_worker(threads: int) -> None:
    import signal

    from . import render

    render.CPU_CORES = threads  # several synths side by side: fewer threads each
    # Ctrl-C is for the main process, which stops handing out work; a render in flight finishes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def render_to_file(source: Any, out_path: str, soundfont: str | None, sample_rate: int, fmt: str) -> dict:
    """Render MIDI (a path or bytes) and write the audio atomically; runs in a pool worker."""
    from .render import duration_seconds, render, write_audio

    started = time.perf_counter()
    audio = render(source, soundfont=soundfont, sample_rate=sample_rate)
    write_audio(out_path, audio, sample_rate, format=fmt)
    return {"audio_seconds": duration_seconds(audio, sample_rate), "render_s": time.perf_counter() - started}


class _InlineExecutor:
    """workers=0: run each job now, in this thread, behind the same Future interface."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:  # noqa: BLE001 - handed to the future like a pool would
            future.set_exception(error)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _render_pool(workers: int):
    if workers <= 0:
        return _InlineExecutor()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, min(4, (os.cpu_count() or 1) // workers))
    # spawn, not fork: this process runs torch's thread pools, which do not survive a fork.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_render_worker, initargs=(threads,))


class RenderPool:
    """A process pool that starts lazily and starts again if a worker dies (a crash in fluidsynth)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = None

    def submit(self, fn, *args) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        if self._executor is None:
            self._executor = _render_pool(self.workers)
        try:
            return self._executor.submit(fn, *args)
        except BrokenProcessPool:  # the futures in flight fail (and are retried by the next run)
            self._executor.shutdown(wait=False)
            self._executor = _render_pool(self.workers)
            return self._executor.submit(fn, *args)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)


def _reason(error: BaseException) -> str:
    if isinstance(error, UserFacingError):
        return str(error)
    text = " ".join(str(error).split()) or "no message"
    return f"internal error: {type(error).__name__}: {text}"


# ---- one run --------------------------------------------------------------------------------------


@dataclass
class BatchOptions:
    in_dir: str | os.PathLike
    out_dir: str | os.PathLike
    request: Any = None  # engine.ContinueRequest: the generation settings (batch only)
    render: str | None = "wav"  # "wav", "flac" or None (batch); render-folder needs a format
    soundfont: str | os.PathLike | None = None
    sample_rate: int = 44100
    workers: int = 1
    shard: tuple[int, int] | None = None
    seed: int | None = None  # the base seed (batch)
    skip_failed: bool = False  # do not retry files whose latest attempt failed with these settings
    files_per_batch: int | None = None  # files generated together; None: 8 on a GPU, 1 on a CPU
    progress: bool = True  # a tqdm bar on stderr


@dataclass
class _Run:
    kind: str
    options: BatchOptions
    in_dir: Path
    out_dir: Path
    manifest: Manifest
    key: str
    settings: dict
    base_seed: int | None = None
    started: float = field(default_factory=time.monotonic)
    counts: dict = field(default_factory=lambda: {"files": 0, "done": 0, "skipped": 0, "failed": 0,
                                                   "other_shards": 0})
    conflicts: dict = field(default_factory=dict)  # rel -> why it cannot be written
    failures: list = field(default_factory=list)
    totals: dict = field(default_factory=lambda: {"new_tokens": 0, "sampling_s": 0.0, "generate_s": 0.0,
                                                   "render_s": 0.0, "audio_seconds": 0.0,
                                                   "seconds_of_music": 0.0, "model_load_s": 0.0})
    notes: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    bar: Any = None

    def record(self, rel: str, status: str, *, reason: str | None = None, outputs: list[str] = (),
               seed: int | None = None, provenance: dict | None = None, elapsed: float | None = None) -> None:
        record = {
            "path": rel, "kind": self.kind, "status": status, "reason": reason, "outputs": list(outputs),
            "seed": seed, "base_seed": self.base_seed, "settings_key": self.key, "time": _now(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "shard": f"{self.options.shard[0]}/{self.options.shard[1]}" if self.options.shard else None,
        }
        if provenance is not None:
            record["provenance"] = provenance
        if elapsed is not None:
            record["elapsed_s"] = round(elapsed, 3)
        self.manifest.append(record)
        with self.lock:
            self.counts[status] += 1
            if status == "failed":
                self.failures.append({"path": rel, "reason": reason})
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(self._postfix(), refresh=False)

    def _postfix(self) -> dict:
        postfix = {"failed": self.counts["failed"]}
        if self.totals["sampling_s"] > 0:
            postfix["tok/s"] = f"{self.totals['new_tokens'] / self.totals['sampling_s']:.0f}"
        return postfix

    def report(self, interrupted: bool = False) -> dict:
        t = self.totals
        return {
            "kind": self.kind,
            "in_dir": str(self.in_dir),
            "out_dir": str(self.out_dir),
            "shard": list(self.options.shard) if self.options.shard else None,
            "base_seed": self.base_seed,
            "settings": self.settings,
            "settings_key": self.key,
            "counts": dict(self.counts),
            "failures": list(self.failures),
            "timings": {
                "wall_s": round(time.monotonic() - self.started, 3),
                "model_load_s": round(t["model_load_s"], 3),
                "generate_s": round(t["generate_s"], 3),
                "sampling_s": round(t["sampling_s"], 3),
                "render_s": round(t["render_s"], 3),  # summed over workers
            },
            "new_tokens": t["new_tokens"],
            "tokens_per_s": round(t["new_tokens"] / t["sampling_s"], 1) if t["sampling_s"] > 0 else None,
            "seconds_of_music": round(t["seconds_of_music"], 3),
            "audio_seconds": round(t["audio_seconds"], 3),
            "interrupted": interrupted,
            "notes": list(self.notes),
            "finished": _now(),
            "report": str(self.report_path()),
            "manifest": str(self.manifest.path),
        }

    def report_path(self) -> Path:
        shard = self.options.shard
        return self.out_dir / (f"report-{shard[0]}-of-{shard[1]}.json" if shard else "report.json")


def _check_folders(options: BatchOptions) -> tuple[Path, Path]:
    """IN_DIR must be a folder and OUT_DIR another one (created later, once every check passed)."""
    in_dir, out_dir = Path(options.in_dir), Path(options.out_dir)
    if not in_dir.is_dir():
        raise DataError(f"{in_dir} is not a folder" if in_dir.exists() else f"{in_dir}: no such folder")
    if os.path.realpath(out_dir) == os.path.realpath(in_dir):
        raise BadRequestError("OUT_DIR must differ from IN_DIR (the outputs are MIDI files too)")
    if out_dir.exists() and not out_dir.is_dir():
        raise BadRequestError(f"{out_dir} exists and is not a folder")
    if options.workers < 0:
        raise BadRequestError("--workers must be 0 (render in this process) or more")
    return in_dir, out_dir


def _plan(run: _Run, outputs_of: Callable[[str], list[str]]) -> list[tuple[str, list[str]]]:
    """The files of this shard still to do; records conflicts; removes stale temp files."""
    unreadable: list[str] = []
    rels = list_midi_files(run.in_dir, exclude=[run.out_dir], errors=unreadable)  # OUT_DIR in IN_DIR: no inputs
    run.notes += unreadable
    if not rels:
        from .data import MIDI_SUFFIXES

        run.notes.append(f"no MIDI files ({', '.join(sorted(MIDI_SUFFIXES))}) under {run.in_dir}")
    outputs, conflicts = assign_outputs(rels, outputs_of)
    shard = run.options.shard
    mine = [r for r in rels if shard is None or shard_of(r, shard[1]) == shard[0]]
    run.counts["other_shards"] = len(rels) - len(mine)
    run.counts["files"] = len(mine)
    latest = run.manifest.latest(run.kind)
    if run.manifest.repaired_bytes:
        run.notes.append(f"cut a torn last line ({run.manifest.repaired_bytes} bytes) off the manifest")
    if run.manifest.bad_lines:
        run.notes.append(f"skipped {run.manifest.bad_lines} unreadable manifest lines")
    removed = remove_stale_temp_files(run.out_dir, [o for r in mine for o in outputs.get(r, [])])
    removed += remove_stale_temp_files(run.out_dir, [run.report_path().name])
    if removed:
        run.notes.append(f"removed {removed} temp files left by an interrupted run")
    todo = []
    for rel in mine:
        record = latest.get(rel)
        if is_done(record, run.key, run.out_dir):
            run.counts["skipped"] += 1
        elif (run.options.skip_failed and record and record.get("status") == "failed"
              and record.get("settings_key") == run.key):
            run.counts["failed"] += 1
            run.failures.append({"path": rel, "reason": record.get("reason"), "previous_run": True})
        elif rel in conflicts:
            todo.append((rel, []))  # recorded as failed when its turn comes
        else:
            todo.append((rel, outputs[rel]))
    run.conflicts = conflicts
    return todo


def _progress_bar(run: _Run, unit: str):
    if not run.options.progress:
        return None
    from tqdm.auto import tqdm

    done_before = run.counts["skipped"] + run.counts["failed"]
    return tqdm(total=run.counts["files"], initial=done_before, unit=unit, desc=run.kind, dynamic_ncols=True)


def _finish(run: _Run, interrupted: bool) -> dict:
    if run.bar is not None:
        run.bar.close()
    report = run.report(interrupted)
    write_json(run.report_path(), report)
    return report


def _check_render(fmt: str | None, soundfont, sample_rate: int) -> str | None:
    """A missing soundfont or libfluidsynth is a user error now, not a failure per file later."""
    if fmt is None:
        return None
    if fmt not in RENDER_FORMATS:
        raise BadRequestError(f"the audio format must be one of {', '.join(RENDER_FORMATS)} (or none), not {fmt!r}")
    from .render import find_soundfont, preload

    path = find_soundfont(soundfont)
    preload(path, sample_rate)
    return str(path)


def checkpoint_digest(checkpoint: str | os.PathLike | None) -> str:
    """The weights' sha256 as the checkpoint records it, without loading the model (or torch)."""
    from .checkpoint import DEFAULT_CHECKPOINT, DIGEST, WEIGHTS, read_config
    from .errors import CheckpointError

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if checkpoint is None and not (path / WEIGHTS).exists():
        from .engine import load_model

        load_model(None)  # raises the engine's own message for a missing embedded model
    read_config(path)  # a missing or incomplete checkpoint is a one-line CheckpointError
    folder = path.parent if path.is_file() else path
    words = (folder / DIGEST).read_text().split()
    if not words:
        raise CheckpointError(f"checkpoint {folder} is damaged: {DIGEST} is empty")
    return words[0]


def run_batch(options: BatchOptions, models=None) -> dict:
    """Continue every MIDI file of a folder (see the module docstring); returns the report.

    Bad settings, folders, checkpoints or soundfonts raise a UserFacingError before any work; a
    bad file is recorded as failed and the batch goes on.
    """
    from . import engine

    request = options.request if options.request is not None else engine.ContinueRequest()
    request = replace(request, primer=None, primer_name=None, seed=0, output_dir=None, render_audio=False,
                      soundfont=options.soundfont, sample_rate=options.sample_rate)
    engine.check_request(request)
    in_dir, out_dir = _check_folders(options)
    soundfont = _check_render(options.render, options.soundfont, options.sample_rate)
    digest = checkpoint_digest(request.checkpoint)
    out_dir = ensure_output_dir(out_dir)
    manifest = Manifest(out_dir)
    base_seed = options.seed
    if base_seed is None:
        previous = [r.get("base_seed") for r in manifest.read() if r.get("kind") == "batch"]
        previous = [s for s in previous if isinstance(s, int)]
        base_seed = previous[-1] if previous else secrets.randbelow(2**31)
    if not 0 <= base_seed < 2**63:
        raise BadRequestError("the seed must be a whole number from 0 to 2^63 - 1")
    settings = {
        "kind": "batch", **request.settings(), "base_seed": base_seed,
        "checkpoint_sha256": digest, "render": options.render,
        "soundfont": soundfont, "sample_rate": options.sample_rate if options.render else None,
    }
    run = _Run("batch", options, in_dir, out_dir, manifest, settings_key(settings), settings, base_seed)
    todo = _plan(run, lambda rel: batch_outputs(rel, request.variations, options.render))
    files_per_batch = options.files_per_batch or 1
    if any(rel not in run.conflicts for rel, _ in todo):  # the model loads only when there is work
        load_started = time.monotonic()
        loaded = engine.load_model(request.checkpoint, request.device, models)
        run.totals["model_load_s"] = time.monotonic() - load_started
        if options.files_per_batch is None and next(loaded.model.parameters()).device.type == "cuda":
            files_per_batch = GPU_FILES_PER_BATCH
    run.bar = _progress_bar(run, "file")
    pool = RenderPool(options.workers) if options.render else None
    interrupted = False
    try:
        if files_per_batch > 1:
            for group in _length_groups(run, todo, request, files_per_batch, models):
                _continue_group(run, group, request, pool, soundfont, models)
        else:
            for rel, outputs in todo:
                _continue_one(run, rel, outputs, request, pool, soundfont, models)
        if pool is not None:
            pool.shutdown(wait=True)
    except KeyboardInterrupt:
        interrupted = True
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        _finish(run, interrupted)
        raise
    return _finish(run, interrupted)


def _continue_one(run: _Run, rel: str, outputs: list[str], request, pool, soundfont, models) -> None:
    from . import engine

    if rel in run.conflicts:
        run.record(rel, "failed", reason=run.conflicts[rel])
        return
    seed = file_seed(run.base_seed, rel)
    started = time.monotonic()
    try:
        result = engine.continue_midi(_file_request(run, request, rel), models=models)
    except Exception as error:  # noqa: BLE001 - one odd file must not stop the rest
        run.record(rel, "failed", reason=_reason(error), seed=seed, elapsed=time.monotonic() - started)
        return
    _after_generation(run, rel, outputs, result, started, pool, soundfont)


def _file_request(run: _Run, request, rel: str):
    return replace(request, primer=run.in_dir / rel, primer_name=rel, seed=file_seed(run.base_seed, rel))


def _after_generation(run: _Run, rel: str, outputs: list[str], result, started: float, pool, soundfont) -> None:
    """Write a file's MIDI, count its figures, then render its audio (or record it done)."""
    seed = result.seed
    try:
        per_variation = 3 if run.options.render else 2
        for variation, (mid, full) in zip(result.variations, _pairs(outputs, per_variation)):
            write_bytes(run.out_dir / mid, variation.continuation_midi)
            write_bytes(run.out_dir / full, variation.full_midi)
    except Exception as error:  # noqa: BLE001 - e.g. a full disk: this file fails, the run goes on
        run.record(rel, "failed", reason=_reason(error), seed=seed, elapsed=time.monotonic() - started)
        return
    generated = time.monotonic() - started
    new_tokens = sum(v.stats["new_tokens"] for v in result.variations)
    tokens_per_s = result.variations[0].stats["tokens_per_s"] if result.variations else 0
    with run.lock:
        run.totals["generate_s"] += generated
        run.totals["new_tokens"] += new_tokens
        run.totals["sampling_s"] += new_tokens / tokens_per_s if tokens_per_s else 0.0
        run.totals["seconds_of_music"] += sum(v.stats["seconds_of_music"] for v in result.variations)
    provenance = _provenance_summary(result)
    if pool is None:
        run.record(rel, "done", outputs=outputs, seed=seed, provenance=provenance, elapsed=generated)
        return
    audio_outputs = outputs[2::3]
    pending = {"left": len(audio_outputs), "error": None}

    def finished(future: Future) -> None:
        try:
            error = future.exception()
            with run.lock:
                if error is not None and pending["error"] is None:
                    pending["error"] = error
                elif error is None:
                    run.totals["render_s"] += future.result()["render_s"]
                    run.totals["audio_seconds"] += future.result()["audio_seconds"]
                pending["left"] -= 1
                last = pending["left"] == 0
            if last:
                elapsed = time.monotonic() - started
                if pending["error"] is not None:
                    run.record(rel, "failed", reason=f"rendering: {_reason(pending['error'])}", seed=seed,
                               elapsed=elapsed)
                else:
                    run.record(rel, "done", outputs=outputs, seed=seed, provenance=provenance, elapsed=elapsed)
        except Exception as error:  # noqa: BLE001 - a callback must not die silently
            run.notes.append(f"{rel}: could not record the result: {_reason(error)}")

    for variation, audio_path in zip(result.variations, audio_outputs):
        source = variation.full_midi if run.settings.get("lead_in_seconds") is None else variation.seam_midi
        future = pool.submit(render_to_file, source, str(run.out_dir / audio_path), soundfont,
                             run.options.sample_rate, run.options.render)
        future.add_done_callback(finished)


# On a GPU one file's batch (its variations) leaves most of the chip idle: several files'
# primers go through the model together. Primers in a group are cut to the group's shortest,
# so groups are made of primers within LENGTH_SLACK of each other's length.
GPU_FILES_PER_BATCH = 8
LENGTH_SLACK = 0.9


def _length_groups(run: _Run, todo: list, request, size: int, models):
    """Groups of at most `size` files whose primers have similar token counts (unreadable files
    are recorded as failed here), looking ahead a few groups at a time."""
    from . import engine

    model = engine.load_model(request.checkpoint, request.device, models)
    lookahead = size * 4
    for start in range(0, len(todo), lookahead):
        sized = []
        for rel, outputs in todo[start : start + lookahead]:
            if rel in run.conflicts:
                run.record(rel, "failed", reason=run.conflicts[rel])
                continue
            try:
                primer = engine.prepare_primer(_file_request(run, request, rel), model.config.max_context)
            except Exception as error:  # noqa: BLE001 - the file fails, the others go on
                run.record(rel, "failed", reason=_reason(error), seed=file_seed(run.base_seed, rel))
                continue
            sized.append((min(len(primer.ids), model.config.max_context), rel, outputs))
        sized.sort()
        group: list = []
        for length, rel, outputs in sized:
            empty_mix = group and (length == 0) != (group[0][0] == 0)
            if group and (len(group) == size or length * LENGTH_SLACK > group[0][0] or empty_mix):
                yield [(r, o) for _, r, o in group]
                group = []
            group.append((length, rel, outputs))
        if group:
            yield [(r, o) for _, r, o in group]


def _continue_group(run: _Run, group: list, request, pool, soundfont, models) -> None:
    """One generation batch for the group's files; if it fails, each file on its own, so one
    odd file cannot fail its batch-mates."""
    from . import engine

    if len(group) == 1:
        _continue_one(run, *group[0], request, pool, soundfont, models)
        return
    started = time.monotonic()
    try:
        results = engine.continue_batch([_file_request(run, request, rel) for rel, _ in group], models=models)
    except Exception:  # noqa: BLE001 - retried file by file below, where each failure is recorded
        for rel, outputs in group:
            _continue_one(run, rel, outputs, request, pool, soundfont, models)
        return
    for (rel, outputs), result in zip(group, results):
        _after_generation(run, rel, outputs, result, started, pool, soundfont)


def _pairs(outputs: list[str], per_variation: int) -> list[tuple[str, str]]:
    return [(outputs[i], outputs[i + 1]) for i in range(0, len(outputs), per_variation)]


def _provenance_summary(result) -> dict:
    first = result.variations[0].provenance if result.variations else {}
    return {
        "generator": first.get("generator"),
        "version": first.get("version"),
        "checkpoint": first.get("checkpoint"),
        "settings": first.get("settings"),
        "primer": first.get("primer"),
        "seed": result.seed,
        "cancelled": result.cancelled,
        "variations": [{"index": v.index, "new_tokens": v.stats["new_tokens"],
                        "seconds_of_music": v.stats["seconds_of_music"], "new_notes": v.stats["new_notes"]}
                       for v in result.variations],
    }


def run_render_folder(options: BatchOptions) -> dict:
    """Render every MIDI file of a folder to audio, in parallel; the same manifest and resume rules."""
    fmt = options.render
    if fmt is None:
        raise BadRequestError("render-folder needs an audio format: wav or flac")
    in_dir, out_dir = _check_folders(options)
    soundfont = _check_render(fmt, options.soundfont, options.sample_rate)
    out_dir = ensure_output_dir(out_dir)
    stat = Path(soundfont).stat()
    settings = {"kind": "render", "format": fmt, "soundfont": soundfont, "soundfont_size": stat.st_size,
                "soundfont_mtime": int(stat.st_mtime), "sample_rate": options.sample_rate}
    run = _Run("render", options, in_dir, out_dir, Manifest(out_dir), settings_key(settings), settings)
    todo = _plan(run, lambda rel: render_outputs(rel, fmt))
    run.bar = _progress_bar(run, "file")
    pool = RenderPool(options.workers)
    interrupted = False
    try:
        for rel, outputs in todo:
            if rel in run.conflicts:
                run.record(rel, "failed", reason=run.conflicts[rel])
                continue
            started = time.monotonic()
            future = pool.submit(render_to_file, str(in_dir / rel), str(out_dir / outputs[0]), soundfont,
                                 options.sample_rate, fmt)
            future.add_done_callback(lambda f, rel=rel, outputs=outputs, started=started:
                                     _rendered(run, rel, outputs, started, f))
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
        _finish(run, interrupted)
        raise
    return _finish(run, interrupted)


def _rendered(run: _Run, rel: str, outputs: list[str], started: float, future: Future) -> None:
    try:
        if future.cancelled():
            return
        error = future.exception()
        elapsed = time.monotonic() - started
        if error is not None:
            run.record(rel, "failed", reason=_reason(error), elapsed=elapsed)
            return
        info = future.result()
        with run.lock:
            run.totals["render_s"] += info["render_s"]
            run.totals["audio_seconds"] += info["audio_seconds"]
        run.record(rel, "done", outputs=outputs, elapsed=elapsed,
                   provenance={"audio_seconds": round(info["audio_seconds"], 3)})
    except Exception as error:  # noqa: BLE001 - a callback must not die silently
        run.notes.append(f"{rel}: could not record the result: {_reason(error)}")


def summary_lines(report: dict) -> list[str]:
    """The end-of-run summary the CLI prints: counts, speed, failures, where the report is."""
    c, t = report["counts"], report["timings"]
    shard = f" (shard {report['shard'][0]}/{report['shard'][1]})" if report.get("shard") else ""
    new = c["done"]
    lines = [f"{c['files']} files{shard}: {new + c['skipped']} done ({c['skipped']} already done before this run), "
             f"{c['failed']} failed; {t['wall_s']:.1f} s"
             + (f"; base seed {report['base_seed']}" if report.get("base_seed") is not None else "")]
    if report.get("tokens_per_s"):
        lines.append(f"generated {report['new_tokens']:,} tokens at {report['tokens_per_s']:.0f} tokens/s, "
                     f"{report['seconds_of_music']:.1f} s of music")
    if report.get("audio_seconds"):
        lines.append(f"rendered {report['audio_seconds']:.1f} s of audio in {t['render_s']:.1f} s of worker time")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    lines += [f"failed: {f['path']}: {f['reason']}" for f in report["failures"]]
    lines.append(f"report: {report['report']}  manifest: {report['manifest']}")
    return lines
