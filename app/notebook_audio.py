"""The notebook widget's streamed audio: variation 1 heard while the model writes it.

A notebook has no audio element that can be fed while it plays, so this small anywidget
queues the chunks in the browser with the Web Audio API (`stream_player.js`). The kernel sends
each chunk as 16-bit PCM in the binary buffer of a custom message; the browser schedules it
right after the one before.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import numpy as np


def pcm16(audio: np.ndarray) -> bytes:
    """Frames x channels float audio as interleaved little-endian 16-bit PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class StreamPlayer(anywidget.AnyWidget):
    """Plays audio as it is sent: `start`, then `feed` chunks, then `end` (or `stop`)."""

    _esm = (Path(__file__).with_name("stream_player.js")).read_text()

    channels = 2  # of the audio fed since the last start

    def start(self, sample_rate: int, channels: int = 2) -> None:
        self.channels = channels
        self.send({"kind": "start", "sample_rate": int(sample_rate), "channels": int(channels)})

    def feed(self, audio: np.ndarray) -> None:
        if audio is None or not len(audio):
            return
        audio = np.asarray(audio, dtype=np.float32).reshape(len(audio), self.channels)
        self.send({"kind": "chunk", "frames": len(audio)}, [pcm16(audio)])

    def end(self, text: str = "") -> None:
        """Nothing more comes: what is queued plays to its end."""
        self.send({"kind": "end", "text": text})

    def stop(self, text: str = "") -> None:
        """Silence now."""
        self.send({"kind": "stop", "text": text})
