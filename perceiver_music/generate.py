"""Continue a sequence of ids with a PerceiverAR: sampling, caches, stop rules.

One schedule of latent counts serves every backend (DESIGN.md, "Generation with caches"):

* a **reset** is a full forward over the current window (the last max_context ids) with
  R = reset_latents latents; it refills the caches. The prefill is a reset.
* each following **step** adds one token and one latent: its cross-attend K/V join the input
  cache, its query attends to the whole window, every self-attention layer appends its K/V.
* when N latents are cached, the next token triggers a reset again.

So while the window has not slid, step k after a reset predicts exactly what
`model(window, num_latents=R + k)` predicts. Past max_context the window slides (the oldest
cross-attend K/V drop out); cached latents then still carry a trace of what slid out, and
exactness holds again at every reset. Positions restart at 0 at each reset (RoPE is relative,
so this changes nothing in exact arithmetic) and so stay below max_context + N.

Backends: "eager" (KVCache, the readable reference), "static" (the fixed-shape ring-buffer step
of decode_graph.py, run eagerly), "graph" (that step captured in a CUDA graph; chosen by
"auto" on CUDA), "onnx" (that step exported and run by onnxruntime, decode_onnx.py; chosen by
"auto" on a CPU when onnxruntime is installed), and `use_cache=False`: the same schedule with a
full forward per token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .cpu_precision import low_precision_copy
from .key_hold import KeyHold
from .model import KVCache, PerceiverAR
from .tokenizer import (EOS, NOTE_OFF_BASE, NOTE_ON_BASE, PAD, SOS, STEPS_PER_ID, STEPS_PER_SECOND,
                        VOCAB_SIZE)

ProgressFn = Callable[[float, float], None]

# With only max_seconds as a limit, a model that never emits TIME_SHIFT would run forever;
# dense piano needs ~40 ids per second of music, so 400 per second (+256) is a safe cap.
MAX_IDS_PER_SECOND = 400
PROGRESS_INTERVAL_S = 0.1


def default_reset_latents(num_latents: int) -> int:
    """R = N - 128 latents at a reset, but at least N/2: a reset every min(128, N/2) tokens."""
    return max(num_latents - 128, (num_latents + 1) // 2)


# ---- sampling -----------------------------------------------------------------------------------


# Sampling's arrays are tiny, (rows, vocab): on a CPU numpy draws (_draw_on_host), off torch's
# thread pool. A parallel torch op there (a softmax over two or more rows) leaves torch's OpenMP
# workers spinning for about 8 ms after it, on the core that the compiled step's own threads need
# next (BENCHMARKS.md, "Sampling on one torch thread"). Off (torch's ops on torch's threads) only
# for bench/sampler_threads.py.
SAMPLE_ON_ONE_CPU_THREAD = True


@contextlib.contextmanager
def _one_torch_thread(device: torch.device):
    threads = torch.get_num_threads()
    if not SAMPLE_ON_ONE_CPU_THREAD or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Next ids (B,) from logits (B, vocab). PAD and SOS are never chosen; temperature 0 is argmax.

    Filters apply after the temperature, in order: top-k (exactly k ids), top-p (the smallest
    set of most likely ids whose probability reaches top_p), min-p (ids at least min_p times
    as likely as the most likely one). `uniform` (B,) in [0, 1) draws each row by inverse CDF
    instead of from `generator`: rows seeded apart (generate_batch) stay independent.
    `bias` (vocab,) or (B, vocab) is added to the logits first: -inf bans an id (EOS before the
    asked length, a long silence before the first note). On a CPU it draws in numpy
    (_draw_on_host), elsewhere in torch (_draw): the same ids from the same generator.
    """
    if logits.device.type == "cpu" and SAMPLE_ON_ONE_CPU_THREAD:
        return _draw_on_host(logits, temperature, top_k, top_p, min_p, generator, uniform, bias)
    with _one_torch_thread(logits.device):
        return _draw(logits, temperature, top_k, top_p, min_p, generator, uniform, bias)


