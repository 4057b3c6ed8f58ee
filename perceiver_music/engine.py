"""The one engine every front end calls: `continue_midi(ContinueRequest) -> ContinueResult`.

A request names a primer (or none), the part of it to continue from, how much music to add,
the sampling settings, the seed, how many variations, the soundfont and the checkpoint. The
result holds, for each variation, the full MIDI (primer window + continuation), the
continuation alone, audio, a piano roll with the seam marked, statistics and provenance. With
`output_dir`, every file is also written (atomically) into a folder of its own per request.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .atomic_io import ensure_output_dir, write_bytes, write_json
from .checkpoint import DEFAULT_CHECKPOINT, Checkpoint, ModelCache
from .errors import BadMidiError, BadRequestError, CheckpointError

MAX_VARIATIONS = 4
MAX_SECONDS = 600.0
MAX_KEY_HOLD = 3.0
# Chosen on validation continuations (bench/continuations.py --split val, BENCHMARKS.md).
DEFAULT_KEY_HOLD = 1.0
MAX_NEW_TOKENS = 30_000
SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)
AUDIO_FORMATS = ("wav", "flac")
# A generated note whose NOTE_OFF never came still ends: a held key, not a drone.
MAX_GENERATED_NOTE_SECONDS = 4.0
DEFAULT_LEAD_IN = 8.0  # seconds of the primer before the seam in the audio and the roll
MAX_LEAD_IN = 120.0
# After the primer the continuation sounds at once: no silence longer than this before its first
# note (a primer that ends a piece makes a model wait, or end).
FIRST_NOTE_WITHIN_SECONDS = 1.5
# General MIDI programs 0-7 are pianos: anything else, or drums, is "other instruments".
PIANO_PROGRAMS = range(0, 8)
CPU_RUNTIMES = ("auto", "onnx", "torch")
# On a CPU: "auto" is each runtime's fastest precision that passes the NLL bar (onnx: ONNX_PRECISION;
# torch: float16/bfloat16 Linear weights), "float32" the exact weights on either: the reference
# whose greedy continuations the two runtimes share.
CPU_PRECISIONS = ("auto", "float32")
# The onnx runtime's precision on a CPU: the fastest that costs under 0.01 nats/token of NLL.
# int8 weight products: NLL -0.0006 and +0.00001 nats/id against float32 on held-out piano and
# scores (bench/precision.py), and faster than float32 at batch 1 in every bench run
# (BENCHMARKS.md, "Compiled CPU decode step"). "float32" is the exact one.
ONNX_PRECISION = "int8"


@dataclass
class ContinueRequest:
    primer: str | os.PathLike | bytes | None = None  # a MIDI path or bytes; None starts from nothing
    primer_name: str | None = None  # shown in messages and provenance (defaults to the file name)
    window_seconds: float | None = None  # continue from the last S seconds of the primer
    window_span: tuple[float, float] | None = None  # or from the span [a, b) in seconds
    length_seconds: float | None = 20.0  # music to add; None with length_tokens set
    length_tokens: int | None = None  # ids to add (a cap when length_seconds is set too)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95
    min_p: float = 0.0
    key_hold: float = DEFAULT_KEY_HOLD  # pull toward the key heard so far (key_hold.py); 0: the model alone
    seed: int | None = None  # None: a fresh random seed, reported in the result
    variations: int = 1
    soundfont: str | os.PathLike | None = None
    sample_rate: int = 44100
    audio_format: str = "wav"
    render_audio: bool = True
    allow_end: bool = False  # let the model end the piece (sample EOS) before the asked length
    lead_in_seconds: float | None = DEFAULT_LEAD_IN  # audio and roll: the last S s of the primer, then
    # the continuation; None: the whole piece (the full MIDI is always the whole piece)
    checkpoint: str | os.PathLike | None = None  # None: the embedded default model
    device: str = "auto"
    # On a CPU: "onnx" (the compiled decode step, decode_onnx.py), "torch" (the eager PyTorch
    # step) or "auto" (onnx when onnxruntime is installed). Ignored on CUDA (a CUDA graph).
    cpu_runtime: str = "auto"
    cpu_precision: str = "auto"  # CPU_PRECISIONS; ignored on CUDA
    output_dir: str | os.PathLike | None = None  # None: nothing is written to disk

    def settings(self) -> dict:
        """The settings that shape the music: provenance records them."""
        return {
            "window_seconds": self.window_seconds,
            "window_span": list(self.window_span) if self.window_span else None,
            "length_seconds": self.length_seconds,
            "length_tokens": self.length_tokens,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "key_hold": self.key_hold,
            "variations": self.variations,
            "allow_end": self.allow_end,
            "lead_in_seconds": self.lead_in_seconds,
        }


@dataclass
class Progress:
    stage: str  # "loading", "generating", "rendering", "done"
    done: float
    total: float
    tokens_per_s: float = 0.0
    message: str = ""


ProgressFn = Callable[[Progress], None]


@dataclass
class Variation:
    index: int  # 1-based
    new_ids: list[int]
    full_midi: bytes
    continuation_midi: bytes
    pianoroll_png: bytes
    audio: np.ndarray | None  # float32 stereo (n, 2): the lead-in and the continuation (or the whole piece)
    sample_rate: int
    stats: dict
    provenance: dict
    files: dict[str, Path] = field(default_factory=dict)
    audio_start_seconds: float = 0.0  # where the audio and the roll begin in the full MIDI
    lead_in_seconds: float = 0.0  # seconds of primer before the seam in the audio
    seam_midi: bytes = b""  # MIDI of what the audio plays (lead-in + continuation), from time 0
    notice: str | None = None  # one line for the person when the model ended the piece


@dataclass
class ContinueResult:
    variations: list[Variation]
    seed: int
    primer_ids: list[int]
    seam_seconds: float  # where the continuation starts in the full MIDI
    cancelled: bool
    elapsed_s: float
    output_dir: Path | None = None
    notice: str | None = None  # one line when the primer has other instruments than piano


@dataclass
class PrimerPreview:
    ids: list[int]
    sequence: Any  # the primer window as a NoteSequence (starting at 0)
    seconds: float
    report: dict
    budget: dict  # context, latents, primer tokens in the context, new tokens expected
    sha256: str | None = None  # of the primer file's bytes, for provenance
    written: list = field(default_factory=list)  # the window as written: its instruments and drums
    # (pedal folded), as live.LiveNote, on the same clock as `sequence`
    notice: str | None = None  # one line when the primer has other instruments than piano


# ---- the shared model cache ---------------------------------------------------------------------

_models = ModelCache()


class PrimerCache:
    """The last few primers read (by their bytes' sha256, name and window): reading and parsing a
    15-minute MIDI file takes seconds, and the page reads its primer for the preview first and
    again on every Generate. Entries are never changed once made. Thread-safe."""

    def __init__(self, size: int = 8) -> None:
        from collections import OrderedDict

        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_primers = PrimerCache()


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def load_model(checkpoint: str | os.PathLike | None, device: str = "auto", models: ModelCache | None = None) -> Checkpoint:
    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if checkpoint is None and not (path / "model.safetensors").exists():
        raise CheckpointError(f"the embedded model is missing from {path}; reinstall or pass a checkpoint")
    return (models or _models).get(path, _device(device))


# ---- request checks -----------------------------------------------------------------------------


def check_request(request: ContinueRequest) -> None:
    """Out-of-range settings are a one-line BadRequestError, before any work is done."""
    r = request
    if not 1 <= r.variations <= MAX_VARIATIONS:
        raise BadRequestError(f"variations must be 1 to {MAX_VARIATIONS}, not {r.variations}")
    if r.length_seconds is None and r.length_tokens is None:
        raise BadRequestError("give a length in seconds or in tokens")
    if r.length_seconds is not None and not 0 < r.length_seconds <= MAX_SECONDS:
        raise BadRequestError(f"length must be more than 0 and at most {MAX_SECONDS:g} seconds")
    if r.length_tokens is not None and not 0 < r.length_tokens <= MAX_NEW_TOKENS:
        raise BadRequestError(f"length in tokens must be 1 to {MAX_NEW_TOKENS:,}")
    if not 0 <= r.temperature <= 5:
        raise BadRequestError(f"temperature must be 0 (greedy) to 5, not {r.temperature}")
    if r.top_k < 0:
        raise BadRequestError("top-k must be 0 (off) or more")
    if not 0 < r.top_p <= 1:
        raise BadRequestError("top-p must be more than 0 and at most 1")
    if not 0 <= r.min_p < 1:
        raise BadRequestError("min-p must be at least 0 and below 1")
    if not 0 <= r.key_hold <= MAX_KEY_HOLD:
        raise BadRequestError(f"key hold must be 0 (off) to {MAX_KEY_HOLD:g}, not {r.key_hold}")
    if r.sample_rate not in SAMPLE_RATES:
        raise BadRequestError(f"sample rate must be one of {', '.join(map(str, SAMPLE_RATES))}")
    if r.audio_format not in AUDIO_FORMATS:
        raise BadRequestError(f"audio format must be one of {', '.join(AUDIO_FORMATS)}")
    if r.window_seconds is not None and r.window_seconds <= 0:
        raise BadRequestError("the primer window must be more than 0 seconds")
    if r.window_span is not None:
        a, b = r.window_span
        if not 0 <= a < b:
            raise BadRequestError(f"the primer span must satisfy 0 <= start < end, not [{a}, {b})")
    if r.lead_in_seconds is not None and not 0 <= r.lead_in_seconds <= MAX_LEAD_IN:
        raise BadRequestError(f"the lead-in must be 0 to {MAX_LEAD_IN:g} seconds (or none: the whole piece)")
    if r.cpu_runtime not in CPU_RUNTIMES:
        raise BadRequestError(f"the CPU runtime must be one of {', '.join(CPU_RUNTIMES)}, not {r.cpu_runtime!r}")
    if r.cpu_precision not in CPU_PRECISIONS:
        raise BadRequestError(f"the CPU precision must be one of {', '.join(CPU_PRECISIONS)}, not {r.cpu_precision!r}")
    if r.cpu_runtime == "onnx":
        from .decode_onnx import available

        if not available():
            raise BadRequestError("the onnx CPU runtime needs onnxruntime (pip install onnxruntime); "
                                  "or use the torch runtime")
    if r.seed is not None and not 0 <= r.seed < 2**63:
        raise BadRequestError("the seed must be a whole number from 0 to 2^63 - 1")


# ---- the primer ---------------------------------------------------------------------------------


def _primer_name(request: ContinueRequest) -> str:
    if request.primer_name:
        return request.primer_name
    if isinstance(request.primer, (str, os.PathLike)):
        return Path(request.primer).name
    return "primer.mid" if request.primer is not None else "(none)"


def prepare_primer(request: ContinueRequest, max_context: int | None = None, num_latents: int | None = None) -> PrimerPreview:
    """The primer window as ids and notes, and how it fits the model's context."""
    from .midi_input import load_note_sequence, read_midi_bytes
    from .tokenizer import (SOS, decode, last_seconds, piano_sequence_to_ids, seconds_of, to_piano_sequence,
                            window_seconds)

    if request.primer is None:
        return PrimerPreview([], decode([]), 0.0, {}, _budget(0, max_context, num_latents, request))
    name = _primer_name(request)
    # Read once: the bytes are both parsed and hashed for provenance.
    if isinstance(request.primer, (bytes, bytearray)):
        data = bytes(request.primer)
    else:
        data = read_midi_bytes(request.primer)
    sha256 = hashlib.sha256(data).hexdigest()
    key = (sha256, name, request.window_seconds, tuple(request.window_span) if request.window_span else None)
    cached = _primers.get(key)
    if cached is not None:  # the page read it for its preview: a long primer is parsed once
        return replace(cached, budget=_budget(len(cached.ids), max_context, num_latents, request))
    folded: list = []
    piano, report = to_piano_sequence(load_note_sequence(data, name=name), keep_folded=folded)
    starts_at_beginning = True
    bounds = (0.0, float("inf"))
    if request.window_span is not None:
        a, b = request.window_span
        window = window_seconds(piano, a, b)
        bounds = (a, b)
        starts_at_beginning = a <= 0
        if not window.notes:
            raise BadMidiError(f"{name} has no notes between {a:g} s and {b:g} s")
    elif request.window_seconds is not None:
        end = piano.total_time
        starts_at_beginning = request.window_seconds >= end
        window = last_seconds(piano, request.window_seconds)
        bounds = (max(0.0, end - request.window_seconds), end + 1e-6)
    else:
        window = piano
    first = _drop_leading_silence(window)
    ids = piano_sequence_to_ids(window)
    # Training works begin with SOS; a window from the middle of a piece does not.
    if starts_at_beginning:
        ids = [SOS, *ids]
    info = report.to_dict()
    seconds = seconds_of(ids)
    written = _written_window(folded[0], bounds, (bounds[0] if bounds[0] > 0 else 0.0) + first, seconds)
    preview = PrimerPreview(ids, window, seconds, info, _budget(len(ids), max_context, num_latents, request),
                            sha256=sha256, written=written, notice=_instruments_notice(info))
    _primers.put(key, preview)
    return preview


def _drop_leading_silence(ns) -> float:
    """Shift the notes so the first starts at 0; returns the shift."""
    if not ns.notes:
        return 0.0
    first = min(n.start_time for n in ns.notes)
    for note in ns.notes:
        note.start_time -= first
        note.end_time -= first
    ns.total_time = max(n.end_time for n in ns.notes)
    return first


def _written_window(folded, bounds: tuple[float, float], shift: float, seam: float) -> list:
    """The primer window with its own instruments and drums: the notes that start in the window's
    bounds (as tokenizer.window_seconds picks them), moved by the piano window's shift, within
    [0, seam]."""
    from .live import LiveNote

    a, b = bounds
    notes = []
    for n in folded.notes:
        if not a <= n.start_time < b:
            continue
        start, end = n.start_time - shift, min(n.end_time, b) - shift
        if start < -1e-9 or start >= seam:
            continue
        notes.append(LiveNote(int(n.pitch), max(1, min(127, int(n.velocity))), max(0.0, start), min(end, seam),
                              int(n.instrument), int(n.program), bool(n.is_drum)))
    return notes


def _instruments_notice(report: dict) -> str | None:
    others = [p for p in report.get("programs", []) if p not in PIANO_PROGRAMS]
    drums = report.get("drum_notes_dropped", 0)
    if not others and not drums:
        return None
    parts = []
    if others:
        parts.append(f"{len(others)} other instrument{'s' if len(others) != 1 else ''}")
    if drums:
        parts.append("drums")
    return (f"The primer has {' and '.join(parts)}: they stay in the primer part; the model plays piano only, so "
            "the continuation is piano.")


def _budget(primer_tokens: int, max_context: int | None, num_latents: int | None, request: ContinueRequest) -> dict:
    budget = {"primer_tokens": primer_tokens, "context": max_context, "latents": num_latents}
    if max_context:
        budget["primer_tokens_in_context"] = min(primer_tokens, max_context)
        budget["primer_tokens_dropped"] = max(0, primer_tokens - max_context)
    if request.length_tokens is not None:
        budget["new_tokens"] = request.length_tokens
    elif request.length_seconds is not None:
        budget["new_tokens_estimate"] = int(round(request.length_seconds * 40))  # piano: ~40 ids per second
    return budget


def preview_primer(request: ContinueRequest, models: ModelCache | None = None) -> PrimerPreview:
    """For the UI's primer preview: the window and the token budget of the chosen model."""
    checkpoint = load_model(request.checkpoint, request.device, models)
    return prepare_primer(request, checkpoint.config.max_context, checkpoint.config.num_latents)


# ---- continuing -----------------------------------------------------------------------------------


def continue_midi(
    request: ContinueRequest,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    models: ModelCache | None = None,
    live: Any = None,
) -> ContinueResult:
    """Continue the primer; see the module docstring. Bad input raises a UserFacingError.

    `live`, a `live.LiveRun`, is filled in while it runs: a front end streams from it."""
    return continue_batch([request], progress, cancel, models, live=live)[0]


# Settings every request of one batch must share: they shape the whole batch's sampling.
BATCH_SHARED = ("checkpoint", "device", "cpu_runtime", "cpu_precision", "length_seconds", "length_tokens",
                "temperature", "top_k", "top_p", "min_p", "key_hold", "variations", "allow_end")


def continue_batch(
    requests: list[ContinueRequest],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    models: ModelCache | None = None,
    live: Any = None,
) -> list[ContinueResult]:
    """Continue several primers in one generation batch (a folder's files on a GPU).

    The requests share the settings in BATCH_SHARED; each keeps its own primer, window, seed and
    output folder, and its music does not depend on its batch-mates, except that a batch is one
    rectangle: every prompt is cut to the shortest prompt's length (the oldest ids go first), so
    group primers of similar length. Each result records the prompt ids it was given.
    """
    started = time.monotonic()
    if not requests:
        return []
    for request in requests:
        check_request(request)
        if any(getattr(request, k) != getattr(requests[0], k) for k in BATCH_SHARED):
            raise BadRequestError(f"requests in one batch must share {', '.join(BATCH_SHARED)}")
    first = requests[0]
    notify = progress or (lambda event: None)
    notify(Progress("loading", 0, 1, message="loading the model"))
    checkpoint = load_model(first.checkpoint, first.device, models)
    cfg = checkpoint.config
    primers = [prepare_primer(r, cfg.max_context, cfg.num_latents) for r in requests]
    runtime = prepare_runtime(checkpoint.model, first.cpu_runtime, notify, prompts=len(requests),
                              cpu_precision=first.cpu_precision)
    seeds = [r.seed if r.seed is not None else secrets.randbelow(2**31) for r in requests]
    out_dirs = [_request_folder(r.output_dir) if r.output_dir is not None else None for r in requests]
    if len({bool(p.ids) for p in primers}) > 1:
        raise BadRequestError("a batch cannot mix requests with a primer and requests without one")
    length = min(min(len(p.ids), cfg.max_context) for p in primers)
    prompts = [p.ids[-length:] if length else [] for p in primers]

    counters: dict = live.stats if live is not None else {}
    if live is not None:
        live.attach(first, primers[0], _lead_in_notes(primers[0], first.lead_in_seconds), seeds[0])
    generation_started = time.monotonic()
    if live is not None:
        live.started = generation_started
    rows = len(requests) * first.variations

    def on_progress(done: float, total: float) -> None:
        elapsed = max(1e-6, time.monotonic() - generation_started)
        notify(Progress("generating", done, total, counters.get("ids", 0) * rows / elapsed))

    new_ids = _generate(checkpoint.model, prompts, runtime, first, seeds, on_progress, cancel, counters)
    runtime = counters.get("runtime")
    generation_seconds = time.monotonic() - generation_started
    ended_by_eos = counters.get("ended_by_eos") or [False] * rows
    if live is not None:
        live.generated.set()
    tokens_per_s = sum(len(v) for ids in new_ids for v in ids) / max(1e-6, generation_seconds)
    cancelled = bool(cancel is not None and cancel.is_set())
    results = []
    for number, (request, primer, prompt, seed, out_dir, ids) in enumerate(
            zip(requests, primers, prompts, seeds, out_dirs, new_ids)):
        variations = []
        parts = _PrimerParts(primer)
        for index, variation_ids in enumerate(ids, start=1):
            notify(Progress("rendering", index - 1, len(ids), message=f"rendering variation {index}"))
            by_eos = bool(ended_by_eos[number * request.variations + index - 1])
            variation = _build_variation(index, variation_ids, primer, primer.seconds, request, checkpoint, seed,
                                         tokens_per_s, cancelled, out_dir, prompt_tokens=len(prompt),
                                         batch_size=len(requests), ended_by_model=by_eos, parts=parts,
                                         live=live if number == 0 and index == 1 else None, runtime=runtime)
            variations.append(variation)
        results.append(ContinueResult(variations, seed, primer.ids, primer.seconds, cancelled,
                                      time.monotonic() - started, out_dir, notice=primer.notice))
    notify(Progress("done", 1, 1, tokens_per_s))
    return results


def _generate(model, prompts, runtime: tuple, request: ContinueRequest, seeds: list[int], progress, cancel,
              live: dict) -> list[list[list[int]]]:
    from .generate import generate_batch

    backend, dtype = runtime
    return generate_batch(
        model,
        prompts,
        seeds=seeds,
        max_new_tokens=request.length_tokens,
        max_seconds=request.length_seconds,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        min_p=request.min_p,
        key_hold=request.key_hold,
        num_variations=request.variations,
        progress=progress,
        cancel=cancel,
        backend=backend,
        dtype=dtype,
        stats=live,
        allow_eos=request.allow_end,
        first_note_within=FIRST_NOTE_WITHIN_SECONDS,
    )


def prepare_runtime(model, cpu_runtime: str, notify: ProgressFn, prompts: int = 1, cpu_precision: str = "auto") -> tuple:
    """(backend, dtype) for this model, with the compiled CPU step exported (once per model, then
    cached on disk) and loaded before generation starts, so tokens/s counts only generating. With
    "auto", a compiled step that cannot be made falls back to the eager one."""
    backend, dtype = generation_backend(model, cpu_runtime, prompts, cpu_precision)
    if backend != "onnx":
        return backend, dtype
    from .decode_onnx import SESSIONS, PRECISION_OF
    import torch

    notify(Progress("loading", 0, 1, message="preparing the compiled CPU decode step (the first time: an export)"))
    try:
        SESSIONS.get(model, PRECISION_OF[dtype], torch.get_num_threads())
        _prepare_native_step(model, PRECISION_OF[dtype])
    except Exception as error:  # noqa: BLE001 - auto: the eager step is the fallback
        if cpu_runtime != "auto":
            raise
        import warnings

        warnings.warn(f"the compiled CPU step could not be prepared ({error}); using the eager step", RuntimeWarning)
        return generation_backend(model, "torch", prompts, cpu_precision)
    return backend, dtype


def _prepare_native_step(model, precision: str) -> None:
    """The native step's library (compiled once per machine) and weights, made now rather
    than in the first decoder; where it cannot be had, the decoders use onnxruntime's step."""
    from .native_step import WEIGHTS, Unavailable, load_library

    try:
        load_library()
    except Unavailable:
        return
    WEIGHTS.get(model, precision)


def generation_backend(model, cpu_runtime: str = "auto", prompts: int = 1, cpu_precision: str = "auto"):
    """(backend, dtype) for generate(): on a GPU a CUDA graph in bfloat16; on a CPU the onnx
    runtime in ONNX_PRECISION when asked for or, with "auto", when onnxruntime is installed; else the
    eager step with float16 and bfloat16 copies of the Linear weights, read by the rows
    multiplied (cpu_precision: about 2x the tokens/s of eager float32; test NLL unchanged).
    cpu_precision "float32" keeps the model's float32 weights on either CPU runtime."""
    import torch

    from .generate import auto_backend

    if next(model.parameters()).device.type == "cuda":
        return "auto", torch.bfloat16
    if cpu_runtime == "onnx" and model.config.attention != "softmax":
        raise BadRequestError("the onnx CPU runtime supports softmax attention only; use the torch runtime")
    # int8 quantises each product's input with one scale for the whole batch, so a row's logits
    # would depend on its batch-mates: several prompts in one batch (whose music must not depend
    # on each other) run in float32. One prompt's variations share it.
    fast = cpu_precision == "auto"
    onnx_dtype = torch.qint8 if fast and ONNX_PRECISION == "int8" and prompts == 1 else None
    if cpu_runtime == "onnx" or (cpu_runtime == "auto" and auto_backend(model, onnx_dtype) == "onnx"):
        return "onnx", onnx_dtype
    return "eager", torch.float16 if fast else None


def _request_folder(root: str | os.PathLike) -> Path:
    """A fresh folder per request: outputs of two users or two clicks never collide."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return ensure_output_dir(Path(root) / f"{stamp}-{uuid.uuid4().hex[:8]}")


def _provenance(request, checkpoint: Checkpoint, seed: int, index: int, primer: PrimerPreview, stats: dict) -> dict:
    primer_info: dict[str, Any] = {"name": _primer_name(request), "tokens": len(primer.ids),
                                   "seconds": round(primer.seconds, 3)}
    if primer.sha256:
        primer_info["sha256"] = primer.sha256
    if request.window_span:
        primer_info["span_seconds"] = list(request.window_span)
    elif request.window_seconds:
        primer_info["last_seconds"] = request.window_seconds
    return {
        "generator": "perceiver-music",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(checkpoint.path), "sha256": checkpoint.sha256,
                       "step": checkpoint.metadata.get("step")},
        "seed": seed,
        "variation": index,
        "settings": request.settings(),
        "primer": primer_info,
        "stats": stats,
    }


def _midi_chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """A standard MIDI file's header chunk and its track chunks, as bytes."""
    length = int.from_bytes(data[4:8], "big")
    header, position, chunks = data[: 8 + length], 8 + length, []
    while position + 8 <= len(data):
        size = int.from_bytes(data[position + 4 : position + 8], "big")
        chunks.append(data[position : position + 8 + size])
        position += 8 + size
    return header, chunks


def _track_chunk(instrument, index: int, tempo: float = 120.0, resolution: int = 220) -> bytes:
    """One instrument's MTrk chunk as pretty_midi.PrettyMIDI.write makes it (the same channel,
    ticks and event order: notes read back the same), without a mido message per event: pretty_midi
    takes seconds for a long piece, this a few tens of milliseconds."""
    channels = [c for c in range(16) if c != 9]
    channel = 9 if instrument.is_drum else channels[index % len(channels)]
    scale = 60.0 / (tempo * resolution)
    events = []  # (tick, order, status, data1, data2); order as pretty_midi's event_compare
    for note in instrument.notes:
        events.append((int(round(note.start / scale)), 10 * 65536 + note.pitch * 256 + note.velocity,
                       note.pitch, note.velocity))
        events.append((int(round(note.end / scale)), 10 * 65536 + note.pitch * 256, note.pitch, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    out = bytearray()

    def delta(value: int) -> None:
        stack = [value & 0x7F]
        value >>= 7
        while value:
            stack.append(0x80 | (value & 0x7F))
            value >>= 7
        out.extend(reversed(stack))

    if instrument.name:
        name = instrument.name.encode("latin-1", "replace")
        out += b"\x00\xff\x03"
        delta(len(name))
        out += name
    out += bytes([0x00, 0xC0 | channel, instrument.program & 0x7F])
    status, last = 0x90 | channel, 0
    first = True
    for tick, _, pitch, velocity in events:
        delta(tick - last)
        last = tick
        if first:  # after the program change: a new status byte, then running status
            out.append(status)
            first = False
        out += bytes([pitch, velocity])
    delta(1)  # end of track one tick after the last event, as pretty_midi
    out += b"\xff\x2f\x00"
    return b"MTrk" + len(out).to_bytes(4, "big") + bytes(out)


class _PrimerParts:
    """What every variation of one primer shares: its notes as written, their MIDI instruments
    (built once: a 15-minute primer is not rebuilt per variation) and the continuation's track."""

    def __init__(self, primer: PrimerPreview) -> None:
        self.primer = primer
        self.track = (max((n.instrument for n in primer.written), default=-1) + 1, 0)
        self._instruments = None
        self._primer_chunks: list[bytes] | None = None


    def instruments(self):
        if self._instruments is None:
            self._instruments = _pretty_instruments(self.primer.written)
        return self._instruments

    def full_midi(self, continuation: list, text: str | None) -> bytes:
        """The primer's tracks and the continuation's in one MIDI file. The primer's tracks are
        written once per request and copied as bytes into each variation's file (a 15-minute
        primer costs its MIDI writing once, not once per variation); the continuation's tracks
        are written with empty stand-ins of the primer's before them, so every track keeps the
        channel it would have in one file written at once."""
        import pretty_midi

        if self._primer_chunks is None:
            self._primer_chunks = [_track_chunk(inst, index) for index, inst in enumerate(self.instruments())]
        stubs = [pretty_midi.Instrument(program=i.program, is_drum=i.is_drum, name=i.name) for i in self.instruments()]
        header, chunks = _midi_chunks(_midi_bytes(stubs + continuation, text))
        tracks = [chunks[0], *self._primer_chunks, *chunks[1 + len(stubs):]]
        return header[:10] + len(tracks).to_bytes(2, "big") + header[12:] + b"".join(tracks)


def _pretty_instruments(notes) -> list:
    import pretty_midi

    tracks: dict = {}
    for n in notes:
        key = (n.instrument, n.program, bool(n.is_drum))
        if key not in tracks:
            name = "drums" if n.is_drum else pretty_midi.program_to_instrument_name(n.program)
            tracks[key] = pretty_midi.Instrument(program=n.program, is_drum=bool(n.is_drum), name=name)
        tracks[key].notes.append(pretty_midi.Note(n.velocity, n.pitch, n.start_time, max(n.end_time, n.start_time + 1e-3)))
    return [tracks[k] for k in sorted(tracks)]


def _midi_bytes(instruments: list, text: str | None) -> bytes:
    import io

    import pretty_midi

    from .tokenizer import _add_text_event

    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.instruments = list(instruments)
    buffer = io.BytesIO()
    pm.write(buffer)
    return _add_text_event(buffer.getvalue(), text) if text else buffer.getvalue()


def _lead_in_notes(primer: PrimerPreview, lead_in: float | None) -> tuple[list, float]:
    """The primer's notes that sound in its last `lead_in` seconds (all of it for None), moved so
    that the lead-in starts at 0; and the lead-in's length. A note held into the lead-in starts
    at its start."""
    from .live import LiveNote

    seam = primer.seconds
    length = seam if lead_in is None else min(float(lead_in), seam)
    begin = seam - length
    notes = [LiveNote(n.pitch, n.velocity, max(n.start_time, begin) - begin, n.end_time - begin, n.instrument,
                      n.program, n.is_drum)
             for n in primer.written if n.end_time > begin and n.end_time > n.start_time]
    return notes, length


def primer_audio_notes(primer: PrimerPreview, seconds: float | None) -> tuple[list, float]:
    """The notes of the primer window's last `seconds` (None: all of it) as written, from 0:
    what a primer preview plays."""
    return _lead_in_notes(primer, seconds)


def _continuation_notes(ids, offset: float, track: tuple[int, int]) -> list:
    from .live import LiveNote
    from .tokenizer import decode

    ns = decode(list(ids), max_note_seconds=MAX_GENERATED_NOTE_SECONDS)
    return [LiveNote(int(n.pitch), int(n.velocity), n.start_time + offset, n.end_time + offset, track[0], track[1])
            for n in ns.notes]


def _fill_to_length(ids: list[int], length_seconds: float | None) -> list[int]:
    """The last TIME_SHIFT that would have passed the asked length was left out: its part up to
    the length is put back, so the continuation lasts as long as asked."""
    from .tokenizer import MAX_SHIFT_STEPS, STEPS_PER_SECOND, TIME_SHIFT_BASE, seconds_of

    if length_seconds is None:
        return ids
    missing = int(round(length_seconds * STEPS_PER_SECOND)) - int(round(seconds_of(ids) * STEPS_PER_SECOND))
    if not 0 < missing <= MAX_SHIFT_STEPS:
        return ids
    return [*ids, TIME_SHIFT_BASE + missing - 1]


def _build_variation(index, ids, primer, seam, request, checkpoint, seed, tokens_per_s, cancelled, out_dir,
                     prompt_tokens: int, batch_size: int = 1, ended_by_model: bool = False,
                     parts: _PrimerParts | None = None, live: Any = None, runtime: str | None = None):
    from .pianoroll import pianoroll_png
    from .tokenizer import seconds_of

    parts = parts or _PrimerParts(primer)
    ids = list(ids)
    if not cancelled and not ended_by_model:
        ids = _fill_to_length(ids, request.length_seconds)
    continuation = _continuation_notes(ids, 0.0, parts.track)
    music_seconds = seconds_of(ids)
    stats = {
        "new_tokens": len(ids),
        "tokens_per_s": round(tokens_per_s, 1),  # all variations together: they run as one batch
        "seconds_of_music": round(music_seconds, 3),
        "new_notes": len(continuation),
        "primer_tokens": len(primer.ids),
        "prompt_tokens": prompt_tokens,  # what the model saw: at most max_context, or a batch's length
        "batch_size": batch_size,  # primers generated together
        "runtime": runtime,  # what computed the logits: onnx-float32, eager, graph, ... (generate.runtime_name)
        "cancelled": cancelled,
        "ended_by_model": ended_by_model,  # EOS sampled (only with allow_end)
    }
    provenance = _provenance(request, checkpoint, seed, index, primer, stats)
    text = json.dumps(provenance, separators=(",", ":"), sort_keys=True)
    continuation_track = _pretty_instruments([_shifted(n, 0.0) for n in continuation])
    for inst in continuation_track:
        inst.name = "continuation (piano)"
    continuation_midi = _midi_bytes(continuation_track, text)
    full_track = _pretty_instruments([_shifted(n, seam) for n in continuation])
    for inst in full_track:
        inst.name = "continuation (piano)"
    full_midi = parts.full_midi(full_track, text)

    lead_notes, lead_in = _lead_in_notes(primer, request.lead_in_seconds)
    span_notes = lead_notes + [_shifted(n, lead_in) for n in continuation]
    seam_midi = _midi_bytes(_pretty_instruments(span_notes), None)
    begin = seam - lead_in
    roll = pianoroll_png(NoteList(span_notes, lead_in + music_seconds), seam_seconds=lead_in if primer.ids else None,
                         time_offset=begin,
                         title=f"variation {index} · seed {seed}"
                         + (f" · the last {lead_in:.0f} s of the primer, then the continuation" if begin > 0 else ""))
    audio = None
    if request.render_audio and live is not None:  # what a front end streamed, finished: not rendered twice
        audio = live.finished_audio(ids, request.soundfont, request.sample_rate)
    if request.render_audio and audio is None:
        from .render import performance_of_notes, render

        audio = render(performance_of_notes(span_notes), soundfont=request.soundfont, sample_rate=request.sample_rate)
    notice = f"The model ended the piece after {music_seconds:.1f} s." if ended_by_model else None
    variation = Variation(index, ids, full_midi, continuation_midi, roll, audio, request.sample_rate, stats,
                          provenance, audio_start_seconds=begin, lead_in_seconds=lead_in, seam_midi=seam_midi,
                          notice=notice)
    if out_dir is not None:
        variation.files = _write_variation(out_dir, variation, request.audio_format)
    return variation


def _shifted(note, offset: float):
    from dataclasses import replace as copy

    return copy(note, start_time=note.start_time + offset, end_time=note.end_time + offset)


class NoteList:
    """A list of notes where render and the piano roll want a NoteSequence."""

    def __init__(self, notes: list, total_time: float) -> None:
        self.notes = notes
        self.control_changes: list = []
        self.pitch_bends: list = []
        self.total_time = total_time


def render_full(variation: Variation, soundfont=None, sample_rate: int | None = None) -> np.ndarray:
    """The whole piece (the primer window and the continuation) rendered from the full MIDI, on
    demand: what the lead-in audio leaves out."""
    from .render import render

    return render(variation.full_midi, soundfont=soundfont, sample_rate=sample_rate or variation.sample_rate)


def _write_variation(out_dir: Path, variation: Variation, audio_format: str) -> dict[str, Path]:
    from .render import write_audio

    stem = out_dir / f"variation-{variation.index}"
    files = {
        "full_midi": write_bytes(f"{stem}-full.mid", variation.full_midi),
        "continuation_midi": write_bytes(f"{stem}-continuation.mid", variation.continuation_midi),
        "pianoroll": write_bytes(f"{stem}-pianoroll.png", variation.pianoroll_png),
        "provenance": write_json(f"{stem}.json", variation.provenance),
    }
    if variation.audio is not None:
        path = Path(f"{stem}.{audio_format}")
        write_audio(path, variation.audio, variation.sample_rate)
        files["audio"] = path
    return files


def result_summary(result: ContinueResult) -> dict:
    """A JSON-friendly summary (for the API and the notebook's repr)."""
    return {
        "seed": result.seed,
        "seam_seconds": round(result.seam_seconds, 3),
        "cancelled": result.cancelled,
        "elapsed_s": round(result.elapsed_s, 2),
        "output_dir": str(result.output_dir) if result.output_dir else None,
        "notice": result.notice,
        "variations": [{"index": v.index, **v.stats, "files": {k: str(p) for k, p in v.files.items()}}
                       for v in result.variations],
    }

