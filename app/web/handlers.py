"""What the page's events do: read the controls, call the engine, turn its result into updates.

No model logic here: `perceiver_music.engine` does the work. A `UserFacingError` (bad MIDI,
settings out of range, ...) becomes a one-line warning in the page (for the API: a gr.Error the
client raises); anything else is logged here with its traceback and the page gets a short
generic message.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from perceiver_music.atomic_io import write_bytes
from perceiver_music.checkpoint import ASSETS_DIR, ModelCache
from perceiver_music.engine import (MAX_VARIATIONS, ContinueRequest, Progress, check_request, continue_midi,
                                    preview_primer, result_summary)
from perceiver_music.errors import BadMidiError, UserFacingError

from .session import NO_PRIMER, Primer, Session, SessionStore, copy_into

log = logging.getLogger("perceiver_music.web")

GENERIC_ERROR = "something went wrong on the server; the details are in its log"
WINDOW_WHOLE, WINDOW_LAST, WINDOW_SPAN = "whole primer", "last seconds", "span"
WINDOW_MODES = (WINDOW_WHOLE, WINDOW_LAST, WINDOW_SPAN)
PREVIEWS_KEPT = 8  # rendered primer previews kept per session
SEED_RANGE = 2**31  # seeds the dice picks; exact in JSON and in a browser's numbers


@dataclass
class WebConfig:
    checkpoint: Path | None = None  # None: the embedded model (assets/model)
    soundfont: Path | None = None  # None: the render module's choice (FluidR3 if installed, else TimGM6mb)
    output_dir: Path = Path("outputs/web")
    primers_dir: Path = ASSETS_DIR / "primers"
    max_upload_mb: float = 16.0
    concurrency: int = 1  # generations at a time
    queue_size: int = 16  # requests waiting beyond that; more get "queue is full"
    device: str = "auto"
    examples: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir).expanduser().resolve()
        if not self.examples and Path(self.primers_dir).is_dir():
            self.examples = sorted(p for p in Path(self.primers_dir).iterdir()
                                   if p.suffix.lower() in (".mid", ".midi") and p.is_file())


def new_seed() -> int:
    return random.randrange(SEED_RANGE)


def window(mode: str, last_seconds: float | None, span_start: float | None, span_end: float | None) -> dict:
    """The primer window controls as ContinueRequest fields."""
    if mode == WINDOW_LAST:
        if last_seconds is None:
            raise UserFacingError("give the number of seconds to continue from")
        return {"window_seconds": float(last_seconds)}
    if mode == WINDOW_SPAN:
        if span_start is None or span_end is None:
            raise UserFacingError("give the start and end of the primer span in seconds")
        return {"window_span": (float(span_start), float(span_end))}
    return {}


def _progress_to(progress: gr.Progress):
    """Engine Progress events as a gr.Progress bar with tokens/s, at most 5 updates a second."""
    last = [0.0]

    def on_event(event: Progress) -> None:
        now = time.monotonic()
        if event.stage == "generating" and now - last[0] < 0.2:
            return
        last[0] = now
        fraction = event.done / event.total if event.total else 0.0
        if event.stage == "generating":
            progress(fraction, desc=f"generating · {event.tokens_per_s:,.0f} tokens/s")
        elif event.stage == "rendering":
            progress(fraction, desc=event.message or "rendering")
        elif event.stage == "loading":
            progress(0.0, desc=event.message or "loading the model")

    return on_event


class Handlers:
    """The event handlers of one app: a config, a model cache and the sessions."""

    def __init__(self, config: WebConfig, models: ModelCache, store: SessionStore | None = None):
        self.config = config
        self.models = models
        self.store = store or SessionStore(config.output_dir)

    # ---- helpers -------------------------------------------------------------------------------

    def session(self, request: gr.Request | None) -> Session:
        return self.store.get(getattr(request, "session_hash", None))

    def _request(self, primer: Primer, **settings: Any) -> ContinueRequest:
        return ContinueRequest(
            primer=str(primer.path) if primer.path else None,
            primer_name=primer.name,
            soundfont=self.config.soundfont,
            checkpoint=self.config.checkpoint,
            device=self.config.device,
            **settings,
        )

    def _check_upload(self, path: Path) -> None:
        limit = self.config.max_upload_mb * 1024 * 1024
        size = path.stat().st_size
        if size > limit:
            raise BadMidiError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {self.config.max_upload_mb:g} MB")

    def _preview(self, session: Session, primer: Primer, win: dict, length: float | None) -> tuple:
        """(primer audio, piano roll, budget text) for a primer and window; files are cached."""
        from perceiver_music.pianoroll import pianoroll_png
        from perceiver_music.render import render, write_audio

        request = self._request(primer, length_seconds=length, **win)
        check_request(request)
        preview = preview_primer(request, models=self.models)
        budget = budget_text(primer, preview, length)
        if not preview.sequence.notes:
            return None, None, budget
        key = (str(primer.path), tuple(sorted((k, str(v)) for k, v in win.items())))
        if key not in session.previews:
            folder = session.folder("previews", uuid.uuid4().hex[:8])
            audio = render(preview.sequence, soundfont=self.config.soundfont)
            audio_path = write_audio(folder / "primer.wav", audio, 44100)
            roll = pianoroll_png(preview.sequence, title=f"{primer.name} · primer window")
            roll_path = write_bytes(folder / "primer-pianoroll.png", roll)
            session.previews[key] = (str(audio_path), str(roll_path))
            while len(session.previews) > PREVIEWS_KEPT:
                session.previews.popitem(last=False)
        audio_path, roll_path = session.previews[key]
        return audio_path, roll_path, budget

    def _primer_outputs(self, session: Session, primer: Primer, win: dict, length, file_value, mode_value) -> list:
        """Make `primer` current if its preview works; else warn and keep the current one."""
        try:
            preview = self._preview(session, primer, win, length)
        except UserFacingError as error:
            gr.Warning(str(error))
            return [primer_file_value(session.primer), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
        except Exception:
            log.exception("primer preview failed")
            gr.Warning(GENERIC_ERROR)
            return [primer_file_value(session.primer), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
        session.set_primer(primer)
        return [file_value, mode_value, *preview]

    # ---- primer events (outputs: primer file, window mode, preview audio, roll, budget) --------

    def upload(self, file, mode, last_s, span_a, span_b, length, request: gr.Request):
        session = self.session(request)
        if not file:
            return self.clear(mode, last_s, span_a, span_b, length, request)
        try:
            path = Path(file)
            self._check_upload(path)
            primer = copy_into(session, path, path.name)
            win = window(mode, last_s, span_a, span_b)
        except UserFacingError as error:
            gr.Warning(str(error))
            return [primer_file_value(session.primer), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
        return self._primer_outputs(session, primer, win, length, gr.skip(), gr.skip())

    def example(self, name, mode, last_s, span_a, span_b, length, request: gr.Request):
        session = self.session(request)
        path = next((p for p in self.config.examples if p.name == name), None)
        if path is None:
            return [gr.skip()] * 5
        primer = copy_into(session, path, path.name)
        return self._primer_outputs(session, primer, {}, length, str(primer.path), WINDOW_WHOLE)

    def clear(self, mode, last_s, span_a, span_b, length, request: gr.Request):
        session = self.session(request)
        return self._primer_outputs(session, NO_PRIMER, {}, length, None, gr.skip())

    def continue_from(self, index: int):
        """A handler for slot `index`: its full MIDI becomes the primer ("continue this output")."""

        def handler(length, request: gr.Request):
            session = self.session(request)
            path = session.variations.get(index)
            if path is None or not Path(path).exists():
                gr.Warning("generate first: there is no output to continue")
                return [gr.skip()] * 5
            primer = Primer.of_file(path)
            return self._primer_outputs(session, primer, {}, length, str(path), WINDOW_WHOLE)

        return handler

    def undo(self, mode, last_s, span_a, span_b, length, request: gr.Request):
        session = self.session(request)
        primer = session.undo()
        if primer is None:
            gr.Info("nothing to undo")
            return [gr.skip()] * 5
        try:
            preview = self._preview(session, primer, window(mode, last_s, span_a, span_b), length)
        except UserFacingError as error:  # the window does not fit the old primer: show it whole
            gr.Warning(f"{error}; showing the whole primer")
            preview, mode = self._preview(session, primer, {}, length), WINDOW_WHOLE
        return [primer_file_value(primer), mode, *preview]

    def refresh(self, mode, last_s, span_a, span_b, length, request: gr.Request):
        """The window or the length changed: the preview and the budget follow."""
        session = self.session(request)
        try:
            return list(self._preview(session, session.primer, window(mode, last_s, span_a, span_b), length))
        except UserFacingError as error:
            return [None, None, f"⚠ {error}"]
        except Exception:
            log.exception("primer preview failed")
            return [None, None, f"⚠ {GENERIC_ERROR}"]

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, mode, last_s, span_a, span_b, length, temperature, top_k, top_p, min_p, seed, variations,
                 request: gr.Request, progress=gr.Progress()):
        """Outputs: the status text, then for each of MAX_VARIATIONS slots
        (group, audio, piano roll, downloads, caption)."""
        session = self.session(request)
        try:
            result = continue_midi(
                self._request(session.primer, output_dir=session.root, length_seconds=length,
                              temperature=float(temperature), top_k=int(top_k or 0), top_p=float(top_p),
                              min_p=float(min_p), seed=_seed(seed), variations=int(variations),
                              **window(mode, last_s, span_a, span_b)),
                progress=_progress_to(progress),
                cancel=session.new_cancel(),
                models=self.models,
            )
        except UserFacingError as error:
            gr.Warning(str(error))
            return [f"⚠ {error}"] + [gr.skip()] * (5 * MAX_VARIATIONS)
        except Exception:
            log.exception("generation failed")
            gr.Warning(GENERIC_ERROR)
            return [f"⚠ {GENERIC_ERROR}"] + [gr.skip()] * (5 * MAX_VARIATIONS)
        session.variations = {v.index: v.files["full_midi"] for v in result.variations}
        slots = []
        for index in range(1, MAX_VARIATIONS + 1):
            v = next((v for v in result.variations if v.index == index), None)
            if v is None:
                slots += [gr.update(visible=False), None, None, None, ""]
                continue
            downloads = [str(v.files[k]) for k in ("full_midi", "continuation_midi", "audio") if k in v.files]
            caption = (f"**Variation {index}** · {v.stats['seconds_of_music']:.1f} s · "
                       f"{v.stats['new_notes']} notes · {v.stats['new_tokens']} tokens")
            slots += [gr.update(visible=True), str(v.files["audio"]), str(v.files["pianoroll"]), downloads, caption]
        return [status_text(result)] + slots

    def stop(self, request: gr.Request):
        """Stop the session's generation; what exists is kept, rendered and shown."""
        self.session(request).cancel.set()

    def closed(self, request: gr.Request):
        """The tab was closed or reloaded: its generation stops (nobody is left to hear it)."""
        self.store.stop(getattr(request, "session_hash", None))

    # ---- the API -------------------------------------------------------------------------------

    def api_continue(self, primer, primer_window_seconds, length_seconds, temperature, top_k, top_p, min_p, seed,
                     variations, request: gr.Request, progress=gr.Progress()):
        """Continue a MIDI primer. primer_window_seconds 0: the whole primer; seed -1: a random
        seed (the summary reports it). Returns lists of files (one per variation): full MIDI,
        continuation MIDI, WAV; and a JSON summary with the seed and each variation's provenance."""
        session = self.session(request)
        try:
            source = _api_primer(primer, self)
            window_s = float(primer_window_seconds or 0)
            result = continue_midi(
                self._request(source, output_dir=session.root,
                              window_seconds=window_s if window_s > 0 else None,
                              length_seconds=float(length_seconds), temperature=float(temperature),
                              top_k=int(top_k or 0), top_p=float(top_p), min_p=float(min_p), seed=_seed(seed),
                              variations=int(variations)),
                progress=_progress_to(progress),
                cancel=session.new_cancel(),
                models=self.models,
            )
        except UserFacingError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:
            log.exception("API generation failed")
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None
        summary = result_summary(result)
        summary["provenance"] = [_no_path_keys(v.provenance) for v in result.variations]
        files = lambda key: [str(v.files[key]) for v in result.variations if key in v.files]  # noqa: E731
        return files("full_midi"), files("continuation_midi"), files("audio"), summary

    def api_preview(self, primer, primer_window_seconds, length_seconds, request: gr.Request):
        """The primer window's token budget for the loaded model: context, latents, primer tokens,
        new tokens expected; and what reading the primer kept and dropped."""
        try:
            source = _api_primer(primer, self)
            window_s = float(primer_window_seconds or 0)
            request_ = self._request(source, window_seconds=window_s if window_s > 0 else None,
                                     length_seconds=float(length_seconds))
            check_request(request_)
            preview = preview_primer(request_, models=self.models)
        except UserFacingError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:
            log.exception("API preview failed")
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None
        return {"primer": source.name, "window_seconds": round(preview.seconds, 3), "budget": preview.budget,
                "report": preview.report}