def _draw_on_host(logits: Tensor, temperature: float, top_k: int, top_p: float, min_p: float,
                  generator: torch.Generator | None, uniform: Tensor | None, bias: Tensor | None) -> Tensor:
    """_draw in numpy, for CPU logits: the same filters and the same inverse-CDF draw from the
    same uniform. torch's twenty-odd small ops on one row cost more than numpy's
    (bench/id_anatomy.py's sampler part times both), and numpy never wakes torch's thread pool."""
    x = logits.detach().numpy().astype(np.float64)  # a copy
    if bias is not None:
        b = bias.detach().cpu().numpy()
        if b.shape not in ((x.shape[1],), x.shape):
            raise ValueError(f"a sampling bias has the shape {tuple(b.shape)}, not ({x.shape[1]},) or {x.shape}")
        x += b
    x[:, PAD] = x[:, SOS] = -np.inf
    if temperature == 0:
        return torch.from_numpy(x.argmax(axis=1))
    x /= temperature
    rows, V = x.shape
    by_row = np.arange(rows)[:, None]
    if 0 < top_k < V:
        keep = np.argpartition(-x, top_k - 1, axis=1)[:, :top_k]  # exactly k ids, as topk
        kept = np.full_like(x, -np.inf)
        kept[by_row, keep] = x[by_row, keep]
        x = kept
    probs = np.exp(x - x.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = probs[by_row, order]
        drop_sorted = sorted_probs.cumsum(axis=1) - sorted_probs >= top_p  # the first id always stays
        probs[by_row, order] = np.where(drop_sorted, 0.0, sorted_probs)
    if min_p > 0.0:
        probs[probs < min_p * probs.max(axis=1, keepdims=True)] = 0.0
    if uniform is None:
        uniform = torch.rand(rows, generator=generator)
    cdf = probs.cumsum(axis=1)
    target = uniform.detach().cpu().numpy().astype(np.float64) * cdf[:, -1]
    # the first id whose cumulative mass passes the draw (u < 1: never a zero-probability id)
    return torch.from_numpy(np.minimum((cdf <= target[:, None]).sum(axis=1), V - 1))


def _draw(logits: Tensor, temperature: float, top_k: int, top_p: float, min_p: float,
          generator: torch.Generator | None, uniform: Tensor | None, bias: Tensor | None) -> Tensor:
    logits = logits.float().clone()
    if bias is not None:
        logits = logits + bias
    logits[:, PAD] = logits[:, SOS] = float("-inf")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.size(-1):
        keep = torch.full_like(logits, float("-inf")).scatter_(1, logits.topk(top_k, dim=-1).indices, 0.0)
        logits = logits + keep
    probs = logits.softmax(dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely ids
        drop_sorted = before >= top_p  # the first id always stays (before == 0)
        probs = probs.masked_fill(drop_sorted.scatter(1, order, drop_sorted), 0.0)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    if uniform is None:
        # One uniform a row and its inverse CDF, as the host's draw: torch.multinomial would draw
        # a random number per id (the exponential trick), slower and another id for the seed.
        uniform = torch.rand(probs.size(0), generator=generator, device=probs.device)
    # In float64 the draw's share of the mass stays below the whole (u < 1), so the first id
    # whose cumulative mass passes it always has probability above zero.
    cdf = probs.double().cumsum(dim=-1)
    target = (uniform.double() * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=probs.size(-1) - 1)


# ---- the input window ---------------------------------------------------------------------------


class TokenWindow:
    """The last max_context ids of every variation, on the model's device, O(1) per append."""

    def __init__(self, prompt: Sequence[int] | Tensor, batch: int, max_context: int, device: torch.device) -> None:
        """`prompt`: one sequence for every row, or a (batch, L) tensor with a row each."""
        self.max_context = max_context
        self.buf = torch.empty(batch, 2 * max_context, dtype=torch.long, device=device)
        rows = torch.as_tensor(prompt, dtype=torch.long, device=device)
        self.buf[:, : rows.size(-1)] = rows
        self.start, self.end = 0, rows.size(-1)

    def append(self, tokens: Tensor) -> None:
        if self.end == self.buf.size(1):  # buffer full: move the window to the front
            kept = self.end - self.start
            self.buf[:, :kept] = self.buf[:, self.start : self.end].clone()
            self.start, self.end = 0, kept
        self.buf[:, self.end] = tokens
        self.end += 1
        self.start = max(self.start, self.end - self.max_context)

    def view(self) -> Tensor:
        return self.buf[:, self.start : self.end]

    def __len__(self) -> int:
        return self.end - self.start


# ---- backends: reset(window, n) and step(tokens, window) both return next-token logits (B, V) ----


def autocast(device: torch.device, dtype: torch.dtype | None):
    # cache_enabled=False: autocast's weight cache must not outlive a CUDA-graph capture.
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


class EagerDecoder:
    """The reference: growable views over preallocated caches (model.KVCache).

    `dtype`: autocast dtype; on a CPU, float16 instead means the model's Linear weights in
    float16 and bfloat16 copies (`cpu_precision.low_precision_copy`), and float32 elsewhere.
    """

    def __init__(self, model: PerceiverAR, dtype: torch.dtype | None = None) -> None:
        self.model, self.dtype = cpu_model(model, dtype), autocast_dtype(model, dtype)
        self.requested_dtype = dtype
        self.cache = KVCache(model.config)

    def reset(self, window: Tensor, num_latents: int) -> Tensor:
        with autocast(window.device, self.dtype):
            return self.model(window, num_latents, cache=self.cache, last_only=True)[:, -1].float()

    def step(self, tokens: Tensor, window: Tensor) -> Tensor:
        with autocast(tokens.device, self.dtype):
            return self.model.decode_step(tokens, self.cache).float()


class NaiveDecoder:
    """No cache: a full forward with the schedule's latent count for every token (the baseline)."""

    def __init__(self, model: PerceiverAR, dtype: torch.dtype | None = None) -> None:
        self.model, self.dtype = cpu_model(model, dtype), autocast_dtype(model, dtype)
        self.latents = 0

    def reset(self, window: Tensor, num_latents: int) -> Tensor:
        self.latents = num_latents
        with autocast(window.device, self.dtype):
            return self.model(window, num_latents, last_only=True)[:, -1].float()

    def step(self, tokens: Tensor, window: Tensor) -> Tensor:
        self.latents += 1
        with autocast(window.device, self.dtype):
            return self.model(window, self.latents, last_only=True)[:, -1].float()


def _on_cpu(model: PerceiverAR) -> bool:
    return next(model.parameters()).device.type == "cpu"


def autocast_dtype(model: PerceiverAR, dtype: torch.dtype | None) -> torch.dtype | None:
    """float16 on a CPU is done by the weights (`cpu_model`), not by autocast."""
    return None if dtype == torch.float16 and _on_cpu(model) else dtype


def cpu_model(model: PerceiverAR, dtype: torch.dtype | None) -> PerceiverAR:
    """The model a decoder runs: with dtype float16 on a CPU, its lower-precision copy."""
    return low_precision_copy(model) if dtype == torch.float16 and _on_cpu(model) else model


BACKENDS = ("auto", "eager", "static", "graph", "onnx")
# dtype of generate() -> precision of the onnx runtime: None is float32 (the exact reference);
# torch.qint8 asks for onnxruntime's int8 weight products (decode_onnx.PRECISION_OF).
ONNX_PRECISIONS = (None, torch.float32, torch.qint8)


def onnx_available() -> bool:
    from .decode_onnx import available

    return available()


def auto_backend(model: PerceiverAR, dtype: torch.dtype | None = None) -> str:
    """What backend="auto" runs: a CUDA graph on CUDA, the onnx runtime on a CPU when it is
    installed (and the dtype is one it has), else eager."""
    softmax = model.config.attention == "softmax"
    device = next(model.parameters()).device
    if device.type == "cuda" and softmax:
        return "graph"
    if device.type == "cpu" and softmax and dtype in ONNX_PRECISIONS and onnx_available():
        return "onnx"
    return "eager"


def make_decoder(model: PerceiverAR, batch: int, *, use_cache: bool, backend: str, dtype: torch.dtype | None):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if dtype == torch.qint8 and backend not in ("auto", "onnx"):
        raise ValueError("int8 weights (dtype torch.qint8) are the onnx runtime's; use backend onnx")
    if not use_cache:
        if dtype == torch.qint8:
            raise ValueError("int8 weights (dtype torch.qint8) need the cache (the onnx runtime)")
        return NaiveDecoder(model, dtype)
    chosen = auto_backend(model, dtype) if backend == "auto" else backend
    if chosen == "onnx":
        if dtype not in ONNX_PRECISIONS:
            raise ValueError(f"the onnx runtime computes float32 or int8 (torch.qint8), not {dtype}")
        if not onnx_available():
            raise ValueError("the onnx runtime needs onnxruntime: pip install onnxruntime, or use backend eager")
        from .decode_onnx import PRECISION_OF, OnnxDecoder

        try:
            return OnnxDecoder(model, batch, precision=PRECISION_OF[dtype])
        except Exception as error:  # noqa: BLE001 - "auto" falls back to the exact eager path
            if backend != "auto" or dtype == torch.qint8:
                raise
            import warnings

            warnings.warn(f"the onnx runtime failed ({error}); generating with the eager path", RuntimeWarning)
            chosen = "eager"
    if chosen == "eager":
        return EagerDecoder(model, dtype)
    from .decode_graph import GraphDecoder

    return GraphDecoder(model, batch, dtype=dtype, capture=backend == "graph")


def runtime_name(decoder) -> str:
    """What computed the logits, for provenance: eager, eager-float16 (on a CPU: cpu_precision's
    weights), eager-bfloat16, naive, static, graph, onnx-float32, onnx-int8, and
    onnx-float32+native-step, onnx-int8+native-step (onnxruntime's resets, native_step.py's steps)."""
    name = type(decoder).__name__
    if name == "OnnxDecoder":
        return f"onnx-{decoder.precision}" + ("+native-step" if decoder.native is not None else "")
    if name == "GraphDecoder":
        return "graph" if decoder.graph is not None else "static"
    if name == "EagerDecoder" and decoder.requested_dtype is not None:
        return "eager-" + str(decoder.requested_dtype).removeprefix("torch.")  # eager-float16: cpu_precision
    return {"EagerDecoder": "eager", "NaiveDecoder": "naive"}.get(name, name)


# ---- the loop -----------------------------------------------------------------------------------


def generate(
    model: PerceiverAR,
    prompt_ids: Sequence[int] | Tensor,
    *,
    max_new_tokens: int | None = None,
    max_seconds: float | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    seed: int | None = None,
    num_variations: int = 1,
    reset_latents: int | None = None,
    use_cache: bool = True,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    stats: dict | None = None,
    allow_eos: bool = True,
    first_note_within: float | None = None,
    key_hold: float = 0.0,
) -> list[list[int]]:
    """Continue `prompt_ids`; returns the new ids of each variation (EOS left out).

    Give max_new_tokens, max_seconds (music time counted through TIME_SHIFT ids) or both. A
    variation stops at EOS, at max_new_tokens, or at the first TIME_SHIFT that would pass
    max_seconds (left out; one landing exactly on it is kept), while the others go on.
    Variations run as one batch. `cancel` (a threading.Event) stops within one step and
    returns what exists. `progress(done, total)` is called at least every 0.1 s between
    steps and at the end, counting ids when max_new_tokens is given, else music seconds.
    `dtype=None` computes in the model's own precision: the exact reference. For speed pass
    torch.bfloat16 on CUDA (autocast) and torch.float16 on a CPU with the eager backend (float16
    and bfloat16 Linear weights, see `cpu_precision`); torch.qint8 asks the onnx runtime for
    int8 weight products; all change logits slightly. `backend` picks the decoder (module
    docstring): "auto" is a CUDA graph on CUDA and, on a CPU, the onnx runtime when onnxruntime
    is installed and the dtype is None, float32 or qint8 (else eager). An empty prompt starts
    from SOS. `stats`, a dict, is kept up to date with "ids" (ids sampled per variation so far),
    for a front end's tokens/s, with "results" (the kept ids of each variation, growing as they
    are read: a live view), gets "runtime" (`runtime_name`) and, at the end, "ended_by_eos" (per
    variation: did EOS end it).
    `allow_eos=False` never samples EOS: the music runs to the asked length. `first_note_within`
    (seconds): until a variation's first NOTE_ON, no TIME_SHIFT may take it past that much
    silence, so the music starts sounding at once (after a primer that ends a piece, a model
    tends to wait). `key_hold` (0 = off) pulls NOTE_ONs toward the pitch classes of the music
    heard so far (`key_hold.KeyHold`): a small model's continuations drift out of key without it.
    """
    return _generate(
        model, [prompt_ids], [seed], max_new_tokens=max_new_tokens, max_seconds=max_seconds,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, num_variations=num_variations,
        reset_latents=reset_latents, use_cache=use_cache, progress=progress, cancel=cancel, backend=backend,
        dtype=dtype, stats=stats, allow_eos=allow_eos, first_note_within=first_note_within, key_hold=key_hold,
    )[0]


def generate_batch(
    model: PerceiverAR,
    prompts: Sequence[Sequence[int]],
    *,
    seeds: Sequence[int | None],
    **options,
) -> list[list[list[int]]]:
    """Continue several prompts in one batch (a folder's files on a GPU); for each prompt, the
    new ids of each of its variations. Options are generate()'s.

    The prompts must have one length once cut to max_context (a batch is one rectangle:
    crop longer ones first). Each prompt samples from its own seed, so its music does not
    depend on which prompts share its batch (up to float rounding of batched kernels).
    """
    if len(seeds) != len(prompts):
        raise ValueError("give one seed per prompt")
    return _generate(model, list(prompts), list(seeds), **options)


def _generate(
    model: PerceiverAR,
    prompts: list,
    seeds: list,
    *,
    max_new_tokens: int | None = None,
    max_seconds: float | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    num_variations: int = 1,
    reset_latents: int | None = None,
    use_cache: bool = True,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    stats: dict | None = None,
    allow_eos: bool = True,
    first_note_within: float | None = None,
    key_hold: float = 0.0,
) -> list[list[list[int]]]:
    cfg = model.config
    rows = []
    for prompt_ids in prompts:
        prompt = [int(t) for t in (prompt_ids.tolist() if isinstance(prompt_ids, Tensor) else prompt_ids)]
        _check_args(prompt, max_new_tokens, max_seconds, temperature, top_k, top_p, min_p, num_variations, key_hold)
        rows.append((prompt or [SOS])[-cfg.max_context :])
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"prompts of one batch need one length, not {sorted({len(r) for r in rows})}")
    N = cfg.num_latents
    R = default_reset_latents(N) if reset_latents is None else int(reset_latents)
    if not 1 <= R <= N:
        raise ValueError(f"reset_latents must be between 1 and num_latents ({N})")
    limit_ids = max_new_tokens if max_new_tokens is not None else int(MAX_IDS_PER_SECOND * max_seconds) + 256
    limit_steps = None if max_seconds is None else round(max_seconds * STEPS_PER_SECOND)

    device = next(model.parameters()).device
    V = num_variations
    B = len(rows) * V
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        generators.append(generator)

    rules = _SamplingRules(B, device, allow_eos, first_note_within)
    hold = KeyHold([row for row in rows for _ in range(V)], key_hold) if key_hold > 0 else None

    def sample(logits: Tensor) -> Tensor:
        if hold is not None:
            logits = hold.apply(logits)
        options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, bias=rules.bias())
        if len(generators) == 1:
            tokens = sample_next(logits, generator=generators[0], **options)
        else:
            # one draw per row from its own prompt's generator: a prompt's music is its own
            uniform = torch.cat([torch.rand(V, generator=g, device=device) for g in generators])
            tokens = sample_next(logits, uniform=uniform, **options)
        rules.update(tokens)
        if hold is not None:
            hold.update(tokens)
        return tokens

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = make_decoder(model, B, use_cache=use_cache, backend=backend, dtype=dtype)
            if stats is not None:
                stats["runtime"] = runtime_name(decoder)
            window = TokenWindow(torch.tensor(rows).repeat_interleave(V, dim=0), B, cfg.max_context, device)
            sampled = SampledIds(B, device, limit_ids, limit_steps, read_every=reads_every(device))
            steps = 0  # ids sampled per variation so far
            if stats is not None:
                stats["results"] = sampled.results  # grows as ids are read: a front end's live view

            def report(final: bool = False) -> None:
                if progress is None:
                    return
                if max_new_tokens is not None:
                    total, now = float(max_new_tokens), float(steps)
                else:
                    sampled.read()  # music time needs the ids on the host
                    total = float(max_seconds)
                    now = min(total if d else s / STEPS_PER_SECOND for d, s in zip(sampled.done, sampled.music_steps))
                progress(total if final and sampled.all_done() else min(now, total), total)

            def by_prompt() -> list[list[list[int]]]:
                return [sampled.results[i * V : (i + 1) * V] for i in range(len(rows))]

            last_report = time.monotonic()
            report()
            if limit_ids == 0:
                sampled.done[:] = True
                report(final=True)
                return by_prompt()
            latents = min(R, len(window))
            logits = decoder.reset(window.view(), latents)
            for _ in range(limit_ids + 1):
                tokens = sample(logits)
                steps += 1
                if stats is not None:
                    stats["ids"] = steps
                sampled.add(tokens, read_now=steps >= limit_ids)
                if sampled.all_done() or (cancel is not None and cancel.is_set()):
                    break
                if time.monotonic() - last_report >= PROGRESS_INTERVAL_S:
                    report()
                    last_report = time.monotonic()
                window.append(tokens)
                if latents >= N:  # the latent cache is full: reset over the current window
                    latents = min(R, len(window))
                    logits = decoder.reset(window.view(), latents)
                else:
                    latents += 1
                    logits = decoder.step(tokens, window.view())
            sampled.read()
            if stats is not None:
                stats["ended_by_eos"] = sampled.ended_by_eos.tolist()
            report(final=True)
            return by_prompt()
    finally:
        model.train(was_training)


