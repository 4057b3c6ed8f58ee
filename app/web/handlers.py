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
from perceiver_music.engine import (DEFAULT_KEY_HOLD, DEFAULT_LEAD_IN, MAX_VARIATIONS, ContinueRequest, Progress,
                                    check_request, continue_midi, preview_primer, primer_audio_notes,
                                    result_summary)
from perceiver_music.errors import BadMidiError, UserFacingError

from .session import NO_PRIMER, Primer, Session, SessionStore, copy_into

log = logging.getLogger("perceiver_music.web")

GENERIC_ERROR = "something went wrong on the server; the details are in its log"
WINDOW_WHOLE, WINDOW_LAST, WINDOW_SPAN = "whole primer", "last seconds", "span"
WINDOW_MODES = (WINDOW_WHOLE, WINDOW_LAST, WINDOW_SPAN)
PREVIEWS_KEPT = 8  # rendered primer previews kept per session
PREVIEW_SECONDS = 30.0  # the primer window's player: its last 30 s unless the whole is asked for
LIVE_INTERVAL_S = 0.4  # the streamed view: a piano roll per variation (and audio) this often
FIRST_NOTES_WAIT_S = 0.3  # the first update waits this long for the first notes, not longer
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

    def _preview(self, session: Session, primer: Primer, win: dict, length: float | None,
                 whole: bool | None = None) -> tuple:
        """(primer audio, piano roll, budget text) for a primer and window; files are cached.
        The audio is the window's last PREVIEW_SECONDS unless `whole`; both keep the primer's
        own instruments and drums."""
        from perceiver_music.pianoroll import pianoroll_png
        from perceiver_music.render import performance_of_notes, render, write_audio

        request = self._request(primer, length_seconds=length, **win)
        check_request(request)
        preview = preview_primer(request, models=self.models)
        budget = budget_text(primer, preview, length)
        if not preview.sequence.notes:
            return None, None, budget
        whole = session.preview_whole if whole is None else whole
        if not whole and preview.seconds > PREVIEW_SECONDS:
            budget += f"\n\nThe player has the window's last {PREVIEW_SECONDS:.0f} s; tick *whole window* for all of it."
        key = (str(primer.path), tuple(sorted((k, str(v)) for k, v in win.items())), bool(whole))
        if key not in session.previews:
            from perceiver_music.engine import NoteList

            folder = session.folder("previews", uuid.uuid4().hex[:8])
            notes, _ = primer_audio_notes(preview, None if whole else PREVIEW_SECONDS)
            audio = render(performance_of_notes(notes), soundfont=self.config.soundfont)
            audio_path = write_audio(folder / "primer.wav", audio, 44100)
            roll = pianoroll_png(NoteList(preview.written, preview.seconds), title=f"{primer.name} · primer window")
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

    def generate(self, mode, last_s, span_a, span_b, length, temperature, top_k, top_p, min_p, key_hold, seed,
                 variations, lead_in, allow_end, request: gr.Request):
        """A generator (Gradio streams what it yields). Outputs: the status text, the streamed
        audio of variation 1, then for each of MAX_VARIATIONS slots (group, audio, piano roll,
        downloads, caption, live piano roll, whole-piece audio).

        While the model writes, every LIVE_INTERVAL_S: the status (tokens/s, how much faster than
        the music), each variation's piano roll so far and, where the music is written faster
        than it plays, variation 1's audio: the lead-in at once, then the continuation as it is
        written. At the end the finished, seekable audio and the piano roll replace them."""
        session = self.session(request)
        count = max(1, min(MAX_VARIATIONS, int(variations or 1)))
        try:
            engine_request = self._request(
                session.primer, output_dir=session.root, length_seconds=length, temperature=float(temperature),
                top_k=int(top_k or 0), top_p=float(top_p), min_p=float(min_p), key_hold=_key_hold(key_hold),
                seed=_seed(seed), variations=int(variations), lead_in_seconds=_lead_in(lead_in),
                allow_end=bool(allow_end),
                **window(mode, last_s, span_a, span_b))
            check_request(engine_request)
        except UserFacingError as error:
            gr.Warning(str(error))
            yield [f"⚠ {error}", gr.skip()] + [gr.skip()] * (SLOT_OUTPUTS * MAX_VARIATIONS)
            return
        yield ["starting…", gr.update(value=None, visible=True)] + _live_slots(count)
        for update in stream_generation(self, engine_request, session, count):
            if update[0] == "live":
                _, status, audio_chunk, rolls, _ = update
                slots = []
                for index in range(1, MAX_VARIATIONS + 1):
                    roll = rolls.get(index)
                    slots += [gr.skip()] * 5 + [roll if roll is not None else gr.skip(), gr.skip()]
                yield [status, audio_chunk] + slots
                continue
            _, result, error = update
            if error is not None:
                yield [f"⚠ {error}", gr.update(visible=False)] + [gr.skip()] * (SLOT_OUTPUTS * MAX_VARIATIONS)
                return
            yield [status_text(result), gr.update(value=None, visible=False)] + self._final_slots(session, result)

    def _final_slots(self, session: Session, result) -> list:
        session.variations = {v.index: v.files["full_midi"] for v in result.variations}
        slots = []
        for index in range(1, MAX_VARIATIONS + 1):
            v = next((v for v in result.variations if v.index == index), None)
            if v is None:
                slots += [gr.update(visible=False), None, None, None, "", gr.update(value="", visible=False),
                          gr.update(value=None, visible=False)]
                continue
            downloads = [str(v.files[k]) for k in ("full_midi", "continuation_midi", "audio") if k in v.files]
            caption = (f"**Variation {index}** · {v.stats['seconds_of_music']:.1f} s · "
                       f"{v.stats['new_notes']} notes · {v.stats['new_tokens']} tokens")
            if v.lead_in_seconds and v.audio_start_seconds > 0:
                caption += f" · the audio starts {v.lead_in_seconds:.0f} s before the seam"
            if v.notice:
                caption += f"\n\n⏹ {v.notice}"
            audio = str(v.files["audio"]) if "audio" in v.files else None
            slots += [gr.update(visible=True), gr.update(value=audio, visible=True),
                      gr.update(value=str(v.files["pianoroll"]), visible=True), downloads, caption,
                      gr.update(value="", visible=False), gr.update(value=None, visible=False)]
        return slots

    def whole_piece(self, index: int):
        """A handler for slot `index`: render its whole piece (primer window + continuation)."""

        def handler(request: gr.Request):
            from perceiver_music.render import render, write_audio

            session = self.session(request)
            path = session.variations.get(index)
            if path is None or not Path(path).exists():
                gr.Warning("generate first: there is no piece to render")
                return gr.skip()
            target = Path(path).with_name(Path(path).name.replace("-full.mid", "-whole.wav"))
            if not target.exists():
                try:
                    write_audio(target, render(path, soundfont=self.config.soundfont), 44100)
                except UserFacingError as error:
                    gr.Warning(str(error))
                    return gr.skip()
            return gr.update(value=str(target), visible=True)

        return handler

    def set_preview_whole(self, whole, mode, last_s, span_a, span_b, length, request: gr.Request):
        self.session(request).preview_whole = bool(whole)
        return self.refresh(mode, last_s, span_a, span_b, length, request)

    def stop(self, request: gr.Request):
        """Stop the session's generation; what exists is kept, rendered and shown."""
        self.session(request).cancel.set()

    def closed(self, request: gr.Request):
        """The tab was closed or reloaded: its generation stops (nobody is left to hear it)."""
        self.store.stop(getattr(request, "session_hash", None))

    # ---- the API -------------------------------------------------------------------------------

    def api_continue(self, primer, primer_window_seconds, length_seconds, temperature, top_k, top_p, min_p, seed,
                     variations, key_hold=None, request: gr.Request = None, progress=gr.Progress()):
        """Continue a MIDI primer. primer_window_seconds 0: the whole primer; seed -1: a random
        seed (the summary reports it); key_hold None: the engine's default. Returns lists of
        files (one per variation): full MIDI, continuation MIDI, WAV; and a JSON summary with
        the seed and each variation's provenance."""
        session = self.session(request)
        try:
            source = _api_primer(primer, self)
            window_s = float(primer_window_seconds or 0)
            result = continue_midi(
                self._request(source, output_dir=session.root,
                              window_seconds=window_s if window_s > 0 else None,
                              length_seconds=float(length_seconds), temperature=float(temperature),
                              top_k=int(top_k or 0), top_p=float(top_p), min_p=float(min_p), seed=_seed(seed),
                              variations=int(variations), key_hold=_key_hold(key_hold)),
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

    def api_continue_live(self, primer, primer_window_seconds, length_seconds, temperature, top_k, top_p, min_p,
                          seed, variations, lead_in_seconds, allow_end, key_hold=None, request: gr.Request = None):
        """/continue, streamed: yields (status JSON, audio chunk, full MIDI files, audio files,
        summary) as the page gets them: the status every LIVE_INTERVAL_S with the ids and seconds
        written per variation, variation 1's audio as it is written (where faster than the
        music), and at the end the files and the summary. lead_in_seconds < 0: the whole piece."""
        session = self.session(request)
        try:
            source = _api_primer(primer, self)
            window_s = float(primer_window_seconds or 0)
            lead = float(lead_in_seconds if lead_in_seconds is not None else DEFAULT_LEAD_IN)
            engine_request = self._request(
                source, output_dir=session.root, window_seconds=window_s if window_s > 0 else None,
                length_seconds=float(length_seconds), temperature=float(temperature), top_k=int(top_k or 0),
                top_p=float(top_p), min_p=float(min_p), seed=_seed(seed), variations=int(variations),
                lead_in_seconds=None if lead < 0 else lead, allow_end=bool(allow_end), key_hold=_key_hold(key_hold))
            check_request(engine_request)
        except UserFacingError as error:
            raise gr.Error(str(error), print_exception=False) from None
        yield {"stage": "starting"}, None, None, None, None
        for update in stream_generation(self, engine_request, session, engine_request.variations, rolls=False):
            if update[0] == "live":
                _, status, audio_chunk, _, numbers = update
                yield {"stage": "generating", "status": status, **numbers}, audio_chunk, None, None, None
                continue
            _, result, error = update
            if error is not None:
                raise gr.Error(error, print_exception=False)
            summary = result_summary(result)
            summary["provenance"] = [_no_path_keys(v.provenance) for v in result.variations]
            files = lambda key: [str(v.files[key]) for v in result.variations if key in v.files]  # noqa: E731
            yield {"stage": "done", "status": status_text(result)}, None, files("full_midi"), files("audio"), summary

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


# ---- streaming a generation ----------------------------------------------------------------------

SLOT_OUTPUTS = 7  # per slot: group, audio, piano roll, downloads, caption, live roll, whole-piece audio


def _live_slots(count: int) -> list:
    """Slots as a generation starts: the first `count` shown with an empty live roll."""
    slots = []
    for index in range(1, MAX_VARIATIONS + 1):
        shown = index <= count
        slots += [gr.update(visible=shown), gr.update(value=None, visible=False),
                  gr.update(value=None, visible=False), None, f"**Variation {index}** · writing…" if shown else "",
                  gr.update(value="", visible=shown), gr.update(value=None, visible=False)]
    return slots


def _stream_audio_possible() -> bool:
    """Gradio encodes a streamed audio output with ffmpeg."""
    import shutil

    return shutil.which("ffmpeg") is not None


def stream_generation(handlers: "Handlers", engine_request: ContinueRequest, session: Session, count: int,
                      rolls: bool = True):
    """Run the engine in a thread and yield ("live", status, audio chunk or None, {slot: svg},
    figures) every LIVE_INTERVAL_S, then ("done", result, error text or None). The page and the
    API share it."""
    import threading

    from perceiver_music.live import AudioStream, LiveRun
    from perceiver_music.render import audio_to_wav_bytes

    live = LiveRun()
    outcome: dict = {}
    cancel = session.new_cancel()

    def run() -> None:
        try:
            outcome["result"] = continue_midi(engine_request, cancel=cancel, models=handlers.models, live=live)
        except UserFacingError as error:
            outcome["error"] = str(error)
        except Exception:  # noqa: BLE001 - logged with its traceback; the page gets one line
            log.exception("generation failed")
            outcome["error"] = GENERIC_ERROR

    thread = threading.Thread(target=run, daemon=True, name="perceiver-music-generate")
    clicked = time.monotonic()
    thread.start()
    stream = AudioStream(live, handlers.config.soundfont, engine_request.sample_rate)
    streaming = engine_request.render_audio and _stream_audio_possible()
    said_loading = False
    try:
        while thread.is_alive():
            # Quick looks until the lead-in and the first notes are out, then every LIVE_INTERVAL_S.
            first_notes = live.ready.is_set() and bool(live.ids(0)) and (stream.audio is not None or not streaming)
            thread.join(LIVE_INTERVAL_S if first_notes else 0.05)
            if not live.ready.is_set():
                if thread.is_alive() and not said_loading:
                    said_loading = True
                    yield "live", "loading the model and reading the primer…", None, {}, {}
                continue
            chunk = None
            elapsed = live.elapsed()
            ids = [live.ids(row) for row in range(count)]
            if not ids[0] and elapsed < FIRST_NOTES_WAIT_S and thread.is_alive():
                # The first ids come within a few reset-times of the start: wait for them, so the
                # first update carries the notes with the lead-in (each update is encoded before
                # the next is taken, so a lead-in sent alone delays the notes by its encoding).
                continue
            seconds0 = live.frame(0)[1] if count else 0.0
            ratio = seconds0 / elapsed if elapsed > 0.05 else 0.0
            try:
                chunk = stream.poll() if streaming else None
                streaming = streaming and stream.streaming  # slower than the music: the audio comes when done
            except Exception:  # noqa: BLE001 - the stream is a bonus: the final audio still comes
                log.exception("streamed audio failed; the finished audio will follow")
                streaming, chunk = False, None
            svgs = {row + 1: live.svg(row) for row in range(count)} if rolls else {}
            tokens = sum(len(i) for i in ids)
            rate = tokens / elapsed if elapsed > 0 else 0.0
            asked = engine_request.length_seconds
            status = (f"generating · {rate:,.0f} tokens/s · {seconds0:.1f}"
                      + (f" of {asked:g}" if asked else "") + " s written")
            if ratio:
                status += f" · ×{ratio:.1f} the music's speed"
            if stream.too_slow:
                status += " · slower than the music: the audio comes when it is done"
            numbers = {"seconds_written": [round(live.frame(r)[1], 2) for r in range(count)],
                                      "ids": [len(i) for i in ids], "since_click_s": round(time.monotonic() - clicked, 3),
                                      "audio_seconds": round(stream.seconds, 3)}
            wav = audio_to_wav_bytes(chunk, engine_request.sample_rate) if chunk is not None and len(chunk) else None
            numbers["audio_sent"] = wav is not None or numbers["audio_seconds"] > 0
            yield "live", status, wav, svgs, numbers
        thread.join()
    finally:
        if thread.is_alive():  # the client went away: stop the work
            cancel.set()
        stream.close()
    yield "done", outcome.get("result"), outcome.get("error")


def _lead_in(value) -> float | None:
    """The page's lead-in control: seconds, or empty / negative for the whole piece."""
    if value is None or value == "" or float(value) < 0:
        return None
    return float(value)


# ---- small pure helpers ------------------------------------------------------------------------


def _key_hold(value) -> float:
    """Empty (an API client that leaves it out): the engine's default."""
    return DEFAULT_KEY_HOLD if value is None or value == "" else float(value)


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
    text = (f"{done} · {count} variation{'s' if count != 1 else ''} · {tokens} tokens at "
            f"{stats.get('tokens_per_s', 0):,.0f} tokens/s · seed **{result.seed}** · {result.elapsed_s:.1f} s")
    ended = [v for v in result.variations if v.stats.get("ended_by_model")]
    for v in ended:
        text += (f"\n\n⏹ The model ended variation {v.index} after {v.stats['seconds_of_music']:.1f} s "
                 "(*Let the model end the piece* is on).")
    if result.notice:
        text += f"\n\n🎹 {result.notice}"
    return text
