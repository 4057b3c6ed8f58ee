"""The page: a primer column, a settings column, up to four variation slots; and the wiring.

Every UI event is private (`api_visibility="private"`): the browser calls it, API clients
cannot. Two events are the public API, on hidden components: `/continue` and `/preview`
(README, "Web app"). Generation events share one concurrency group ("generate") limited to
`config.concurrency` at a time; requests beyond it wait in Gradio's queue (`config.queue_size`).
"""

from __future__ import annotations

import gradio as gr

from perceiver_music.checkpoint import ModelCache
from perceiver_music.engine import DEFAULT_KEY_HOLD, DEFAULT_LEAD_IN, MAX_KEY_HOLD, MAX_VARIATIONS

from .handlers import WINDOW_LAST, WINDOW_MODES, WINDOW_SPAN, WINDOW_WHOLE, Handlers, WebConfig, new_seed

TITLE = "perceiver-music"
# System fonts only: nothing is fetched from a font service, so the page works offline.
SANS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "DejaVu Sans Mono", "Menlo", "Consolas", "monospace"]
CSS = """
.pm-status { min-height: 2.5em; }
.pm-slot { padding: 8px; }
.pm-live svg { display: block; width: 100%; height: 200px; }
"""
PRIVATE = {"api_visibility": "private"}
# The browser's own <audio> player: it streams the WAV and seeks at once, where the waveform view
# would decode all of it in the page first (the piano roll already shows the music).
PLAYER = {"type": "filepath", "interactive": False,
          "waveform_options": gr.WaveformOptions(show_recording_waveform=False)}


def theme() -> gr.themes.Base:
    return gr.themes.Default(font=SANS, font_mono=MONO)


