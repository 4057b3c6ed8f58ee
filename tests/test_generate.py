"""Generation: cache exactness across resets and slides, stop rules, sampling filters, batching."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn.functional as F

from perceiver_music.cpu_precision import LowPrecisionLinear, low_precision_copy, native_bfloat16
from perceiver_music.decode_graph import GraphDecoder
from perceiver_music.generate import (
    EagerDecoder,
    SampledIds,
    TokenWindow,
    default_reset_latents,
    generate,
    generate_batch,
    sample_next,
)
from model_fixtures import pin_logits, randomize_weights
from perceiver_music.model import PerceiverAR, PerceiverARConfig
from perceiver_music.tokenizer import EOS, PAD, SOS, STEPS_PER_ID, TIME_SHIFT_BASE, VOCAB_SIZE, seconds_of

MAX_CONTEXT, N = 64, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> PerceiverARConfig:
    base = dict(max_context=MAX_CONTEXT, num_latents=N, d_model=32, n_heads=2, cross_heads=4, n_layers=2, dropout=0.0)
    base.update(overrides)
    return PerceiverARConfig(**base)


def random_model(seed: int = 0, favour: int | None = None, **overrides) -> PerceiverAR:
    """Random weights everywhere, so that greedy output varies.

    EOS is pushed far down (every test that wants lengths can rely on it), unless `favour`
    names an id that should win every step.
    """
    torch.manual_seed(seed)
    model = randomize_weights(PerceiverAR(tiny_config(**overrides)))
    return pin_logits(model, high=favour).eval()


def ids_stream(length: int, seed: int = 3) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (length,), generator=g).tolist()


def replay_schedule(model, decoder, tokens: list[int], prompt_len: int, R: int):
    """Feed `tokens` through a decoder on generate's schedule; yield (logits, window, latents, kind)."""
    window = TokenWindow(tokens[:prompt_len], 1, model.config.max_context, torch.device("cpu"))
    latents = min(R, len(window))
    yield decoder.reset(window.view(), latents), window.view().clone(), latents, "reset"
    for t in tokens[prompt_len:]:
        tok = torch.tensor([t])
        window.append(tok)
        if latents >= model.config.num_latents:
            latents = min(R, len(window))
            yield decoder.reset(window.view(), latents), window.view().clone(), latents, "reset"
        else:
            latents += 1
            yield decoder.step(tok, window.view()), window.view().clone(), latents, "step"


# ---- cache exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["softmax", "linear"])
@pytest.mark.parametrize("make", ["eager", "static"])
def test_each_cached_step_equals_full_forward_until_the_window_slides(attention, make):
    model = random_model(attention=attention)
    if make == "static" and attention == "linear":
        pytest.skip("the static step is softmax only")
    decoder = EagerDecoder(model) if make == "eager" else GraphDecoder(model, 1, capture=False)
    R = default_reset_latents(N)
    tokens = ids_stream(5 * MAX_CONTEXT)
    resets = steps = 0
    slid = False
    with torch.inference_mode():
        for logits, window, latents, kind in replay_schedule(model, decoder, tokens, 3, R):
            slid = slid or window.shape[1] == MAX_CONTEXT
            full = model(window, num_latents=latents)[:, -1]
            if not slid or kind == "reset":  # exact before the first slide and at every reset
                torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
                resets += kind == "reset" and not slid
                steps += kind == "step" and not slid
            else:  # cached latents remember what slid out: close, not equal
                assert torch.isfinite(logits).all()
    assert resets >= 4 and steps >= 20


@pytest.mark.parametrize("prompt_len, R", [(10, None), (6, None), (3, 4)])
def test_static_ring_buffer_matches_eager_cache_far_past_the_window(prompt_len, R):
    # prompt 6: a reset lands at window 60, so its steps wrap around the end of the ring.
    model = random_model()
    eager, static = EagerDecoder(model), GraphDecoder(model, 1, capture=False)
    tokens = ids_stream(4 * MAX_CONTEXT, seed=5)
    R = R or default_reset_latents(N)
    with torch.inference_mode():
        pairs = zip(
            replay_schedule(model, eager, tokens, prompt_len, R), replay_schedule(model, static, tokens, prompt_len, R)
        )
        for count, ((a, *_), (b, *_)) in enumerate(pairs):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert count > 3 * MAX_CONTEXT


