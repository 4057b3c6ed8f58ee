"""Negative log-likelihood of a checkpoint on held-out music, and how it falls with context.

Every target token is scored with the longest context allowed: for a context limit C, the token
at position i of its work sees min(C, i) tokens before it (up to a stride: tokens are scored in
chunks of `s` latents, so each sees between C - s + 1 and C). The table reports two means per C:
over all tokens, and over the same "long" tokens for every C (those with at least the largest C
before them in their work), which is the fair test of the paper's long-context claim.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .tokenizer import EOS, PAD, SOS, VOCAB_SIZE


@dataclass
class ContextRow:
    context: int
    stride: int
    nll: float
    tokens: int
    nll_long: float | None
    tokens_long: int


@dataclass
class EvalReport:
    works: int
    tokens: int
    nll: float  # at the model's full context, nats per token
    unigram_nll: float | None
    long_threshold: int
    by_context: list[ContextRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def default_contexts(max_context: int) -> list[int]:
    contexts = [c for c in (512 * 2**k for k in range(12)) if c <= max_context]
    if not contexts:
        contexts = [max(1, max_context // 4), max(1, max_context // 2)]
    if contexts[-1] != max_context:
        contexts.append(max_context)
    return sorted(set(contexts))


def _stride(context: int, num_latents: int) -> int:
    return max(1, min(num_latents, context // 4))


@torch.no_grad()
def score_tokens(model, works: list[np.ndarray], context: int, batch_size: int, device) -> list[np.ndarray]:
    """NLL of every target (positions 1..L-1) of every work with context limit `context`."""
    stride = _stride(context, model.config.num_latents)
    jobs = defaultdict(list)  # (input length, latents) -> [(work, first target, input start)]
    for w, ids in enumerate(works):
        for first in range(1, len(ids), stride):
            count = min(stride, len(ids) - first)
            last_input = first + count - 1  # exclusive end of the input
            start = max(0, last_input - context)
            jobs[(last_input - start, count)].append((w, first, start))
    scores = [np.zeros(len(ids), dtype=np.float64) for ids in works]
    model.eval()
    for (length, count), items in jobs.items():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            inputs = torch.stack([torch.as_tensor(works[w][s : s + length], dtype=torch.long) for w, _, s in chunk])
            targets = torch.stack([torch.as_tensor(works[w][f : f + count], dtype=torch.long) for w, f, _ in chunk])
            logits = model(inputs.to(device), num_latents=count).float()
            nll = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="none")
            nll = nll.view(len(chunk), count).cpu().numpy()
            for row, (w, first, _) in enumerate(chunk):
                scores[w][first : first + count] = nll[row]
    return [s[1:] for s in scores]  # position 0 (SOS) is never a target


def unigram_nll(train_tokens: np.ndarray, works: list[np.ndarray]) -> float:
    """A unigram model fit on the training split (add-one): the floor any model must beat."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    counts[PAD] = counts[SOS] = 0.0  # never targets
    logp = np.log(counts / counts.sum(), where=counts > 0, out=np.full(VOCAB_SIZE, -np.inf))
    targets = np.concatenate([w[1:] for w in works])
    return float(-logp[targets].mean())


def load_eval_works(source: str | os.PathLike, split: str = "test", max_tokens: int | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Works to score: a prepared DATA_DIR's split, or every MIDI file of a folder.

    Returns the works (each [SOS, ids, EOS]) and the training tokens for the unigram baseline
    (None for a folder)."""
    from .data import TokenData, works_in_folder

    source = Path(source)
    works: list[np.ndarray] = []
    train = None
    if (source / "meta.json").exists():
        data = TokenData(source)
        iterator = (ids for _, ids in data.works(split))
        train = data.tokens("train")
    else:
        from .errors import BadMidiError
        from .tokenizer import encode

        def encoded():
            for work in works_in_folder(source):
                try:
                    yield np.asarray([SOS, *encode(work.path), EOS], dtype=np.int64)
                except BadMidiError:
                    continue  # evaluation scores what can be read; prepare reports the rest

        iterator = encoded()
    total = 0
    for ids in iterator:
        works.append(np.asarray(ids, dtype=np.int64))
        total += len(ids)
        if max_tokens and total >= max_tokens:
            break
    if not works:
        raise DataError(f"no works to evaluate in {source}" + (f" (split {split})" if train is not None else ""))
    return works, (train if train is not None and len(train) else None)


def evaluate(model, works: list[np.ndarray], contexts: Iterable[int] | None = None, batch_size: int = 8,
             device="cpu", train_tokens: np.ndarray | None = None) -> EvalReport:
    contexts = sorted(set(contexts or default_contexts(model.config.max_context)))
    contexts = [c for c in contexts if c <= model.config.max_context] or [model.config.max_context]
    threshold = max(contexts)
    position = np.concatenate([np.arange(1, len(w)) for w in works])  # tokens before each target
    long = position >= threshold
    rows = []
    full_nll = None
    for context in sorted(set(contexts) | {model.config.max_context}):
        nll = np.concatenate(score_tokens(model, works, context, batch_size, device))
        if context == model.config.max_context:
            full_nll = float(nll.mean())
        if context in contexts:
            rows.append(ContextRow(
                context=context,
                stride=_stride(context, model.config.num_latents),
                nll=round(float(nll.mean()), 5),
                tokens=int(nll.size),
                nll_long=round(float(nll[long].mean()), 5) if long.any() else None,
                tokens_long=int(long.sum()),
            ))
    return EvalReport(
        works=len(works),
        tokens=int(position.size),
        nll=round(full_nll, 5),
        unigram_nll=round(unigram_nll(train_tokens, works), 5) if train_tokens is not None else None,
        long_threshold=threshold,
        by_context=rows,
    )


def uniform_nll() -> float:
    """What a model with all-zero logits scores: ln(vocabulary size)."""
    return math.log(VOCAB_SIZE)
