"""Key hold: a soft pull of each sampled pitch toward the key of the music heard so far.

A small model left to sample on its own drifts: within 20 s some continuations of a piece in
E flat are in A (pitch-class correlation with the primer below 0). Key hold keeps, per row, a
fading count of the pitch classes of recent NOTE_ONs (the primer's, then the continuation's own)
and adds `strength * log(12 * share)` to each NOTE_ON logit, where `share` is its pitch class's
share of that count, mixed with a uniform floor so that no pitch is ever banned. The NOTE_ONs
are then shifted together so that their total probability is the model's own: the model still
decides when a note comes (a plain bias made the music twice as dense), key hold only which.
Strength 0 is the model alone. Because the count fades (half of it is the last `half_life`
notes), a long continuation may still modulate: the pull follows the music it has made, not
the primer forever.

The arithmetic is numpy on the host: on a CPU, torch's `exp` of 128 floats took 4.7 ms right
after an onnxruntime step, numpy's 32 µs (BENCHMARKS.md, "Key hold"). On CUDA the
ids come back to the host every step for it, a wait the loop otherwise avoids.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .tokenizer import NOTE_OFF_BASE, NOTE_ON_BASE

DEFAULT_HALF_LIFE = 256  # notes: about the last 30 s of piano
UNIFORM_FLOOR = 0.1  # share of the profile spread over all 12 pitch classes
PITCH_CLASS = np.arange(NOTE_OFF_BASE - NOTE_ON_BASE) % 12  # of each NOTE_ON id, in order


class KeyHold:
    """Per-row pitch-class memory and the NOTE_ON logits it gives."""

    def __init__(self, prompts: Sequence[Sequence[int]], strength: float,
                 half_life: float = DEFAULT_HALF_LIFE) -> None:
        self.strength = float(strength)
        self.keep = 0.5 ** (1.0 / half_life)  # what a count keeps per new note
        self.counts = np.stack([self._counts_of(row) for row in prompts])  # (B, 12)
        self._refresh()

    def _counts_of(self, row: Sequence[int]) -> np.ndarray:
        counts = np.zeros(12)
        pitches = np.asarray([t - NOTE_ON_BASE for t in row if NOTE_ON_BASE <= t < NOTE_OFF_BASE], dtype=np.int64)
        # note i of n has faded by keep ** (n - 1 - i)
        np.add.at(counts, pitches % 12, self.keep ** np.arange(len(pitches) - 1, -1, -1, dtype=np.float64))
        return counts

    def _refresh(self) -> None:
        total = self.counts.sum(axis=1, keepdims=True)
        share = np.divide(self.counts, total, out=np.full_like(self.counts, 1 / 12), where=total > 0)
        share = (1 - UNIFORM_FLOOR) * share + UNIFORM_FLOOR / 12
        self._pull = (self.strength * np.log(12 * share))[:, PITCH_CLASS].astype(np.float32)  # (B, 128)
        self._gain = np.exp(self._pull)
        self._pull_on_device = None

    def apply(self, logits: Tensor) -> Tensor:
        """Logits (B, vocab) with the NOTE_ONs pulled toward the key and their total mass kept."""
        if logits.device.type != "cpu":
            return self._apply_on_device(logits)
        out = logits.float().numpy().copy()
        notes = out[:, NOTE_ON_BASE:NOTE_OFF_BASE]
        weights = np.exp(notes - notes.max(axis=1, keepdims=True))  # the NOTE_ONs' relative odds
        keep_mass = np.log(weights.sum(axis=1, keepdims=True) / (weights * self._gain).sum(axis=1, keepdims=True))
        notes += self._pull + keep_mass
        return torch.from_numpy(out)

    def _apply_on_device(self, logits: Tensor) -> Tensor:
        if self._pull_on_device is None:
            self._pull_on_device = torch.from_numpy(self._pull).to(logits.device)
        logits = logits.float().clone()
        notes = logits[:, NOTE_ON_BASE:NOTE_OFF_BASE]
        pulled = notes + self._pull_on_device
        logits[:, NOTE_ON_BASE:NOTE_OFF_BASE] = pulled + (notes.logsumexp(1, keepdim=True) -
                                                          pulled.logsumexp(1, keepdim=True))
        return logits

    def update(self, tokens: Tensor) -> None:
        """Count the rows' new ids (B,): a NOTE_ON fades its row's count and adds its class."""
        ids = tokens.cpu().numpy()
        rows = np.flatnonzero((ids >= NOTE_ON_BASE) & (ids < NOTE_OFF_BASE))
        if len(rows):
            self.counts[rows] *= self.keep
            self.counts[rows, (ids[rows] - NOTE_ON_BASE) % 12] += 1.0
            self._refresh()