# Reading ids back makes the host wait for the device. On a GPU the loop reads them every
# few steps instead, so it queues the next steps while the device is still busy with the last.
READ_EVERY_ON_GPU = 32


def reads_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else READ_EVERY_ON_GPU


class SampledIds:
    """The ids each variation keeps, under the stop rules; sampled ids wait on the device until read.

    A variation stops at EOS (left out), at limit_ids ids, or at the first TIME_SHIFT that
    would pass limit_steps of music (left out; one landing exactly on it is kept). Finished
    variations keep being sampled with the others (one batch) and those ids are dropped. The
    rules are applied to a read chunk all at once, with the same result as id by id.
    """

    def __init__(self, batch: int, device: torch.device, limit_ids: int, limit_steps: int | None, read_every: int) -> None:
        self.pending = torch.empty(batch, read_every, dtype=torch.long, device=device)
        self.count = 0  # ids waiting in `pending`, per variation
        self.limit_ids, self.limit_steps = limit_ids, limit_steps
        self.results: list[list[int]] = [[] for _ in range(batch)]
        self.music_steps = np.zeros(batch, dtype=np.int64)
        self.done = np.zeros(batch, dtype=bool)
        self.ended_by_eos = np.zeros(batch, dtype=bool)

    def add(self, tokens: Tensor, read_now: bool = False) -> None:
        if self.pending.size(1) == 1:  # read every id (on a CPU): no device to wait for
            self._keep_one(tokens.tolist())
            return
        self.pending[:, self.count] = tokens
        self.count += 1
        if read_now or self.count == self.pending.size(1):
            self.read()

    def all_done(self) -> bool:
        return bool(self.done.all())

    def read(self) -> None:
        """Bring the waiting ids to the host (the only place the loop waits for the device)."""
        if self.count == 0:
            return
        chunk = self.pending[:, : self.count].cpu().numpy()
        self.count = 0
        k = chunk.shape[1]
        shifts = STEPS_PER_ID[chunk]
        music = self.music_steps[:, None] + shifts.cumsum(axis=1)  # music time if ids 0..j were kept
        kept_before = np.array([len(r) for r in self.results])[:, None]
        # ids that end a variation and are left out, or kept as its last id
        left_out = chunk == EOS
        last = kept_before + np.arange(1, k + 1) >= self.limit_ids
        if self.limit_steps is not None:
            left_out |= music > self.limit_steps
            last |= (music >= self.limit_steps) & (shifts > 0)
        first_left_out = np.where(left_out.any(axis=1), left_out.argmax(axis=1), k)
        first_last = np.where(last.any(axis=1), last.argmax(axis=1), k)
        for i in np.flatnonzero(~self.done):
            if first_last[i] < first_left_out[i]:
                keep, self.done[i] = first_last[i] + 1, True
            else:
                keep, self.done[i] = first_left_out[i], first_left_out[i] < k
                self.ended_by_eos[i] = bool(self.done[i] and chunk[i, keep] == EOS)
            if keep:
                self.results[i].extend(chunk[i, :keep].tolist())
                self.music_steps[i] = music[i, keep - 1]

    def _keep_one(self, ids: list[int]) -> None:
        """read()'s rules for one new id a row, in plain Python: on (rows, 1) arrays numpy's
        calls cost more than the rules (bench/id_anatomy.py's "rest" of the loop)."""
        for i, t in enumerate(ids):
            if self.done[i]:
                continue
            shift = _STEPS_OF_ID[t]
            music = int(self.music_steps[i]) + shift
            left_out = t == EOS
            last = len(self.results[i]) + 1 >= self.limit_ids
            if self.limit_steps is not None:
                left_out |= music > self.limit_steps
                last |= music >= self.limit_steps and shift > 0
            if left_out:
                self.done[i] = True
                self.ended_by_eos[i] = t == EOS
                continue
            self.results[i].append(t)
            self.music_steps[i] = music
            self.done[i] = last


