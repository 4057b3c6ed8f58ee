"""Weights for test models made by code: random everywhere, and an EOS that never wins."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from perceiver_music.model import PerceiverAR
from perceiver_music.tokenizer import EOS


@torch.no_grad()
def randomize_weights(model: PerceiverAR) -> PerceiverAR:
    """Every weight random, the head and LayerNorms included, so outputs vary with the input."""
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.uniform_(0.5, 1.5)
        else:
            p.normal_(0.0, 0.3 if p.dim() == 2 else 0.1)
    return model


@torch.no_grad()
def pin_logits(model: PerceiverAR, low: int | Sequence[int] | None = EOS, high: int | None = None) -> PerceiverAR:
    """Feature 0 of the final LayerNorm becomes a constant 10 that only the rows of `low` and
    `high` read: a logit near -100 for `low` (by default EOS: the model never stops by itself;
    several ids may be held down) and near +100 for `high` (it wins every step), whatever the
    input."""
    model.norm.weight[0], model.norm.bias[0] = 0.0, 10.0
    model.head.weight[:, 0] = 0.0
    if low is not None:
        model.head.weight[list(low) if isinstance(low, Sequence) else low, 0] = -10.0
    if high is not None:
        model.head.weight[high, 0] = 10.0
    return model
