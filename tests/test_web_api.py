"""The web app's API through gradio_client, against the real server (launch.py in a subprocess,
a tiny random checkpoint, real fluidsynth): files that play and parse, errors as messages,
two clients at once in separate folders, and no UI event in the API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from midi_fixtures import midi_bytes, piano_performance

# gradio_client reads these when a Client is made: no telemetry, no Hub.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture
def loopback_only(monkeypatch):
    """Any connection the test process opens must go to this machine (the client must not try
    the internet); attempts elsewhere are refused and listed."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(address)
            raise OSError(f"the test refused a connection to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"connections outside this machine: {attempts}"


def client(server, tmp_path):
    from gradio_client import Client

    return Client(server.url, analytics_enabled=False, verbose=False, download_files=str(tmp_path / "downloads"))


def primer_file(tmp_path, seed=1, seconds=8.0) -> Path:
    path = tmp_path / f"primer-{seed}.mid"
    path.write_bytes(midi_bytes(piano_performance(seed=seed, seconds=seconds)))
    return path


def continue_args(primer: Path, seed: int, length: float = 3.0, variations: int = 1):
    from gradio_client import handle_file

    # primer, primer_window_seconds, length_seconds, temperature, top_k, top_p, min_p, seed, variations
    return (handle_file(str(primer)), 0, length, 1.0, 0, 0.95, 0.0, seed, variations)


def test_only_continue_and_preview_are_in_the_api(web_server, tmp_path, loopback_only):
    api = client(web_server, tmp_path).view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/continue", "/continue_live", "/preview"}
    assert api["unnamed_endpoints"] == {}
    names = [p["parameter_name"] for p in api["named_endpoints"]["/continue"]["parameters"]]
    assert names == ["primer", "primer_window_seconds", "length_seconds", "temperature", "top_k", "top_p",
                     "min_p", "seed", "variations", "key_hold"]


def test_continue_returns_playable_audio_and_midi_our_tokenizer_reads(web_server, slow_music_checkpoint, tmp_path,
                                                                     loopback_only):
    from perceiver_music.checkpoint import sha256_of
    from perceiver_music.tokenizer import encode

    primer = primer_file(tmp_path)
    full, continuation, audio, summary = client(web_server, tmp_path).predict(
        *continue_args(primer, seed=7), api_name="/continue")
    assert len(full) == len(continuation) == len(audio) == 1

    data, rate = soundfile.read(audio[0])
    assert rate == 44100 and data.ndim == 2 and data.shape[1] == 2
    assert len(data) / rate >= summary["seam_seconds"]  # the primer window plays, then the continuation
    assert np.sqrt(np.mean(data**2)) > 1e-3, "the audio is silent"
    assert Path(audio[0]).read_bytes()[:4] == b"RIFF"

    full_ids, continuation_ids, primer_ids = encode(full[0]), encode(continuation[0]), encode(str(primer))
    assert len(continuation_ids) > 0
    assert len(full_ids) > len(continuation_ids)
    assert len(full_ids) > len(primer_ids) // 2  # the primer is in the full MIDI

    assert summary["seed"] == 7 and not summary["cancelled"]
    assert 2.0 < summary["variations"][0]["seconds_of_music"] <= 3.0
    provenance = summary["provenance"][0]
    assert provenance["seed"] == 7 and provenance["settings"]["length_seconds"] == 3.0
    assert provenance["checkpoint"]["sha256"] == sha256_of(slow_music_checkpoint / "model.safetensors")
    assert provenance["primer"]["sha256"]
    # The files the client got are the ones the server keeps in its output folder.
    on_server = summary["variations"][0]["files"]
    assert Path(on_server["full_midi"]).read_bytes() == Path(full[0]).read_bytes()
    assert Path(on_server["audio"]).is_relative_to(web_server.output_dir.resolve())
    sidecar = json.loads(Path(on_server["provenance"]).read_text())
    assert sidecar["seed"] == 7


def test_continue_live_streams_while_it_writes_and_ends_with_the_files(web_server, tmp_path, loopback_only):
    """/continue_live yields the status while the model writes (ids and seconds per variation,
    how much lead-in audio was sent), then the files; the audio is the lead-in and the continuation."""
    from gradio_client import handle_file

    primer = primer_file(tmp_path, seed=3, seconds=20.0)
    job = client(web_server, tmp_path).submit(handle_file(str(primer)), 0, 30.0, 1.0, 0, 0.95, 0.0, 5, 2, 4.0, False,
                                              api_name="/continue_live")
    updates = []
    for output in job:
        updates.append(output)
    final = job.result()
    statuses = [u[0] for u in updates if u and u[0]]
    live = [s for s in statuses if s.get("stage") == "generating" and "ids" in s]
    assert len(live) >= 2, statuses
    assert live[-1]["ids"][0] >= live[0]["ids"][0] and len(live[0]["ids"]) == 2  # both variations
    assert any(s["audio_sent"] for s in live)  # the lead-in streamed at once: the tiny model outruns the music
    status, _, full, audio, summary = final
    assert status["stage"] == "done" and len(full) == len(audio) == 2
    for path, v in zip(audio, summary["variations"]):
        info = soundfile.info(path)
        assert v["seconds_of_music"] == 30.0  # as long as asked
        assert 4.0 + 30.0 - 0.05 <= info.frames / info.samplerate <= 4.0 + 30.0 + 4.1
    assert summary["provenance"][0]["settings"]["lead_in_seconds"] == 4.0
    assert summary["provenance"][0]["settings"]["allow_end"] is False


def test_preview_reports_the_token_budget(web_server, tmp_path, loopback_only):
    from gradio_client import handle_file

    result = client(web_server, tmp_path).predict(handle_file(str(primer_file(tmp_path))), 4, 3,
                                                  api_name="/preview")
    budget = result["budget"]
    assert budget["context"] == 512 and budget["latents"] == 64
    assert 0 < budget["primer_tokens"] <= budget["context"]
    assert budget["new_tokens_estimate"] == 120  # ~40 ids per second of piano
    assert 0 < result["window_seconds"] <= 4.5


def test_bad_input_is_a_message_and_the_server_keeps_serving(web_server, tmp_path, loopback_only):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c = client(web_server, tmp_path)
    broken = tmp_path / "broken.mid"
    broken.write_bytes(midi_bytes(piano_performance(seed=2, seconds=4))[:40])
    text = tmp_path / "notes.mid"
    text.write_bytes(b"these are not the notes you are looking for\n")
    for path in (broken, text):
        with pytest.raises(AppError) as error:
            c.predict(*continue_args(path, seed=1), api_name="/continue")
        message = str(error.value)
        assert path.name in message and "\n" not in message.strip() and "Traceback" not in message
    with pytest.raises(AppError, match="variations must be 1 to 4"):
        c.predict(*continue_args(primer_file(tmp_path), seed=1, variations=9), api_name="/continue")
    # Still serving.
    result = c.predict(handle_file(str(primer_file(tmp_path))), 0, 2, api_name="/preview")
    assert result["budget"]["primer_tokens"] > 0
    assert web_server.process.poll() is None


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_eight_clients_at_once_are_all_answered_in_their_own_folders(web_server, tmp_path, loopback_only):
    """The server runs one generation at a time (--concurrency 1): the others wait in the queue.
    Every client gets its own answer in its own session folder, and memory stays bounded."""
    count = 8
    primers = [primer_file(tmp_path, seed=10 + i) for i in range(count)]
    results, errors = [None] * count, []
    rss_before = _rss_mb(web_server.process.pid)

    def run(i):
        try:
            c = client(web_server, tmp_path / f"client-{i}")
            results[i] = c.predict(*continue_args(primers[i], seed=100 + i, length=2.0), api_name="/continue")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    folders = [Path(r[3]["output_dir"]) for r in results]
    sessions = {f.parent for f in folders}
    assert len(sessions) == count, "clients share a session folder"
    for i, (folder, result) in enumerate(zip(folders, results)):
        assert folder.parent.parent == web_server.output_dir.resolve()
        assert result[3]["seed"] == 100 + i
        assert result[3]["provenance"][0]["primer"]["name"] == primers[i].name
        for path in result[3]["variations"][0]["files"].values():
            assert Path(path).parent == folder
    audio = {Path(r[2][0]).read_bytes() for r in results}
    assert len(audio) == count  # eight different pieces, none crossed over
    assert _rss_mb(web_server.process.pid) - rss_before < 400  # no model or synth per request


def test_launch_binds_localhost_and_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    sys.path.insert(0, str(REPO))
    import launch

    args = launch.parse_args([])
    assert (args.host, args.port, args.concurrency, args.max_upload_mb) == ("127.0.0.1", 7860, 1, 16.0)
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "--no-browser", "--checkpoint",
                           str(tmp_path / "no-such-model")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: no checkpoint at")


def test_start_up_says_where_it_serves_and_never_suggests_a_share_link(web_server):
    log = web_server.log_path.read_text()
    assert f"perceiver-music is serving on {web_server.url} (this machine only" in log
    assert "public link" not in log and "gradio.live" not in log  # Gradio's banner and its tunnels


def test_the_page_says_the_model_ended_the_piece_and_that_a_band_becomes_piano(eos_checkpoint, tmp_path):
    """The page's own generation code (handlers.stream_generation, in process): with "Let the
    model end the piece" an always-EOS model stops at once and the status says after how long."""
    from app.web.handlers import Handlers, WebConfig, status_text, stream_generation
    from app.web.session import Session
    from midi_fixtures import band_with_drums
    from perceiver_music.checkpoint import ModelCache
    from perceiver_music.engine import ContinueRequest

    handlers = Handlers(WebConfig(checkpoint=eos_checkpoint, output_dir=tmp_path / "out"), ModelCache())
    band = tmp_path / "band.mid"
    band.write_bytes(midi_bytes(band_with_drums(seconds=10)))
    for allow_end, words in ((True, "The model ended variation 1 after 0.0 s"), (False, None)):
        request = ContinueRequest(primer=str(band), length_seconds=3, seed=1, checkpoint=str(eos_checkpoint),
                                  output_dir=tmp_path / "out", allow_end=allow_end)
        updates = list(stream_generation(handlers, request, Session(tmp_path / "s"), 1))
        kind, result, error = updates[-1]
        assert kind == "done" and error is None
        text = status_text(result)
        assert "continuation is piano" in text and "drums" in text
        if words:
            assert words in text
        else:
            assert "ended" not in text and result.variations[0].stats["seconds_of_music"] == 3.0