def build_app(config: WebConfig, models: ModelCache) -> gr.Blocks:
    h = Handlers(config, models)
    generate_group = {"concurrency_id": "generate", "concurrency_limit": config.concurrency}
    preview_group = {"concurrency_id": "preview", "concurrency_limit": 2, "trigger_mode": "always_last"}

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(f"# {TITLE}\nGive a MIDI primer; a Perceiver AR model continues it on this machine.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                primer_file = gr.File(label="Primer: drop a .mid / .midi file here", file_types=[".mid", ".midi"],
                                      type="filepath", elem_id="primer-file")
                example = gr.Dropdown([p.name for p in config.examples], value=None, label="…or an example primer",
                                      visible=bool(config.examples), elem_id="example")
                with gr.Row():
                    mode = gr.Radio(list(WINDOW_MODES), value=WINDOW_WHOLE, label="Continue from",
                                    elem_id="window-mode", scale=3)
                    undo = gr.Button("↶ Undo primer", size="sm", scale=1, elem_id="undo")
                with gr.Row():
                    last_s = gr.Number(10, label="last seconds", minimum=0.1, visible=False, elem_id="last-seconds")
                    span_a = gr.Number(0, label="span from (s)", minimum=0, visible=False, elem_id="span-start")
                    span_b = gr.Number(10, label="span to (s)", minimum=0, visible=False, elem_id="span-end")
                budget = gr.Markdown("**No primer**: the model starts from silence.", elem_id="budget")
                preview_audio = gr.Audio(label="Primer window (its last 30 s)", elem_id="primer-audio", **PLAYER)
                preview_whole = gr.Checkbox(False, label="Play the whole window", elem_id="preview-whole")
                preview_roll = gr.Image(label="Primer piano roll", type="filepath", interactive=False,
                                        elem_id="primer-roll", height=180)
            with gr.Column(scale=1):
                length = gr.Slider(1, 120, value=20, step=1, label="Length to add (seconds)", elem_id="length")
                temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature (0: greedy)",
                                        elem_id="temperature")
                with gr.Row():
                    top_k = gr.Number(0, label="Top-k (0: off)", precision=0, minimum=0, elem_id="top-k")
                    top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p", elem_id="top-p")
                    min_p = gr.Slider(0, 0.5, value=0.0, step=0.01, label="Min-p", elem_id="min-p")
                key_hold = gr.Slider(0, MAX_KEY_HOLD, value=DEFAULT_KEY_HOLD, step=0.1,
                                     label="Key hold (pull toward the key heard so far; 0: off)", elem_id="key-hold")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed", scale=3)
                    dice = gr.Button("⚄ New seed", size="sm", scale=1, elem_id="dice")
                variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations", elem_id="variations")
                with gr.Row():
                    lead_in = gr.Number(DEFAULT_LEAD_IN, label="Lead-in: seconds of primer before the continuation",
                                        minimum=0, maximum=120, elem_id="lead-in", scale=2)
                    allow_end = gr.Checkbox(False, label="Let the model end the piece", elem_id="allow-end",
                                            scale=1)
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.Markdown("", elem_id="status", elem_classes="pm-status")

        slots, slot_outputs, continue_buttons, whole_buttons, whole_audios = [], [], [], [], []
        with gr.Row():
            for index in range(1, MAX_VARIATIONS + 1):
                with gr.Column(visible=False, min_width=280, elem_id=f"variation-{index}",
                               elem_classes="pm-slot") as slot:
                    caption = gr.Markdown(f"**Variation {index}**", elem_id=f"variation-{index}-caption")
                    if index == 1:
                        # Variation 1 as it is written: the lead-in at once, then the continuation.
                        live_audio = gr.Audio(label="Listening as it is written", streaming=True, autoplay=True,
                                              interactive=False, visible=False, elem_id="live-audio")
                    live_roll = gr.HTML("", visible=False, elem_id=f"variation-{index}-live", elem_classes="pm-live")
                    audio = gr.Audio(label=f"Variation {index}: the lead-in, then the continuation",
                                     elem_id=f"variation-{index}-audio", **PLAYER)
                    roll = gr.Image(label="Piano roll", type="filepath", interactive=False, height=200,
                                    elem_id=f"variation-{index}-roll")
                    files = gr.File(label="Downloads: full MIDI, continuation MIDI, WAV", file_count="multiple",
                                    interactive=False, elem_id=f"variation-{index}-files")
                    with gr.Row():
                        whole_button = gr.Button("Render the whole piece", size="sm",
                                                 elem_id=f"variation-{index}-whole")
                        button = gr.Button("Continue this output", size="sm", elem_id=f"variation-{index}-continue")
                    whole_audio = gr.Audio(label="The whole piece", visible=False,
                                           elem_id=f"variation-{index}-whole-audio", **PLAYER)
                slots.append(slot)
                slot_outputs += [slot, audio, roll, files, caption, live_roll, whole_audio]
                continue_buttons.append(button)
                whole_buttons.append(whole_button)
                whole_audios.append(whole_audio)

        # The public API, on hidden components: /continue and /preview.
        with gr.Column(visible=False):
            api_primer = gr.File(label="primer", file_types=[".mid", ".midi"], type="filepath")
            api_window = gr.Number(0, label="primer_window_seconds")
            api_length = gr.Number(20, label="length_seconds")
            api_temperature = gr.Number(1.0, label="temperature")
            api_top_k = gr.Number(0, label="top_k", precision=0)
            api_top_p = gr.Number(0.95, label="top_p")
            api_min_p = gr.Number(0.0, label="min_p")
            api_key_hold = gr.Number(DEFAULT_KEY_HOLD, label="key_hold")
            api_seed = gr.Number(-1, label="seed", precision=0)
            api_variations = gr.Number(1, label="variations", precision=0)
            api_full = gr.File(label="full_midi", file_count="multiple")
            api_continuation = gr.File(label="continuation_midi", file_count="multiple")
            api_audio = gr.File(label="audio", file_count="multiple")
            api_summary = gr.JSON(label="summary")
            api_budget = gr.JSON(label="budget")
            api_lead_in = gr.Number(DEFAULT_LEAD_IN, label="lead_in_seconds")
            api_allow_end = gr.Checkbox(False, label="allow_end")
            api_live_status = gr.JSON(label="status")
            api_live_audio = gr.Audio(label="audio_stream", streaming=True, interactive=False)
            api_live_full = gr.File(label="full_midi", file_count="multiple")
            api_live_files = gr.File(label="audio", file_count="multiple")
            api_live_summary = gr.JSON(label="summary")
            api_continue_button = gr.Button("continue")
            api_live_button = gr.Button("continue_live")
            api_preview_button = gr.Button("preview")

        # ---- wiring ----------------------------------------------------------------------------
        window_inputs = [mode, last_s, span_a, span_b, length]
        primer_outputs = [primer_file, mode, preview_audio, preview_roll, budget]
        preview_outputs = [preview_audio, preview_roll, budget]

        primer_file.upload(h.upload, [primer_file, *window_inputs], primer_outputs, **PRIVATE, **preview_group)
        primer_file.clear(h.clear, window_inputs, primer_outputs, **PRIVATE, **preview_group)
        example.select(h.example, [example, *window_inputs], primer_outputs, **PRIVATE, **preview_group)
        undo.click(h.undo, window_inputs, primer_outputs, **PRIVATE, **preview_group)
        for index, button in enumerate(continue_buttons, start=1):
            button.click(h.continue_from(index), [length], primer_outputs, **PRIVATE, **preview_group)
        for index, (button, target) in enumerate(zip(whole_buttons, whole_audios), start=1):
            button.click(h.whole_piece(index), None, target, **PRIVATE, **preview_group)
        preview_whole.change(h.set_preview_whole, [preview_whole, *window_inputs], preview_outputs,
                             show_progress="minimal", **PRIVATE, **preview_group)

        mode.change(lambda m: [gr.update(visible=m == WINDOW_LAST), gr.update(visible=m == WINDOW_SPAN),
                               gr.update(visible=m == WINDOW_SPAN)],
                    mode, [last_s, span_a, span_b], queue=False, show_progress="hidden", **PRIVATE)
        gr.on([mode.input, last_s.submit, last_s.blur, span_a.submit, span_a.blur, span_b.submit, span_b.blur,
               length.change], h.refresh, window_inputs, preview_outputs, show_progress="minimal",
              **PRIVATE, **preview_group)

        dice.click(new_seed, None, seed, queue=False, show_progress="hidden", **PRIVATE)
        generate.click(h.generate, [*window_inputs, temperature, top_k, top_p, min_p, key_hold, seed, variations,
                                    lead_in, allow_end],
                       [status, live_audio, *slot_outputs], show_progress="hidden", **PRIVATE, **generate_group)
        stop.click(h.stop, None, None, queue=False, show_progress="hidden", **PRIVATE)
        demo.load(new_seed, None, seed, show_progress="hidden", **PRIVATE)  # a fresh seed per tab
        demo.load(h.refresh, window_inputs, preview_outputs, show_progress="hidden", **PRIVATE)  # the budget
        demo.unload(h.closed)

        api_continue_button.click(
            h.api_continue,
            [api_primer, api_window, api_length, api_temperature, api_top_k, api_top_p, api_min_p, api_seed,
             api_variations, api_key_hold],
            [api_full, api_continuation, api_audio, api_summary],
            api_name="continue", **generate_group)
        api_live_button.click(
            h.api_continue_live,
            [api_primer, api_window, api_length, api_temperature, api_top_k, api_top_p, api_min_p, api_seed,
             api_variations, api_lead_in, api_allow_end, api_key_hold],
            [api_live_status, api_live_audio, api_live_full, api_live_files, api_live_summary],
            api_name="continue_live", **generate_group)
        api_preview_button.click(h.api_preview, [api_primer, api_window, api_length], api_budget,
                                 api_name="preview", concurrency_id="preview", concurrency_limit=2)

    demo.queue(max_size=config.queue_size, default_concurrency_limit=1)
    demo.handlers = h  # for tests and launch: the sessions and the config behind the page
    return demo


def launch_options(config: WebConfig) -> dict:
    """What `demo.launch` needs besides host, port, auth and the browser: private by default."""
    return {
        "share": False,
        "theme": theme(),
        "css": CSS,
        "allowed_paths": [str(config.output_dir)],
        "max_file_size": int(config.max_upload_mb * 1024 * 1024),
        "footer_links": ["api", "settings"],
        "run_history": False,
        "enable_monitoring": False,
        "mcp_server": False,
        "pwa": False,
        "ssr_mode": False,
        "show_error": False,
    }
