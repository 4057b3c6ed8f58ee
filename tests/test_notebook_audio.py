"""The notebook widget's streamed audio: what the kernel sends while the model writes
(`live.AudioStream`, `notebook_audio.StreamPlayer`), and the player's JavaScript in a real
chromium, fed the way the widget feeds it."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import numpy as np
import pytest

from app.notebook import ContinuationWidget
from app.notebook_audio import StreamPlayer, pcm16
from midi_fixtures import midi_bytes, piano_performance
from perceiver_music.live import AudioStream
from perceiver_music.render import embedded_soundfont

PLAYER_JS = Path(__file__).resolve().parents[1] / "app" / "stream_player.js"


def recorded(player: StreamPlayer, during=lambda: None) -> list:
    """Replace the player's send with a recorder: (content, buffers, what `during()` said)."""
    sent = []
    player.send = lambda content, buffers=None: sent.append((content, buffers or [], during()))
    return sent


def test_the_widget_streams_variation_1_while_it_is_written(slow_music_checkpoint):
    widget = ContinuationWidget(midi_bytes(piano_performance(2, 20.0)), checkpoint=slow_music_checkpoint, length=15,
                                lead_in=6, seed=3, soundfont=embedded_soundfont(), sample_rate=22050)
    sent = recorded(widget.stream_player, during=lambda: widget.result is None)
    result = widget.generate(wait=True, timeout=120)
    kinds = [content["kind"] for content, _, _ in sent]
    assert kinds[0] == "start" and sent[0][0]["sample_rate"] == 22050 and sent[0][0]["channels"] == 2
    assert kinds[-1] == "end" and set(kinds[1:-1]) == {"chunk"} and kinds.count("chunk") >= 2
    chunks = [(content, buffers) for content, buffers, _ in sent if content["kind"] == "chunk"]
    assert all(content["frames"] * 4 == len(buffers[0]) for content, buffers in chunks)  # 2 channels x 16 bits
    lead_in_frames = chunks[0][0]["frames"]
    assert abs(lead_in_frames / 22050 - 6.0) < 0.05  # the lead-in goes out at once
    assert sent[1][2], "the lead-in was sent only after the run had ended"
    heard = b"".join(buffers[0] for _, buffers in chunks)
    audio = result.variations[0].audio
    assert heard == pcm16(audio)  # what streamed is the finished audio, all of it


def test_no_stream_without_audio(random_checkpoint):
    widget = ContinuationWidget(midi_bytes(piano_performance(2, 8.0)), checkpoint=random_checkpoint, length=3,
                                seed=1, render_audio=False)
    sent = recorded(widget.stream_player)
    widget.generate(wait=True, timeout=60)
    assert sent == []


class FakeLive:
    """What AudioStream reads of a LiveRun, with the clock and the music written set by hand."""

    def __init__(self):
        self.generated = threading.Event()
        self.clock, self.written = 0.0, 0.0

    def live_audio(self, soundfont, sample_rate):
        class Audio:
            frames, sample_rate = 0, 44100

            def start(self):
                return np.ones((10, 2), np.float32)

            def advance(self, ids):
                return np.ones((len(ids), 2), np.float32)

            def close(self):
                pass

        return Audio()

    def elapsed(self):
        return self.clock

    def frame(self, row):
        return [], self.written

    def ids(self, row):
        return [1, 2, 3]


def test_the_stream_stops_when_the_model_is_slower_than_the_music():
    live = FakeLive()
    stream = AudioStream(live)
    assert len(stream.poll()) == 10  # the lead-in, at once
    live.clock, live.written = 0.5, 0.1  # slow, but too early to judge
    assert len(stream.poll()) == 3 and stream.streaming
    live.clock, live.written = 2.0, 2.0  # 1.0x: under the 1.1 margin
    assert stream.poll() is None and stream.too_slow and not stream.streaming
    live.written = 50.0
    assert stream.poll() is None  # once stopped it stays stopped
    fast = FakeLive()
    stream = AudioStream(fast)
    stream.poll()
    fast.clock, fast.written = 2.0, 3.0
    assert len(stream.poll()) == 3 and stream.streaming
    fast.clock, fast.written = 10.0, 3.0
    fast.generated.set()  # written: the tail still comes, however long it took
    assert len(stream.poll()) == 3 and stream.streaming


HARNESS = """<!doctype html><html><body><button id="generate">Generate</button><div id="player"></div>
<script type="module">
const source = atob("%s");
const url = URL.createObjectURL(new Blob([source], {type: "text/javascript"}));
const module = await import(url);
const handlers = [];
const model = {on(name, handler) { if (name === "msg:custom") handlers.push(handler); }, off() {}, get() {}, set() {},
               save_changes() {}, send() {}};
window.cleanup = module.default.render({model, el: document.getElementById("player")});
window.deliver = (message, chunks) => {
  const buffers = (chunks || []).map((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new DataView(bytes.buffer);
  });
  handlers.forEach((handler) => handler(message, buffers));
};
window.ready = true;
</script></body></html>"""


@pytest.mark.browser
def test_the_player_queues_each_chunk_after_the_last_in_a_real_browser(browser):
    page = browser.new_context().new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_content(HARNESS % base64.b64encode(PLAYER_JS.read_bytes()).decode())
    page.wait_for_function("window.ready === true")
    page.click("#generate")  # the person's click, as in a notebook: the page may now make sound
    rate = 22050
    t = np.arange(rate // 2) / rate
    tone = np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1).astype(np.float32) * 0.2
    page.evaluate("([rate]) => deliver({kind: 'start', sample_rate: rate, channels: 2}, [])", [rate])
    for _ in range(3):
        page.evaluate("([b64]) => deliver({kind: 'chunk'}, [b64])", [base64.b64encode(pcm16(tone)).decode()])
    player = page.locator("#player")
    assert player.get_attribute("data-chunks") == "3"
    assert float(player.get_attribute("data-queued-seconds")) == pytest.approx(1.5, abs=1e-3)
    assert player.get_attribute("data-state") == "streaming"
    assert "1.5 s so far" in player.inner_text()
    page.wait_for_function("document.getElementById('player').dataset.contextState === 'running'", timeout=10_000)
    page.evaluate("() => deliver({kind: 'end'}, [])")
    # the queue plays out: 1.5 s of audio, then the player says so
    page.wait_for_function("document.getElementById('player').dataset.state === 'played'", timeout=15_000)
    page.evaluate("([rate]) => deliver({kind: 'start', sample_rate: rate, channels: 2}, [])", [rate])
    page.evaluate("([b64]) => deliver({kind: 'chunk'}, [b64])", [base64.b64encode(pcm16(tone)).decode()])
    page.click("button:has-text('Stop the stream')")
    assert player.get_attribute("data-state") == "stopped" and player.get_attribute("data-context-state") == "none"
    assert errors == []
    page.context.close()