def decoder_class(backend: str):
    """The class generate() runs for `backend` (the onnx runtime's is skipped without onnxruntime)."""
    if backend == "eager":
        return EagerDecoder
    pytest.importorskip("onnxruntime")
    from perceiver_music.decode_onnx import OnnxDecoder

    return OnnxDecoder


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_generate_follows_one_schedule_of_latent_counts(monkeypatch, backend):
    calls = []
    cls = decoder_class(backend)
    real_reset = cls.reset

    def spy(self, window, num_latents):
        calls.append((window.shape[1], num_latents))
        return real_reset(self, window, num_latents)

    monkeypatch.setattr(cls, "reset", spy)
    model = random_model()
    generate(model, ids_stream(40), max_new_tokens=100, temperature=0, backend=backend)
    R = default_reset_latents(N)
    assert calls[0] == (40, R)  # the prefill is a reset with R latents
    # then a reset every N - R + 1 new ids
    # (N - R steps fill the latent cache; the id after them is a reset), over the window
    expected = [(min(40 + k, MAX_CONTEXT), R) for k in range(N - R + 1, 100, N - R + 1)]
    assert calls[1:] == expected


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_short_prompt_grows_its_latents_before_the_first_reset(monkeypatch, backend):
    calls = []
    cls = decoder_class(backend)
    real_reset = cls.reset
    monkeypatch.setattr(cls, "reset", lambda s, w, n: calls.append((w.shape[1], n)) or real_reset(s, w, n))
    generate(random_model(), [5], max_new_tokens=30, temperature=0, backend=backend)
    R = default_reset_latents(N)
    assert calls[:2] == [(1, 1), (1 + N, R)]  # 1 latent, N - 1 steps up to N, then a reset


# ---- greedy / cache equivalence and primers --------------------------------------------------------


def test_greedy_with_and_without_cache_agree_up_to_max_context():
    model = random_model()
    prompt = ids_stream(10)
    cached = generate(model, prompt, max_new_tokens=MAX_CONTEXT - 10, temperature=0)
    naive = generate(model, prompt, max_new_tokens=MAX_CONTEXT - 10, temperature=0, use_cache=False)
    static = generate(model, prompt, max_new_tokens=MAX_CONTEXT - 10, temperature=0, backend="static")
    assert cached == naive == static
    assert len(set(cached[0])) > 5  # a varied continuation, not one id repeated


def test_seeded_sampling_with_and_without_cache_agree_up_to_max_context():
    model = random_model(seed=4)
    prompt = ids_stream(7)
    a = generate(model, prompt, max_new_tokens=MAX_CONTEXT - 7, seed=11)
    b = generate(model, prompt, max_new_tokens=MAX_CONTEXT - 7, seed=11, use_cache=False)
    assert a == b


@pytest.mark.parametrize("prompt", [[], [42]])
def test_empty_and_one_token_primers(prompt):
    model = random_model()
    out = generate(model, prompt, max_new_tokens=40, seed=0)
    assert len(out) == 1 and len(out[0]) == 40
    if not prompt:  # an empty primer is the same as starting from SOS
        assert out == generate(model, [SOS], max_new_tokens=40, seed=0)


def test_primer_longer_than_max_context_uses_its_last_max_context_ids():
    model = random_model()
    prompt = ids_stream(3 * MAX_CONTEXT)
    a = generate(model, prompt, max_new_tokens=20, seed=2)
    b = generate(model, prompt[-MAX_CONTEXT:], max_new_tokens=20, seed=2)
    assert a == b and len(a[0]) == 20


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_generation_far_past_max_context(backend):
    model = random_model()
    out = generate(model, ids_stream(20), max_new_tokens=5 * MAX_CONTEXT, seed=1, backend=backend)
    assert len(out[0]) == 5 * MAX_CONTEXT
    assert all(3 <= t < VOCAB_SIZE for t in out[0])


def test_linear_attention_generates_past_max_context():
    model = random_model(attention="linear")
    out = generate(model, ids_stream(5), max_new_tokens=3 * MAX_CONTEXT, seed=1)
    assert len(out[0]) == 3 * MAX_CONTEXT


