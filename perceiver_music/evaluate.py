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
    unigram_nll: float | None  # unigram fit on the training split
    long_threshold: int
    by_context: list[ContextRow] = field(default_factory=list)
    unigram_self_nll: float | None = None  # unigram fit on the scored tokens themselves

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


def unigram_self_nll(works: list[np.ndarray]) -> float:
    """A unigram model fit on the scored tokens themselves (no smoothing needed): how much a
    model knows beyond how often each id occurs in exactly this music."""
    targets = np.concatenate([w[1:] for w in works])
    p = np.bincount(targets, minlength=VOCAB_SIZE) / targets.size
    return float(-np.log(p[targets]).mean())


def load_eval_works(source: str | os.PathLike, split: str = "test", max_tokens: int | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Works to score: a prepared DATA_DIR's split, or every MIDI file of a folder.

    Returns the works (each [SOS, ids, EOS]) and the training tokens for the unigram baseline
    (None for a folder)."""
    works, _, train = load_eval_works_by_source(source, split, max_tokens)
    return works, train


def load_eval_works_by_source(source: str | os.PathLike, split: str = "test", max_tokens: int | None = None,
                              per_source: bool = False, only: set[str] | None = None,
                              ) -> tuple[list[np.ndarray], list[str], np.ndarray | None]:
    """As load_eval_works, plus each work's corpus (a DATA_DIR index's `source`; for a folder,
    its subfolder). `per_source` applies `max_tokens` to each corpus instead of in all; `only`
    keeps the works of these corpora (before the cap)."""
    from .data import TokenData, source_of, works_in_folder

    source = Path(source)
    train = None
    if (source / "meta.json").exists():
        data = TokenData(source)
        iterator = ((source_of(name), ids) for name, ids in data.works(split))
        train = data.tokens("train")
    else:
        from .errors import BadMidiError
        from .tokenizer import encode

        def encoded():
            for work in works_in_folder(source):
                relative = work.name.split("/", 1)[1]
                corpus = relative.split("/", 1)[0] if "/" in relative else source.resolve().name
                try:
                    yield corpus, np.asarray([SOS, *encode(work.path), EOS], dtype=np.int64)
                except BadMidiError:
                    continue  # evaluation scores what can be read; prepare reports the rest

        iterator = encoded()
    works: list[np.ndarray] = []
    sources: list[str] = []
    totals: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    for corpus, ids in iterator:
        seen.add(corpus)
        if only is not None and corpus not in only:
            continue
        key = corpus if per_source else ""
        if max_tokens and totals[key] >= max_tokens:
            if per_source:
                continue
            break
        works.append(np.asarray(ids, dtype=np.int64))
        sources.append(corpus)
        totals[key] += len(ids)
    if not works:
        wanted = f" of {', '.join(sorted(only))} (its corpora: {', '.join(sorted(seen))})" if only else ""
        raise DataError(f"no works{wanted} to evaluate in {source}" + (f" (split {split})" if train is not None else ""))
    return works, sources, (train if train is not None and len(train) else None)


def evaluate(model, works: list[np.ndarray], contexts: Iterable[int] | None = None, batch_size: int = 8,
             device="cpu", train_tokens: np.ndarray | None = None) -> EvalReport:
    return evaluate_by_source(model, works, None, contexts, batch_size, device, train_tokens)["all"]


def evaluate_by_source(model, works: list[np.ndarray], sources: list[str] | None,
                       contexts: Iterable[int] | None = None, batch_size: int = 8, device="cpu",
                       train_tokens: np.ndarray | None = None) -> dict[str, EvalReport]:
    """One report for all works ("all") and, given each work's corpus in `sources`, one per
    corpus: every token is scored once per context and the reports are its subsets."""
    contexts = sorted(set(contexts or default_contexts(model.config.max_context)))
    contexts = [c for c in contexts if c <= model.config.max_context] or [model.config.max_context]
    scored = sorted(set(contexts) | {model.config.max_context})
    per_work = {c: score_tokens(model, works, c, batch_size, device) for c in scored}
    subsets = {"all": list(range(len(works)))}
    for i, corpus in enumerate(sources or []):
        subsets.setdefault(corpus, []).append(i)
    if len(subsets) == 2:  # one corpus: its report is the "all" report
        subsets = {"all": subsets["all"]}
    threshold = max(contexts)
    reports = {}
    for name, members in subsets.items():
        chosen = [works[i] for i in members]
        position = np.concatenate([np.arange(1, len(w)) for w in chosen])  # tokens before each target
        long = position >= threshold
        rows = []
        for context in contexts:
            nll = np.concatenate([per_work[context][i] for i in members])
            rows.append(ContextRow(
                context=context,
                stride=_stride(context, model.config.num_latents),
                nll=round(float(nll.mean()), 5),
                tokens=int(nll.size),
                nll_long=round(float(nll[long].mean()), 5) if long.any() else None,
                tokens_long=int(long.sum()),
            ))
        full = np.concatenate([per_work[model.config.max_context][i] for i in members])
        reports[name] = EvalReport(
            works=len(chosen),
            tokens=int(position.size),
            nll=round(float(full.mean()), 5),
            unigram_nll=round(unigram_nll(train_tokens, chosen), 5) if train_tokens is not None else None,
            long_threshold=threshold,
            by_context=rows,
            unigram_self_nll=round(unigram_self_nll(chosen), 5),
        )
    return reports


def uniform_nll() -> float:
    """What a model with all-zero logits scores: ln(vocabulary size)."""
    return math.log(VOCAB_SIZE)
