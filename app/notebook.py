"""The notebook front end: an ipywidgets panel over the engine.

    from app.notebook import ContinuationWidget
    w = ContinuationWidget("song.mid", length=20, variations=2)   # or upload a primer in the panel
    w                          # shows the panel: Generate, Stop, progress, audio, piano roll, downloads
    w.generate(wait=True)      # the same as clicking Generate, for scripts and tests
    w.result                   # the engine's ContinueResult (MIDI bytes, audio, stats, provenance)

Generation runs in a background thread, so the kernel stays free: Stop (a threading.Event the
engine checks every step) works while it runs, and the progress bar and the tokens/s label are
updated from that thread; a watcher thread draws each variation's piano roll as it is written
(`live.LiveRun`, twice a second) and, where the model writes faster than the music plays, streams
variation 1's audio to the browser (`notebook_audio.StreamPlayer`: the lead-in at once, then the
continuation as it is written). The finished audio is the primer's last seconds (Lead-in) and the
continuation; "Render the whole piece" renders the primer window and the continuation on demand.
No model logic lives here: a request goes to `engine.continue_midi`.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from perceiver_music.engine import (DEFAULT_KEY_HOLD, DEFAULT_LEAD_IN, MAX_KEY_HOLD, MAX_VARIATIONS, ContinueRequest,
                                    ContinueResult, Progress, continue_midi, render_full, result_summary)
from perceiver_music.errors import UserFacingError

from .notebook_audio import StreamPlayer

log = logging.getLogger(__name__)

MIDI_ACCEPT = ".mid,.midi,.kar,.smf"
_WIDE = {"style": {"description_width": "120px"}, "layout": widgets.Layout(width="460px")}
LIVE_INTERVAL_S = 0.5  # the live piano rolls are redrawn this often while the model writes


class ContinuationWidget:
    """A primer in, continuations out: the same controls as the web UI, in a notebook.

    `primer` is a MIDI path, MIDI bytes or None (start from nothing; or upload one in the panel).
    The keyword arguments set the controls' first values. `checkpoint` None is the embedded
    model; `output_dir` also writes every result into a folder of its own under it.
    """

    def __init__(
        self,
        primer: str | os.PathLike | bytes | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        output_dir: str | os.PathLike | None = None,
        soundfont: str | os.PathLike | None = None,
        device: str = "auto",
        window: float | None = None,
        length: float = 20.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.95,
        min_p: float = 0.0,
        key_hold: float = DEFAULT_KEY_HOLD,
        seed: int | None = None,
        variations: int = 1,
        lead_in: float = DEFAULT_LEAD_IN,
        allow_end: bool = False,
        sample_rate: int = 44100,
        render_audio: bool = True,
        models: Any = None,
    ):
        self.checkpoint = checkpoint
        self.output_dir = output_dir
        self.soundfont = soundfont
        self.device = device
        self.sample_rate = sample_rate
        self.render_audio = render_audio
        self.models = models
        self.result: ContinueResult | None = None
        self.error: BaseException | None = None  # the last run's error, if it failed
        self._primer: bytes | str | None = None
        self._primer_name: str | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._unit = "s"

        self.upload = widgets.FileUpload(accept=MIDI_ACCEPT, multiple=False, description="Primer")
        self.primer_label = widgets.HTML()
        self.no_primer_button = widgets.Button(description="No primer", tooltip="start from nothing")
        self.window = widgets.FloatSlider(value=window or 0.0, min=0.0, max=120.0, step=1.0,
                                          description="Window (s)", readout_format=".0f",
                                          tooltip="continue from the last S seconds of the primer (0: all of it)",
                                          **_WIDE)
        self.length = widgets.FloatSlider(value=length, min=1.0, max=120.0, step=1.0, description="Length (s)",
                                          readout_format=".0f", tooltip="seconds of music to add", **_WIDE)
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                               description="Temperature", tooltip="0 is greedy", **_WIDE)
        self.top_k = widgets.IntSlider(value=top_k, min=0, max=128, description="Top-k", tooltip="0: off", **_WIDE)
        self.top_p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.01, description="Top-p", **_WIDE)
        self.min_p = widgets.FloatSlider(value=min_p, min=0.0, max=0.5, step=0.01, description="Min-p", **_WIDE)
        self.key_hold = widgets.FloatSlider(value=key_hold, min=0.0, max=MAX_KEY_HOLD, step=0.1, description="Key hold",
                                            tooltip="pull toward the key heard so far (0: off)", **_WIDE)
        self.seed = widgets.IntText(value=seed if seed is not None else secrets.randbelow(2**31),
                                    description="Seed", style=_WIDE["style"], layout=widgets.Layout(width="300px"))
        self.dice_button = widgets.Button(description="🎲", tooltip="a new random seed",
                                          layout=widgets.Layout(width="44px"))
        self.new_seed = widgets.Checkbox(value=seed is None, description="new seed each time", indent=False)
        self.variations = widgets.IntSlider(value=variations, min=1, max=MAX_VARIATIONS, description="Variations",
                                            **_WIDE)
        self.lead_in = widgets.FloatSlider(value=lead_in, min=0.0, max=60.0, step=1.0, description="Lead-in (s)",
                                           readout_format=".0f",
                                           tooltip="seconds of primer before the continuation in the audio", **_WIDE)
        self.allow_end = widgets.Checkbox(value=allow_end, description="Let the model end the piece", indent=False)
        self.live = widgets.HTML()  # the piano rolls as they are written
        self.stream_player = StreamPlayer()  # variation 1's audio as it is written
        self.live_frames = 0  # redrawn so far in the last run (for tests)
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="300px"))
        self.status = widgets.Label(value="ready")
        self.results = widgets.VBox()

        self.upload.observe(self._on_upload, names="value")
        self.no_primer_button.on_click(lambda _: self.set_primer(None))
        self.dice_button.on_click(lambda _: self.roll_seed())
        self.generate_button.on_click(lambda _: self._click_generate())
        self.stop_button.on_click(lambda _: self.stop())

        self.box = widgets.VBox([
            widgets.HBox([self.upload, self.no_primer_button, self.primer_label]),
            self.window, self.length, self.temperature, self.top_k, self.top_p, self.min_p, self.key_hold,
            widgets.HBox([self.seed, self.dice_button, self.new_seed]),
            self.variations,
            widgets.HBox([self.lead_in, self.allow_end]),
            widgets.HBox([self.generate_button, self.stop_button, self.progress, self.status]),
            self.stream_player,
            self.live,
            self.results,
        ])
        self.set_primer(primer)

    # ---- display ------------------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "running" if self.running else ("a result" if self.result else "no result yet")
        return f"<ContinuationWidget primer={self._primer_name or 'none'}: {state}>"

    # ---- inputs -------------------------------------------------------------------------------------

    def set_primer(self, primer: str | os.PathLike | bytes | None, name: str | None = None) -> None:
        """A MIDI path, MIDI bytes, or None to start from nothing (read when Generate is pressed)."""
        if primer is None:
            self._primer, self._primer_name = None, None
            self.primer_label.value = "<i>no primer: the music starts from nothing</i>"
            return
        if isinstance(primer, (bytes, bytearray, memoryview)):
            self._primer, self._primer_name = bytes(primer), name or "primer.mid"
            size = len(self._primer)
        else:
            self._primer, self._primer_name = str(primer), name or Path(primer).name
            size = Path(primer).stat().st_size if Path(primer).is_file() else 0
        self.primer_label.value = f"<b>{html.escape(self._primer_name)}</b> ({size / 1024:.1f} KB)"

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            item = files[0]
            self.set_primer(bytes(item["content"]), item.get("name") or "upload.mid")

    def roll_seed(self) -> int:
        self.seed.value = secrets.randbelow(2**31)
        return self.seed.value

    def request(self) -> ContinueRequest:
        """The engine request the controls describe now."""
        return ContinueRequest(
            primer=self._primer,
            primer_name=self._primer_name,
            window_seconds=self.window.value or None,
            length_seconds=float(self.length.value),
            temperature=float(self.temperature.value),
            top_k=int(self.top_k.value),
            top_p=float(self.top_p.value),
            min_p=float(self.min_p.value),
            key_hold=float(self.key_hold.value),
            seed=int(self.seed.value),
            variations=int(self.variations.value),
            lead_in_seconds=float(self.lead_in.value),
            allow_end=bool(self.allow_end.value),
            soundfont=self.soundfont,
            sample_rate=self.sample_rate,
            render_audio=self.render_audio,
            checkpoint=self.checkpoint,
            device=self.device,
            output_dir=self.output_dir,
        )

    # ---- running ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _click_generate(self) -> None:
        try:
            self.generate(wait=False)
        except UserFacingError as error:  # shown in the panel by generate(); the button must not raise
            self.error = error

    def generate(self, wait: bool = False, timeout: float | None = None) -> ContinueResult | None:
        """Start a generation in a background thread (what the Generate button does).

        With wait=True, block until it ends and return the result, raising its error if it
        failed (a UserFacingError for bad input); otherwise return None at once.
        """
        if self.running:
            raise RuntimeError("a generation is running already: stop it or wait for it")
        if self.new_seed.value:
            self.roll_seed()
        request = self.request()
        self.error = None
        self._cancel = threading.Event()
        self.generate_button.disabled = True
        self.stop_button.disabled = False
        self.progress.bar_style = "info"
        self.progress.value, self.progress.max = 0.0, 1.0
        self.status.value = "starting"
        self._thread = threading.Thread(target=self._run, args=(request, self._cancel), daemon=True,
                                        name="perceiver-music-generate")
        self._thread.start()
        if not wait:
            return None
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> ContinueResult | None:
        """Wait for the running generation; its result, or its error raised."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the generation is still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self) -> None:
        """Stop the running generation: what exists so far is kept, rendered and shown."""
        self._cancel.set()
        self.status.value = "stopping"

    def _watch(self, live, done: threading.Event, request: ContinueRequest) -> None:
        """Redraw the live piano rolls and stream variation 1's audio until the run ends."""
        from perceiver_music.live import AudioStream

        self.live_frames = 0
        stream = AudioStream(live, request.soundfont, request.sample_rate) if request.render_audio else None
        try:
            # quick looks until the lead-in is out (it plays at once), then every LIVE_INTERVAL_S
            while not done.wait(LIVE_INTERVAL_S if stream is None or stream.audio is not None else 0.05):
                if not live.ready.is_set():
                    continue
                stream = self._stream_some(stream)
                rolls = "".join(f"<div><b>Variation {row + 1}</b> · writing…{live.svg(row)}</div>"
                                for row in range(live.rows))
                self.live.value = f'<div style="max-width:900px">{rolls}</div>'
                self.live_frames += 1
            if stream is not None and stream.audio is not None and stream.streaming:
                stream = self._stream_some(stream)  # the engine has finished it: its tail
                self.stream_player.end()
        finally:
            if stream is not None:
                stream.close()

    def _stream_some(self, stream):
        """Send what the stream has now; the stream, or None once it failed."""
        if stream is None or not stream.streaming:
            return stream
        try:
            started = stream.audio is not None
            chunk = stream.poll()
            if not started and stream.audio is not None:
                self.stream_player.start(stream.sample_rate)
            if stream.too_slow:
                self.stream_player.end("slower than the music: the audio comes when it is done")
            elif chunk is not None:
                self.stream_player.feed(chunk)
            return stream
        except Exception:  # noqa: BLE001 - the stream is a bonus: the finished audio still comes
            log.exception("streamed audio failed; the finished audio will follow")
            self.stream_player.stop("the stream failed: the audio comes when it is done")
            stream.close()
            return None

    def _run(self, request: ContinueRequest, cancel: threading.Event) -> None:
        from perceiver_music.live import LiveRun

        self._unit = "ids" if request.length_tokens is not None else "s"  # what the engine counts
        self._started = None
        live, done = LiveRun(), threading.Event()
        watcher = threading.Thread(target=self._watch, args=(live, done, request), daemon=True)
        watcher.start()
        try:
            try:
                result = continue_midi(request, progress=self._on_progress, cancel=cancel, models=self.models,
                                       live=live)
            finally:
                done.set()
                watcher.join()
                self.live.value = ""
            self.result = result
            self._show(result)
            self.progress.bar_style = "warning" if result.cancelled else "success"
            self.progress.value = self.progress.max
            speed = result.variations[0].stats["tokens_per_s"] if result.variations else 0
            what = "stopped" if result.cancelled else "done"
            notes = [v.notice for v in result.variations if v.notice] + ([result.notice] if result.notice else [])
            self.status.value = (f"{what}: seed {result.seed}, {len(result.variations)} variation(s) in "
                                 f"{result.elapsed_s:.1f} s, {speed:.0f} tokens/s" + "".join(f" · {n}" for n in notes))
        except UserFacingError as error:
            self.error = error
            self.progress.bar_style = "danger"
            self.status.value = f"error: {error}"
        except Exception as error:  # noqa: BLE001 - a bug; shown in one line, raised by wait()
            self.error = error
            self.progress.bar_style = "danger"
            self.status.value = f"error: {type(error).__name__}: {' '.join(str(error).split())}"
        finally:
            self.generate_button.disabled = False
            self.stop_button.disabled = True

    def _on_progress(self, event: Progress) -> None:
        if event.stage == "generating":
            import time

            self._started = getattr(self, "_started", None) or time.monotonic()
            self.progress.max = max(float(event.total), 1e-9)
            self.progress.value = min(float(event.done), self.progress.max)
            elapsed = time.monotonic() - self._started
            speed = (f" · ×{event.done / elapsed:.1f} the music's speed"
                     if self._unit == "s" and elapsed > 0.2 and event.done > 0 else "")
            self.status.value = (f"generating {event.done:.1f} / {event.total:.1f} {self._unit} · "
                                 f"{event.tokens_per_s:.0f} tokens/s{speed}")
        elif event.stage == "loading":
            self.status.value = event.message or "loading the model"
        elif event.stage == "rendering":
            self.status.value = event.message or "rendering"

    # ---- results ------------------------------------------------------------------------------------

    def summary(self) -> dict | None:
        """The JSON-friendly summary of the last result (seed, seam, per variation stats and files)."""
        return result_summary(self.result) if self.result is not None else None

    def render_whole(self, index: int):
        """Render variation `index` (1-based) of the last result as the whole piece (the primer
        window and the continuation); also shown in its panel. Returns the audio."""
        if self.result is None:
            raise RuntimeError("nothing generated yet")
        variation = self.result.variations[index - 1]
        audio = render_full(variation, soundfont=self.soundfont, sample_rate=self.sample_rate)
        from perceiver_music.render import audio_to_wav_bytes

        panel = self.results.children[index - 1]
        player = widgets.Audio(value=audio_to_wav_bytes(audio, self.sample_rate), format="wav", autoplay=False,
                               controls=True)
        panel.children = tuple(panel.children) + (widgets.HTML("<b>The whole piece</b>"), player)
        return audio

    def continue_variation(self, index: int) -> None:
        """Make variation `index` (1-based) of the last result the primer: "continue this"."""
        if self.result is None:
            raise RuntimeError("nothing generated yet")
        variation = self.result.variations[index - 1]
        self.set_primer(variation.full_midi, f"variation-{index}-seed-{self.result.seed}.mid")
        self.window.value = 0.0

    def _show(self, result: ContinueResult) -> None:
        panels = []
        for variation in result.variations:
            stats = variation.stats
            lead = (f" · the audio: the primer's last {variation.lead_in_seconds:.0f} s, then the continuation"
                    if variation.audio_start_seconds > 0 else "")
            title = widgets.HTML(
                f"<b>Variation {variation.index}</b> · seed {result.seed} · {stats['seconds_of_music']:.1f} s, "
                f"{stats['new_notes']} notes, {stats['new_tokens']} tokens"
                + (" · <i>stopped early</i>" if result.cancelled else "") + lead
                + (f"<br>⏹ {html.escape(variation.notice)}" if variation.notice else "")
                + (f"<br>🎹 {html.escape(result.notice)}" if result.notice else "")
            )
            parts: list[widgets.Widget] = [title]
            if variation.audio is not None:
                from perceiver_music.render import audio_to_wav_bytes

                parts.append(widgets.Audio(value=audio_to_wav_bytes(variation.audio, variation.sample_rate),
                                           format="wav", autoplay=False, controls=True))
            parts.append(widgets.Image(value=variation.pianoroll_png, format="png",
                                       layout=widgets.Layout(max_width="100%")))
            parts.append(widgets.HTML(_downloads(variation, result.seed)))
            whole = widgets.Button(description="Render the whole piece",
                                   tooltip="the primer window and the continuation", layout=widgets.Layout(width="200px"))
            whole.on_click(lambda _, i=variation.index: self.render_whole(i))
            again = widgets.Button(description="Continue this", tooltip="use this variation as the primer")
            again.on_click(lambda _, i=variation.index: self.continue_variation(i))
            parts.append(widgets.HBox([whole, again]))
            panels.append(widgets.VBox(parts, layout=widgets.Layout(border="1px solid #ddd", padding="6px",
                                                                    margin="4px 0")))
        self.results.children = tuple(panels)


def _data_link(data: bytes, mime: str, filename: str, label: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<a download="{html.escape(filename)}" href="data:{mime};base64,{encoded}" '
            f'target="_blank">{html.escape(label)}</a>')


def _downloads(variation, seed: int) -> str:
    stem = f"continuation-seed{seed}-v{variation.index}"
    links = [
        _data_link(variation.full_midi, "audio/midi", f"{stem}-full.mid", "full MIDI (primer + continuation)"),
        _data_link(variation.continuation_midi, "audio/midi", f"{stem}.mid", "continuation MIDI"),
    ]
    text = "Download: " + " · ".join(links)
    if variation.files:
        written = ", ".join(f"<code>{html.escape(str(p))}</code>" for p in variation.files.values())
        text += f"<br>Written: {written}"
    return text