def test_low_precision_linear_picks_its_weight_by_rows():
    weight = torch.randn(48, 32)
    layer = LowPrecisionLinear(weight)
    one_row, many_rows = torch.randn(1, 1, 32), torch.randn(2, 4, 32)
    expected_one = F.linear(one_row.half(), weight.half()).float()
    many_dtype = torch.bfloat16 if native_bfloat16() else torch.float32
    expected_many = F.linear(many_rows.to(many_dtype), weight.to(many_dtype)).float()
    assert torch.equal(layer(one_row), expected_one) and layer(one_row).dtype == torch.float32
    assert torch.equal(layer(many_rows), expected_many) and layer(many_rows).dtype == torch.float32
    if not native_bfloat16():
        assert layer.many_rows_weight.data_ptr() == weight.data_ptr()  # shared, not copied


def test_float16_cpu_decoding_is_close_and_leaves_the_model_alone():
    model = random_model()
    fast_model = low_precision_copy(model)
    assert fast_model.tok_emb.weight is model.tok_emb.weight  # shared, not copied
    assert isinstance(model.blocks[0].qkv, torch.nn.Linear) and model.blocks[0].qkv.weight.dtype == torch.float32
    assert isinstance(fast_model.blocks[0].qkv, LowPrecisionLinear)
    exact, fast = EagerDecoder(model), EagerDecoder(model, torch.float16)
    assert fast.model is not model and fast.dtype is None  # no CPU autocast: the weights do it
    tokens = ids_stream(3 * MAX_CONTEXT, seed=8)
    R = default_reset_latents(N)
    # Resets (many rows, bfloat16 where native) and steps (one row, float16), through two slides.
    # Compared as what sampling sees: the total variation distance of the next-id distributions
    # (0.02 at most here; these random weights give logits of std ~5, far sharper than a trained
    # model's, and 0.16 at most apart).
    with torch.inference_mode():
        for (a, *_), (b, *_) in zip(replay_schedule(model, exact, tokens, 5, R), replay_schedule(model, fast, tokens, 5, R)):
            assert 0.5 * (a.softmax(-1) - b.softmax(-1)).abs().sum() < 0.05
    out = generate(model, [5], max_new_tokens=2 * MAX_CONTEXT, seed=0, dtype=torch.float16, num_variations=4)
    assert [len(o) for o in out] == [2 * MAX_CONTEXT] * 4


# ---- stop rules, cancel, progress ------------------------------------------------------------------


def test_eos_stops_and_is_left_out():
    model = random_model(favour=EOS)
    assert generate(model, [5, 6], max_new_tokens=50, temperature=0) == [[]]
    assert generate(model, [5, 6], max_new_tokens=50, num_variations=3, seed=0) == [[], [], []]


@pytest.mark.parametrize("max_seconds, expected", [(3.2, 6), (3.0, 6), (0.4, 0), (0.5, 1)])
def test_max_seconds_stops_at_the_right_music_time(max_seconds, expected):
    half_second = TIME_SHIFT_BASE + 49  # TIME_SHIFT of 50 steps
    model = random_model(favour=half_second)
    out = generate(model, [5], max_seconds=max_seconds, temperature=0)[0]
    assert out == [half_second] * expected
    assert seconds_of(out) <= max_seconds


def test_max_seconds_with_sampling_stays_within_one_shift_of_the_limit():
    model = random_model(seed=7)
    for out in generate(model, ids_stream(8), max_seconds=4.0, seed=3, num_variations=4, temperature=1.5):
        assert 3.0 < seconds_of(out) <= 4.0


def test_variations_that_finish_early_stop_while_others_go_on():
    model = random_model(seed=9)
    outs = generate(model, [5], max_seconds=2.0, max_new_tokens=400, seed=0, num_variations=4, temperature=2.0)
    lengths = {len(o) for o in outs}
    assert len(lengths) > 1 and all(seconds_of(o) <= 2.0 for o in outs)


def keep_id_by_id(stream: list[int], limit_ids: int, limit_steps: int | None) -> tuple[list[int], bool]:
    """The stop rules applied one id at a time, written out plainly: (kept ids, finished)."""
    kept, music = [], 0
    for token in stream:
        shift = int(STEPS_PER_ID[token])
        if token == EOS or (limit_steps is not None and music + shift > limit_steps):
            return kept, True
        kept.append(token)
        music += shift
        if len(kept) >= limit_ids or (limit_steps is not None and music >= limit_steps and shift > 0):
            return kept, True
    return kept, False


