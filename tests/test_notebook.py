"""The notebook front end: the widget driven from Python, and examples/quickstart.ipynb executed
in a real Jupyter kernel (ipykernel on this venv's interpreter, run by nbclient)."""

from __future__ import annotations

import datetime
import json
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from app.notebook import ContinuationWidget
from midi_fixtures import midi_bytes, piano_performance
from perceiver_music.errors import BadMidiError
from perceiver_music.render import embedded_soundfont

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_widget_generate_stop_upload_and_errors(tmp_path, random_checkpoint):
    widget = ContinuationWidget(midi_bytes(piano_performance(1, 6.0)), checkpoint=random_checkpoint, window=3,
                                length=2, variations=2, seed=9, soundfont=embedded_soundfont(),
                                sample_rate=22050, output_dir=tmp_path / "out")
    events = []
    widget.progress.observe(lambda change: events.append(change["new"]), names="value")
    result = widget.generate(wait=True)
    assert result is widget.result and len(result.variations) == 2 and result.seed == 9
    assert widget.status.value.startswith("done: seed 9") and "tokens/s" in widget.status.value
    assert widget.progress.value == widget.progress.max and widget.progress.bar_style == "success"
    assert events, "the progress bar was never fed"
    assert not widget.generate_button.disabled and widget.stop_button.disabled
    panel = widget.results.children[0].children
    kinds = [type(w).__name__ for w in panel]
    assert kinds == ["HTML", "Audio", "Image", "HTML", "HBox"]
    assert panel[1].value[:4] == b"RIFF" and panel[2].value[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'href="data:audio/midi;base64,' in panel[3].value and "download=" in panel[3].value
    assert all(Path(p).is_file() for v in result.variations for p in v.files.values())  # output_dir
    summary = widget.summary()
    assert summary["seed"] == 9 and len(summary["variations"]) == 2

    # Stop: a long request, stopped while it runs in its thread; what exists is kept.
    # Stop is pressed once the run reports generating (not after a fixed sleep: a fast machine
    # finishes 120 s of this tiny model's music in under a second). The run is held at its first
    # report until the one-at-a-time check is done, so that check cannot race the end either.
    widget.length.value = 120
    widget.new_seed.value = True
    generating, checked = threading.Event(), threading.Event()

    def press_stop_when_generating(change):
        if change["new"].startswith("generating") and not generating.is_set():
            generating.set()
            checked.wait(30)
            widget.stop()

    widget.status.observe(press_stop_when_generating, names="value")
    widget.generate(wait=False)
    assert generating.wait(60) and widget.running and not widget.stop_button.disabled
    with pytest.raises(RuntimeError):
        widget.generate()  # one at a time
    checked.set()
    stopped = widget.wait(timeout=120)
    widget.status.unobserve(press_stop_when_generating, names="value")
    assert stopped.cancelled and stopped.seed != 9 and widget.seed.value == stopped.seed
    assert all(v.stats["seconds_of_music"] < 120 for v in stopped.variations)
    assert widget.status.value.startswith("stopped")

    # "Continue this", an upload as the browser sends it, and a bad primer (one line, no traceback).
    widget.continue_variation(1)
    assert widget.request().primer == stopped.variations[0].full_midi and widget.window.value == 0
    upload = {"name": "uploaded.mid", "type": "audio/midi", "size": 10, "last_modified": datetime.datetime.now(),
              "content": memoryview(b"MThd nonsense")}
    widget.upload.value = (upload,)
    assert widget.request().primer_name == "uploaded.mid" and "uploaded.mid" in widget.primer_label.value
    with pytest.raises(BadMidiError):
        widget.generate(wait=True)
    assert widget.status.value.startswith("error: uploaded.mid") and "\n" not in widget.status.value
    assert widget.progress.bar_style == "danger" and not widget.generate_button.disabled
    widget.no_primer_button.click()
    assert widget.request().primer is None


def test_widget_draws_the_rolls_as_they_come_and_renders_the_whole_piece_on_demand(tmp_path, random_checkpoint,
                                                                                  eos_checkpoint):
    import io

    import soundfile

    primer = midi_bytes(piano_performance(seed=12, seconds=600))  # ten minutes
    widget = ContinuationWidget(primer, checkpoint=random_checkpoint, length=60, variations=2, seed=3,
                                soundfont=embedded_soundfont())
    frames = []
    widget.live.observe(lambda change: frames.append(change["new"]), names="value")
    result = widget.generate(wait=True)
    drawn = [f for f in frames if f]
    assert widget.live_frames >= 2 and len(drawn) >= 2 and drawn[0].count("<svg") == 2  # both variations
    assert widget.live.value == ""  # the finished panels replace the live rolls
    v = result.variations[0]
    audio = soundfile.read(io.BytesIO(widget.results.children[0].children[1].value))[0]
    assert 8 + 60 - 0.05 <= len(audio) / 44100 <= 8 + 60 + 4.1  # the lead-in, then the continuation
    whole = widget.render_whole(1)
    assert len(whole) / 44100 >= result.seam_seconds + 60
    assert type(widget.results.children[0].children[-1]).__name__ == "Audio"
    assert v.provenance["settings"]["lead_in_seconds"] == 8.0

    stops = ContinuationWidget(primer, checkpoint=eos_checkpoint, length=5, allow_end=True, seed=1,
                               soundfont=embedded_soundfont(), render_audio=False)
    stopped = stops.generate(wait=True)
    assert stopped.variations[0].stats["ended_by_model"]
    assert "The model ended the piece after 0.0 s." in stops.status.value


def _outputs(cell) -> list[dict]:
    return cell.get("outputs", [])


def test_quickstart_notebook_runs_in_a_real_kernel(tmp_path, random_checkpoint, monkeypatch):
    from ipykernel.kernelspec import install
    from nbclient import NotebookClient

    # A kernelspec for this interpreter in a temp prefix: the kernel runs the venv's python.
    prefix = tmp_path / "jupyter"
    install(kernel_name="perceiver-music-test", prefix=str(prefix), display_name="perceiver-music test")
    spec = json.loads((prefix / "share/jupyter/kernels/perceiver-music-test/kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("PERCEIVER_MUSIC_CHECKPOINT", str(random_checkpoint))
    monkeypatch.setenv("PERCEIVER_MUSIC_SOUNDFONT", str(embedded_soundfont()))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="perceiver-music-test", timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in _outputs(c)]
    assert not [o for o in outputs if o["output_type"] == "error"]
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "Traceback" not in stderr, stderr
    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert f"checkpoint: {random_checkpoint}" in text

    # The engine cell printed a summary with the expected fields.
    engine_cell = next(c for c in code if "result = continue_midi(request)" in c.source)
    summary = json.loads("".join(o["text"] for o in _outputs(engine_cell) if o.get("name") == "stdout"))
    assert summary["seed"] == 1 and summary["cancelled"] is False and summary["seam_seconds"] > 0
    assert len(summary["variations"]) == 2
    for variation in summary["variations"]:
        assert {"index", "new_tokens", "tokens_per_s", "seconds_of_music", "new_notes", "files"} <= set(variation)

    # An audio player and a piano roll were displayed.
    displayed = [o for o in outputs if o["output_type"] == "display_data"]
    assert any("<audio" in o["data"].get("text/html", "") and "data:audio/wav;base64," in o["data"]["text/html"]
               for o in displayed)
    assert any("image/png" in o["data"] for o in displayed)

    # The widget was displayed, and generate(wait=True) gave the requested number of variations.
    widget_cell = next(c for c in code if c.source.rstrip().endswith("widget"))
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in _outputs(widget_cell))
    run_cell = next(c for c in code if "widget.generate(wait=True)" in c.source)
    run_text = "".join(o["text"] for o in _outputs(run_cell) if o.get("name") == "stdout")
    assert "variations: 2" in run_text
    widget_summary = json.loads(run_text[: run_text.rindex("variations:")])
    assert widget_summary["seed"] == 7 and len(widget_summary["variations"]) == 2
    # The widgets' state was recorded by the kernel: the audio and the progress bar among them.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = {m["model_name"] for m in state.values()}
    assert {"AudioModel", "ImageModel", "FloatProgressModel", "ButtonModel", "FileUploadModel"} <= models