_STEPS_OF_ID = STEPS_PER_ID.tolist()


class _SamplingRules:
    """Ids banned per row before sampling: EOS (unless allowed) and, until a row's first NOTE_ON,
    any TIME_SHIFT that would make its silence longer than `first_note_within` seconds. Kept on
    the device (no host wait); the silence rule is dropped once every row has sounded (checked
    every few steps on a GPU)."""

    def __init__(self, batch: int, device: torch.device, allow_eos: bool, first_note_within: float | None) -> None:
        self.base = None
        if not allow_eos:
            self.base = torch.zeros(VOCAB_SIZE, device=device)
            self.base[EOS] = float("-inf")
        self.limit = None if first_note_within is None else int(round(first_note_within * STEPS_PER_SECOND))
        if self.limit is not None:
            self.shift = torch.as_tensor(STEPS_PER_ID, device=device)
            self.note_on = torch.zeros(VOCAB_SIZE, dtype=torch.bool, device=device)
            self.note_on[NOTE_ON_BASE:NOTE_OFF_BASE] = True
            self.silence = torch.zeros(batch, dtype=torch.long, device=device)
            self.sounded = torch.zeros(batch, dtype=torch.bool, device=device)
            self.check_every, self.count = reads_every(device), 0

    def bias(self) -> Tensor | None:
        if self.limit is None:
            return self.base
        too_long = (~self.sounded)[:, None] & (self.silence[:, None] + self.shift[None, :] > self.limit)
        bias = torch.zeros(too_long.shape, device=too_long.device).masked_fill_(too_long, float("-inf"))
        return bias if self.base is None else bias + self.base

    def update(self, tokens: Tensor) -> None:
        if self.limit is None:
            return
        self.sounded |= self.note_on[tokens]
        self.silence += self.shift[tokens]
        self.count += 1
        if self.count % self.check_every == 0 and bool(self.sounded.all()):
            self.limit = None


def _check_args(prompt, max_new_tokens, max_seconds, temperature, top_k, top_p, min_p, num_variations,
                key_hold) -> None:
    if max_new_tokens is None and max_seconds is None:
        raise ValueError("give max_new_tokens, max_seconds or both")
    if max_new_tokens is not None and max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError("max_seconds must be > 0")
    if temperature < 0:
        raise ValueError("temperature must be >= 0 (0 is greedy)")
    if top_k < 0 or not 0 < top_p <= 1 or not 0 <= min_p <= 1:
        raise ValueError("need top_k >= 0, 0 < top_p <= 1 and 0 <= min_p <= 1")
    if num_variations < 1:
        raise ValueError("num_variations must be >= 1")
    if key_hold < 0:
        raise ValueError("key_hold must be >= 0 (0 is off)")
    bad = [t for t in prompt if not 0 <= t < VOCAB_SIZE]
    if bad:
        raise ValueError(f"prompt ids outside the vocabulary of {VOCAB_SIZE}: {bad[:5]}")