@pytest.mark.parametrize("read_every", [1, 3, 16])
@pytest.mark.parametrize("limit_ids, limit_steps", [(40, None), (10_000, 300), (25, 250)])
def test_ids_read_in_chunks_follow_the_stop_rules_id_by_id(read_every, limit_ids, limit_steps):
    g = torch.Generator().manual_seed(read_every + limit_ids)
    # Mostly time shifts of up to 0.4 s, some notes, EOS now and then: every rule gets hit.
    pool = torch.tensor([EOS] * 3 + list(range(3, 40)) + list(range(TIME_SHIFT_BASE, TIME_SHIFT_BASE + 40)) * 3)
    streams = pool[torch.randint(len(pool), (12, 80), generator=g)]
    sampled = SampledIds(12, torch.device("cpu"), limit_ids, limit_steps, read_every)
    for step in range(streams.size(1)):
        sampled.add(streams[:, step])
    sampled.read()
    expected = [keep_id_by_id(row, limit_ids, limit_steps) for row in streams.tolist()]
    assert sampled.results == [kept for kept, _ in expected]
    assert sampled.done.tolist() == [finished for _, finished in expected]
    ended_on_eos = sum(done and row[len(kept)] == EOS for row, (kept, done) in zip(streams.tolist(), expected))
    assert 0 < ended_on_eos < 12  # some rows end on EOS, others on a limit


def test_reading_ids_every_few_steps_changes_nothing(monkeypatch):
    """What a GPU does (reads ids back every READ_EVERY_ON_GPU steps), checked on the CPU."""
    model = random_model(seed=9)
    runs = [
        dict(max_seconds=2.0, max_new_tokens=400, seed=0, num_variations=4, temperature=2.0),
        dict(max_new_tokens=70, seed=1, num_variations=3),
        dict(max_seconds=3.0, seed=2, num_variations=2, top_p=0.9),
    ]
    every_step = [generate(model, [5, 6], **run) for run in runs]
    monkeypatch.setattr("perceiver_music.generate.reads_every", lambda device: 7)
    assert [generate(model, [5, 6], **run) for run in runs] == every_step
    eos_model = random_model(favour=EOS)
    assert generate(eos_model, [5], max_new_tokens=50, num_variations=2, seed=0) == [[], []]