# ---- small pure helpers ------------------------------------------------------------------------


def _seed(value) -> int | None:
    """Empty or negative: a fresh random seed (the engine picks it and reports it)."""
    if value is None or value == "" or float(value) < 0:
        return None
    return int(value)


def _no_path_keys(value):
    """gradio_client takes any JSON object with a "path" key for a file and tries to download
    it: provenance's {"checkpoint": {"path": ...}} is sent as {"checkpoint": {"location": ...}}."""
    if isinstance(value, dict):
        return {("location" if k == "path" else k): _no_path_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_path_keys(v) for v in value]
    return value


def _api_primer(primer, handlers: Handlers) -> Primer:
    if not primer:
        return NO_PRIMER
    path = Path(primer)
    handlers._check_upload(path)
    return Primer(path, path.name)  # the engine reads and hashes it


def primer_file_value(primer: Primer) -> str | None:
    return str(primer.path) if primer.path else None


def budget_text(primer: Primer, preview, length: float | None) -> str:
    b = preview.budget
    if primer.path is None:
        head = "**No primer**: the model starts from silence."
    else:
        r = preview.report
        total = r.get("duration_seconds") or 0.0
        head = (f"**{primer.name}** · window {preview.seconds:.1f} s of {total:.1f} s · "
                f"{r.get('notes_kept', 0)} notes")
        if r.get("drum_notes_dropped"):
            head += f" · {r['drum_notes_dropped']} drum notes left out"
    dropped = b.get("primer_tokens_dropped", 0)
    rows = [
        f"context **{b.get('context')}** tokens",
        f"latents **{b.get('latents')}**",
        f"primer tokens **{b['primer_tokens']}**" + (f" ({dropped} beyond the context are dropped)" if dropped else ""),
        f"new tokens ≈ **{b.get('new_tokens_estimate', b.get('new_tokens', '?'))}**"
        + (f" for {length:g} s" if length else ""),
    ]
    return head + "\n\n" + " · ".join(rows)


def status_text(result) -> str:
    stats = result.variations[0].stats if result.variations else {}
    tokens = sum(v.stats["new_tokens"] for v in result.variations)
    done = "■ Stopped: kept what was made" if result.cancelled else "✓ Done"
    count = len(result.variations)
    return (f"{done} · {count} variation{'s' if count != 1 else ''} · {tokens} tokens at "
            f"{stats.get('tokens_per_s', 0):,.0f} tokens/s · seed **{result.seed}** · {result.elapsed_s:.1f} s")
