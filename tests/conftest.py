"""Shared fixtures: a real tiny corpus prepared once per test session."""

from __future__ import annotations

import pytest
import torch

from midi_fixtures import write_tiny_corpus
from perceiver_music.tokenizer import EOS, MAX_SHIFT_STEPS, TIME_SHIFT_BASE

# Tests run on 2 CPU cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))
torch.set_flush_denormal(True)


@pytest.fixture(scope="session", autouse=True)
def compiled_step_cache(tmp_path_factory):
    """The onnx runtime's exports (decode_onnx.cache_folder) go to a folder of this test run, not
    to the user's cache; set before any server or kernel starts, so those inherit it."""
    import os

    folder = tmp_path_factory.mktemp("compiled-step-cache")
    old = os.environ.get("PERCEIVER_MUSIC_CACHE")
    os.environ["PERCEIVER_MUSIC_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("PERCEIVER_MUSIC_CACHE", None)
    else:
        os.environ["PERCEIVER_MUSIC_CACHE"] = old


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models that run thousands of small ops: with several OpenMP threads
    on a shared, busy machine each op can stall on a descheduled thread (measured: 131 s
    instead of 8 s for the model and generation tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by Playwright (the web page's and the widget's tests)."""
    import os

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `sudo apt-get install chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory):
    from perceiver_music.data import prepare

    out = tmp_path_factory.mktemp("data")
    prepare([str(tiny_corpus)], out, workers=1, progress=False)
    return out


def _tiny_random_checkpoint(folder, held_down, note, winner=None):
    from model_fixtures import pin_logits
    from perceiver_music.checkpoint import save_checkpoint
    from perceiver_music.model import PerceiverAR, PerceiverARConfig

    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(max_context=512, num_latents=64, d_model=64, n_heads=2, cross_heads=2, n_layers=2))
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.5)
    pin_logits(model, low=held_down, high=winner)
    save_checkpoint(model, folder, metadata={"step": 0, "note": note})
    return folder


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """A tiny random model saved as a real checkpoint: the stand-in for assets/model in tests of
    the front ends. Its head is not zero, so it samples varied ids (a zero head is uniform), and
    it never stops by itself (EOS held at a logit near -100), so a request runs to its length
    and a long one can be stopped."""
    return _tiny_random_checkpoint(tmp_path_factory.mktemp("checkpoint"), [EOS],
                                   "random weights for tests, no EOS")


@pytest.fixture(scope="session")
def eos_checkpoint(tmp_path_factory):
    """A model that always prefers EOS (its logit near +100 at every step): the model that ends
    every piece at once, as a real one often does after a primer's final chord."""
    return _tiny_random_checkpoint(tmp_path_factory.mktemp("eos-checkpoint"), None,
                                   "random weights for tests, EOS always wins", winner=EOS)


@pytest.fixture(scope="session")
def slow_music_checkpoint(tmp_path_factory):
    """random_checkpoint whose music moves in steps of at most 200 ms: 120 s of it takes about
    18,000 ids (10 s or more here), so a test that presses Stop through a browser cannot lose the
    race against the end (random_checkpoint writes 120 s in under a second)."""
    longer_shifts = list(range(TIME_SHIFT_BASE + 20, TIME_SHIFT_BASE + MAX_SHIFT_STEPS))
    return _tiny_random_checkpoint(tmp_path_factory.mktemp("slow-checkpoint"), [EOS, *longer_shifts],
                                   "random weights for tests, no EOS, time shifts of at most 200 ms")


# ---- the web app (tests/test_web_api.py, tests/test_web_browser.py) ----------------------------


class WebServer:
    """`python launch.py` running in a subprocess on a free port: the real server."""

    def __init__(self, url: str, output_dir, log_path, process):
        self.url, self.output_dir, self.log_path, self.process = url, output_dir, log_path, process

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def web_server(slow_music_checkpoint, tmp_path_factory):
    """The web app (launch.py) on 127.0.0.1 with a tiny random checkpoint, its outputs and
    Gradio's cache in temp folders; started once per test session, stopped at the end."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = tmp_path_factory.mktemp("web")
    output_dir, log_path, port = root / "outputs", root / "server.log", _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(root / "gradio-cache"),
           "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    repo = Path(__file__).resolve().parent.parent
    command = [sys.executable, str(repo / "launch.py"), "--no-browser", "--port", str(port),
               "--checkpoint", str(slow_music_checkpoint), "--output-dir", str(output_dir)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = WebServer(f"http://127.0.0.1:{port}/", output_dir, log_path, process)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never a proxy
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"launch.py exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with opener.open(server.url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"launch.py did not serve {server.url} within 120 s:\n{server.log_tail()}")
        time.sleep(0.5)
    yield server
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
