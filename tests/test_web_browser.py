"""The web page in a real browser: Debian chromium driven by Playwright against the real server.

Upload a primer built with pretty_midi, generate, play and download what came out, continue
it and undo; stop a long generation and keep what exists; nothing is fetched from outside
this machine. Leaves a screenshot in test-artifacts/web.png.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import soundfile

from midi_fixtures import midi_bytes, piano_performance

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser, web_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith((web_server.url, "data:", "blob:")) else None)
    page.goto(web_server.url)
    page.wait_for_selector("#generate")
    yield page
    context.close()
    assert outside == [], f"the page fetched from outside this machine: {outside}"


def upload_primer(page, tmp_path, name="etude.mid", seconds=8.0):
    path = tmp_path / name
    path.write_bytes(midi_bytes(piano_performance(seed=5, seconds=seconds)))
    page.set_input_files("#primer-file input[type=file]", str(path))
    wait_for_text(page, "#budget", name)


def wait_for_text(page, selector, text):
    from playwright.sync_api import TimeoutError

    try:
        page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                               arg=[selector, text])
    except TimeoutError:
        shown = page.locator(selector).inner_text() if page.locator(selector).count() else "(missing)"
        pytest.fail(f"{selector} did not show {text!r}; it shows {shown!r}")


def set_length(page, seconds):
    box = page.locator("#length input[type=number]")
    box.fill(str(seconds))
    box.press("Enter")
    wait_for_text(page, "#budget", f"for {seconds} s")


def playable_audio(page, component) -> bytes:
    """The WAV of the <audio> element in `component`: the browser has loaded it (its duration
    is known) and its src, fetched with the page's request context, answers 200 with RIFF/WAVE."""
    src = page.wait_for_function(
        """s => [...document.querySelectorAll(s + ' audio')]
                 .find(a => a.src && a.readyState >= 1 && a.duration > 0)?.src""", arg=component).json_value()
    response = page.request.get(src)
    assert response.status == 200, src
    wav = response.body()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE", src
    duration = page.evaluate("u => [...document.querySelectorAll('audio')].find(a => a.src === u).duration", src)
    info = soundfile.info(io.BytesIO(wav))
    assert abs(info.frames / info.samplerate - duration) < 0.05
    return wav


def test_upload_generate_play_download_continue_undo(page, tmp_path):
    upload_primer(page, tmp_path)
    wait_for_text(page, "#budget", "context 512")
    playable_audio(page, "#primer-audio")
    set_length(page, 3)

    page.click("#generate")
    wait_for_text(page, "#status", "Done")
    assert "tokens/s" in page.inner_text("#status")
    assert page.locator("#variation-1").is_visible() and not page.locator("#variation-2").is_visible()

    wav = playable_audio(page, "#variation-1-audio")
    assert soundfile.info(io.BytesIO(wav)).samplerate == 44100
    links = page.eval_on_selector_all("#variation-1-files a[download]", "els => els.map(e => e.href)")
    assert len(links) == 3, links
    for link in links:
        response = page.request.get(link)
        assert response.status == 200, link
        body = response.body()
        if link.endswith(".mid"):
            assert body[:4] == b"MThd", link
        else:
            assert link.endswith(".wav") and body[:4] == b"RIFF" and body[8:12] == b"WAVE", link

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)

    page.click("#variation-1-continue")
    wait_for_text(page, "#budget", "variation-1-full.mid")
    page.click("#undo")
    wait_for_text(page, "#budget", "etude.mid")


def test_stop_keeps_what_exists(page, tmp_path):
    upload_primer(page, tmp_path, name="long.mid", seconds=4.0)
    set_length(page, 120)
    page.click("#generate")
    wait_for_text(page, "#status", "tokens/s")  # the progress bar: it is generating
    page.click("#stop")
    wait_for_text(page, "#status", "Stopped")
    assert page.locator("#variation-1").is_visible()
    playable_audio(page, "#variation-1-audio")


def long_primer(tmp_path, minutes=10.0, name="ten-minutes.mid") -> Path:
    """A primer of `minutes` minutes built by code (a whole piece, as people bring them)."""
    path = tmp_path / name
    path.write_bytes(midi_bytes(piano_performance(seed=12, seconds=minutes * 60)))
    return path


def audio_duration(page, component) -> float:
    wav = playable_audio(page, component)
    info = soundfile.info(io.BytesIO(wav))
    return info.frames / info.samplerate


def test_the_seam_is_heard_watched_as_it_is_written_and_the_whole_piece_is_a_click_away(page, tmp_path):
    """A 10-minute primer: the piano roll of variation 1 grows while the model writes (Gradio's
    streaming of a generator handler), the audio is the 8 s lead-in and the asked 20 s, and the
    whole piece renders on demand."""
    page.set_input_files("#primer-file input[type=file]", str(long_primer(tmp_path)))
    wait_for_text(page, "#budget", "ten-minutes.mid")
    wait_for_text(page, "#budget", "last 30 s")
    assert audio_duration(page, "#primer-audio") < 36  # the preview's last 30 s (and its release tail)
    set_length(page, 20)
    page.evaluate("""() => {
        window.__rolls = [];
        const seen = () => { const svg = document.querySelector('#variation-1-live svg');
                             const html = svg ? svg.outerHTML : '';
                             if (html && window.__rolls[window.__rolls.length - 1] !== html) window.__rolls.push(html); };
        new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#generate")
    wait_for_text(page, "#status", "Done")
    rolls = page.evaluate("window.__rolls")
    assert len(rolls) >= 2, f"the live piano roll was drawn {len(rolls)} times"
    # it grew: the last frame has more continuation notes than the first
    assert rolls[-1].count("#e07b39") > rolls[0].count("#e07b39")
    seam_audio = audio_duration(page, "#variation-1-audio")
    assert 8 + 20 - 0.05 <= seam_audio <= 8 + 20 + 4.1, seam_audio  # lead-in + continuation + release tail
    page.click("#variation-1-whole")
    whole = audio_duration(page, "#variation-1-whole-audio")
    assert whole >= 10 * 60 - 5 + 20, whole  # the whole primer window and the continuation