class CountingEvent(threading.Event):
    """Reports 'set' from the k-th check on: a deterministic cancel in the middle of a run."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.checks = k, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.k


def test_cancel_stops_within_one_step_and_returns_what_exists():
    model = random_model()
    event = CountingEvent(25)
    out = generate(model, [5, 6], max_new_tokens=10_000, seed=0, cancel=event, num_variations=2)
    assert event.checks == 25  # checked once per step, nothing computed after it was set
    assert [len(o) for o in out] == [25, 25]


def test_cancel_from_another_thread():
    model = random_model()
    event = threading.Event()
    threading.Timer(0.3, event.set).start()
    t0 = time.monotonic()
    out = generate(model, [5], max_new_tokens=200_000, seed=0, cancel=event)
    assert time.monotonic() - t0 < 10
    assert 0 < len(out[0]) < 200_000


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_progress_is_reported_often_and_at_the_end(monkeypatch, backend):
    model = random_model()
    cls = decoder_class(backend)
    real_step = cls.step

    def slow_step(self, tokens, window):  # ~20 ms a step, like a big model
        time.sleep(0.02)
        return real_step(self, tokens, window)

    monkeypatch.setattr(cls, "step", slow_step)
    calls = []
    generate(model, [5], max_new_tokens=60, seed=0, backend=backend,
             progress=lambda d, t: calls.append((time.monotonic(), d, t)))
    assert calls[-1][1:] == (60, 60)
    assert len(calls) >= 5
    dones = [d for _, d, _ in calls]
    assert dones == sorted(dones)
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:])]
    assert max(gaps) < 0.25


def test_progress_counts_music_seconds_without_max_new_tokens():
    model = random_model(favour=TIME_SHIFT_BASE + 99)  # one second per id
    calls = []
    generate(model, [5], max_seconds=3.0, temperature=0, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0.0, 3.0) and calls[-1] == (3.0, 3.0)


# ---- sampling ----------------------------------------------------------------------------------------


def test_seeded_runs_are_reproducible_and_seeds_matter():
    model = random_model()
    a = generate(model, [5, 6, 7], max_new_tokens=50, seed=123, num_variations=2)
    assert a == generate(model, [5, 6, 7], max_new_tokens=50, seed=123, num_variations=2)
    assert a != generate(model, [5, 6, 7], max_new_tokens=50, seed=124, num_variations=2)


def test_variations_differ_when_sampling_and_match_when_greedy():
    model = random_model()
    sampled = generate(model, [5, 6], max_new_tokens=40, seed=0, num_variations=3)
    assert len({tuple(o) for o in sampled}) == 3
    greedy = generate(model, [5, 6], max_new_tokens=40, temperature=0, num_variations=3)
    assert greedy[0] == greedy[1] == greedy[2] == generate(model, [5, 6], max_new_tokens=40, temperature=0)[0]


def _logits(batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, VOCAB_SIZE, generator=g) * 3


def _draws(logits: torch.Tensor, n: int = 4000, **kw) -> set[int]:
    g = torch.Generator().manual_seed(1)
    return set(sample_next(logits.expand(n, -1), generator=g, **kw).tolist())


def test_top_k_top_p_min_p_never_sample_outside_their_sets():
    logits = _logits()
    logits[0, PAD] = logits[0, SOS] = 50.0  # PAD and SOS are never sampled, whatever the model says
    probs = logits.clone()
    probs[0, [PAD, SOS]] = float("-inf")
    probs = probs.softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()

    top5 = set(order[:5])
    drawn = _draws(logits, top_k=5)
    assert drawn <= top5 and len(drawn) == 5

    cum = probs[order].cumsum(0)
    nucleus = set(order[: int((cum < 0.8).sum()) + 1])
    drawn = _draws(logits, top_p=0.8)
    assert drawn <= nucleus and len(drawn) > 1

    allowed = {i for i in range(VOCAB_SIZE) if probs[i] >= 0.1 * probs.max()}
    drawn = _draws(logits, min_p=0.1)
    assert drawn <= allowed and len(drawn) > 1

    assert not _draws(logits) & {PAD, SOS}
    assert sample_next(logits, temperature=0).item() == order[0]


def test_sampling_on_a_cpu_stays_off_torchs_thread_pool(monkeypatch):
    # A parallel torch op in the sampler (a softmax over several rows) leaves torch's workers
    # spinning on the core that the compiled step needs next: on a CPU the sampler draws in numpy
    # (no torch op on the logits at all), keeps the thread count, and draws the same ids as the
    # torch sampler (what bench/sampler_threads.py runs on torch's threads) from the same seed.
    import perceiver_music.generate as G

    calls = []
    real_softmax = torch.Tensor.softmax

    def softmax(self, *args, **kwargs):
        calls.append(torch.get_num_threads())
        return real_softmax(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "softmax", softmax)
    torch.set_num_threads(2)  # the module's fixture gives the original count back afterwards
    logits = _logits(64)
    for options in ({}, {"top_p": 0.95}, {"top_k": 7}, {"min_p": 0.05}, {"temperature": 0.7, "top_p": 0.9}):
        drawn = {}
        for host in (True, False):
            monkeypatch.setattr(G, "SAMPLE_ON_ONE_CPU_THREAD", host)
            drawn[host] = sample_next(logits, generator=torch.Generator().manual_seed(3), **options)
            assert torch.get_num_threads() == 2
        assert torch.equal(drawn[True], drawn[False]), options
    assert calls == [2] * 5  # the torch sampler's softmaxes only
    monkeypatch.setattr(G, "SAMPLE_ON_ONE_CPU_THREAD", True)
    with pytest.raises(ValueError, match="shape"):
        sample_next(logits, bias=torch.zeros(3))  # a bias of the wrong size


def test_top_k_one_is_greedy():
    model = random_model()
    assert generate(model, [5], max_new_tokens=30, top_k=1, seed=9) == generate(model, [5], max_new_tokens=30, temperature=0)


def test_bad_arguments_are_refused():
    model = random_model()
    with pytest.raises(ValueError):
        generate(model, [5])  # no limit
    with pytest.raises(ValueError):
        generate(model, [5], max_new_tokens=5, temperature=-1)
    with pytest.raises(ValueError):
        generate(model, [VOCAB_SIZE], max_new_tokens=5)
    with pytest.raises(ValueError):
        generate(model, [5], max_new_tokens=5, reset_latents=N + 1)
    assert generate(model, [5], max_new_tokens=0) == [[]]


def test_model_mode_is_restored():
    model = random_model()
    model.train()
    generate(model, [5], max_new_tokens=3, seed=0)
    assert model.training


# ---- CUDA only (skipped here; run on the GPU machine) ---------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_graph_decoder_matches_eager_cache():
    model = random_model().cuda()
    tokens = ids_stream(4 * MAX_CONTEXT, seed=5)
    R = default_reset_latents(N)
    eager, graph = EagerDecoder(model), GraphDecoder(model, 1, capture=True)
    with torch.inference_mode():
        for (a, *_), (b, *_) in zip(
            replay_cuda(model, eager, tokens, 6, R), replay_cuda(model, graph, tokens, 6, R)
        ):
            torch.testing.assert_close(a, b.clone(), atol=1e-3, rtol=1e-3)


def replay_cuda(model, decoder, tokens, prompt_len, R):
    window = TokenWindow(tokens[:prompt_len], 1, model.config.max_context, torch.device("cuda"))
    latents = min(R, len(window))
    yield decoder.reset(window.view(), latents), latents
    for t in tokens[prompt_len:]:
        tok = torch.tensor([t], device="cuda")
        window.append(tok)
        if latents >= model.config.num_latents:
            latents = min(R, len(window))
            yield decoder.reset(window.view(), latents), latents
        else:
            latents += 1
            yield decoder.step(tok, window.view()), latents


@cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_cuda_generation_graph_eager_and_batches(dtype):
    model = random_model().cuda()
    prompt = ids_stream(10)
    graph = generate(model, prompt, max_new_tokens=3 * MAX_CONTEXT, temperature=0, dtype=dtype)
    eager = generate(model, prompt, max_new_tokens=3 * MAX_CONTEXT, temperature=0, dtype=dtype, backend="eager")
    if dtype is None:
        assert graph == eager
    else:  # bf16 rounding may flip a near-tie; the runs must agree for a good while
        same = next((i for i, (a, b) in enumerate(zip(graph[0], eager[0])) if a != b), len(graph[0]))
        assert same >= MAX_CONTEXT // 2
    outs = generate(model, prompt, max_new_tokens=2 * MAX_CONTEXT, seed=0, num_variations=8, dtype=dtype)
    assert [len(o) for o in outs] == [2 * MAX_CONTEXT] * 8 and len({tuple(o) for o in outs}) == 8
    assert generate(model, prompt, max_new_tokens=50, seed=3, dtype=dtype) == generate(
        model, prompt, max_new_tokens=50, seed=3, dtype=dtype
    )


# ---- several prompts in one batch (batch over a folder on a GPU) ----


def test_a_batch_of_prompts_greedy_equals_each_prompt_alone():
    model = random_model()
    prompts = [ids_stream(40, seed=s) for s in (1, 2, 3)]
    together = generate_batch(model, prompts, seeds=[None] * 3, max_new_tokens=90, temperature=0, num_variations=2)
    for prompt, rows in zip(prompts, together):
        alone = generate(model, prompt, max_new_tokens=90, temperature=0)
        assert rows == [alone[0], alone[0]]


def test_a_prompts_sampled_music_does_not_depend_on_its_batch_mates():
    model = random_model()
    a, b, c = (ids_stream(30, seed=s) for s in (4, 5, 6))
    options = dict(max_new_tokens=60, temperature=1.0, top_p=0.9, num_variations=2)
    with_b = generate_batch(model, [a, b], seeds=[11, 12], **options)
    with_c = generate_batch(model, [c, a], seeds=[13, 11], **options)
    assert with_b[0] == with_c[1]
    assert with_b[0][0] != with_b[0][1]  # its two variations still differ
    assert generate_batch(model, [a, b], seeds=[11, 12], **options) == with_b  # reproducible


def test_a_batch_needs_one_prompt_length_and_a_seed_each():
    model = random_model()
    with pytest.raises(ValueError, match="one length"):
        generate_batch(model, [ids_stream(10), ids_stream(12)], seeds=[1, 2], max_new_tokens=5)
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate_batch(model, [ids_stream(10)], seeds=[1, 2], max_new_tokens=5)


def test_inverse_cdf_draws_respect_the_filters():
    logits = _logits()
    g = torch.Generator().manual_seed(2)
    uniform = torch.rand(4000, generator=g)
    drawn = set(sample_next(logits.expand(4000, -1), top_k=5, uniform=uniform).tolist())
    assert drawn <= set(logits[0].topk(5).indices.tolist()) and len(drawn) == 5
    assert not drawn & {PAD, SOS}
