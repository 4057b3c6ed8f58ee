"""The native batch-1 decode step (native_step.py, native/decode_step.c): built once per machine
and cached, rebuilt when damaged, a one-line reason and onnxruntime's step where it cannot be
had; onnxruntime float32's logits on the shipped model across resets and a sliding window, with
two threads; two decoders stepping at once; an idle worker that sleeps. (Its exactness against
the eager step on tiny models is in test_decode_onnx.py.)"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from perceiver_music import native_step  # noqa: E402
from perceiver_music.decode_onnx import OnnxDecoder  # noqa: E402
from perceiver_music.generate import generate  # noqa: E402
from test_generate import ids_stream, random_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(native_step.cpu_reason() is not None or native_step.compiler() is None,
                                  reason="the native step needs x86-64 with AVX2, FMA and F16C, and a C compiler")


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    """An empty cache folder, and no library loaded yet by this process (as at a first start)."""
    monkeypatch.setattr(native_step, "_LIBRARIES", {})
    monkeypatch.setenv("PERCEIVER_MUSIC_CACHE", str(tmp_path))
    return tmp_path


def library_path(cache: Path) -> Path:
    cc = native_step.compiler()
    return cache / "native" / f"decode_step-{native_step.library_key(cc, this_cpus_flags())}.so"


def this_cpus_flags() -> tuple[str, ...]:
    return native_step.FLAGS + native_step.vnni_flags()


def steps_like_onnxruntime(cache: Path) -> None:
    """A decoder with the native step gives onnxruntime float32's logits for a few steps."""
    model = random_model(seed=2)
    window = torch.tensor([ids_stream(40)])
    mine = OnnxDecoder(model, 1, native_step=True, cache_dir=cache)
    theirs = OnnxDecoder(model, 1, native_step=False, cache_dir=cache)
    with torch.inference_mode():
        torch.testing.assert_close(mine.reset(window, 8), theirs.reset(window, 8), atol=1e-4, rtol=1e-4)
        for token in (5, 77, 301):
            t = torch.tensor([token])
            torch.testing.assert_close(mine.step(t, window), theirs.step(t, window), atol=1e-4, rtol=1e-4)


# ---- the library: built once, cached, repaired ----


@needs_native
def test_built_once_then_a_second_start_only_loads_it(empty_cache, monkeypatch):
    native_step.load_library()
    target = library_path(empty_cache)
    checksum = target.with_name(target.name + ".sha256")
    assert checksum.read_text() == hashlib.sha256(target.read_bytes()).hexdigest()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, checksum.name]  # no temporary left

    def no_compile(*args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(native_step, "_LIBRARIES", {})  # a new process, as far as the cache is concerned
    monkeypatch.setattr(native_step, "_compile", no_compile)
    assert native_step.load_library() is not None
    steps_like_onnxruntime(empty_cache)


@needs_native
@pytest.mark.parametrize("damage", ["truncated", "no checksum", "garbage with its own checksum"])
def test_a_damaged_library_is_rebuilt_not_loaded(empty_cache, damage):
    target = library_path(empty_cache)
    target.parent.mkdir(parents=True)
    native_step._compile(native_step.compiler(), target, this_cpus_flags())  # built, never loaded by this process
    good = target.read_bytes()
    checksum = target.with_name(target.name + ".sha256")
    if damage == "truncated":
        target.write_bytes(good[: len(good) // 3])
    elif damage == "no checksum":
        checksum.unlink()
        target.write_bytes(b"\0" * len(good))
    else:
        target.write_bytes(b"not a library")
        checksum.write_text(hashlib.sha256(b"not a library").hexdigest())
    native_step.load_library()
    assert len(target.read_bytes()) == len(good)
    assert checksum.read_text() == hashlib.sha256(target.read_bytes()).hexdigest()
    steps_like_onnxruntime(empty_cache)


@needs_native
def test_an_unwritable_cache_folder_builds_in_a_temporary_one(monkeypatch, tmp_path):
    monkeypatch.setattr(native_step, "_LIBRARIES", {})
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    assert native_step.load_library(blocked / "cache") is not None
    assert not (blocked.parent / "cache").exists()


# ---- where it cannot be had: onnxruntime's step, and why ----


@pytest.mark.parametrize("cause, expected", [
    ("no compiler", "no C compiler"),
    ("compiler fails", "could not build the native step"),
    ("switched off", "switched off (PERCEIVER_MUSIC_NATIVE_STEP=0)"),
    ("no AVX2", "lacks avx2"),
])
def test_where_it_cannot_be_had_the_step_is_onnxruntimes_and_says_why(empty_cache, monkeypatch, cause, expected):
    if cause == "no compiler":
        monkeypatch.setattr(native_step, "compiler", lambda: None)
    elif cause == "compiler fails":
        monkeypatch.setenv("CC", "false")
        if native_step.cpu_reason() is not None:
            pytest.skip("this CPU cannot run the native step anyway")
    elif cause == "switched off":
        monkeypatch.setenv(native_step.SWITCH, "0")
    else:
        if native_step.platform.machine().lower() not in ("x86_64", "amd64"):
            pytest.skip("an x86-64 question")
        monkeypatch.setattr(native_step, "CPUINFO", cpuinfo(empty_cache, "fpu sse sse2 avx fma f16c"))
    model = random_model()
    decoder = OnnxDecoder(model, 1)
    assert decoder.native is None and expected in decoder.native_unavailable
    assert "\n" not in decoder.native_unavailable
    with pytest.raises(native_step.Unavailable, match="^[^\n]+$"):
        OnnxDecoder(model, 1, native_step=True)
    stats: dict = {}
    out = generate(model, ids_stream(5), max_new_tokens=20, seed=0, stats=stats, backend="onnx")
    assert stats["runtime"] == "onnx-float32" and len(out[0]) == 20
    assert not list((empty_cache / "native").glob("*.so"))  # nothing half-built left


def cpuinfo(folder: Path, flags: str) -> Path:
    """A /proc/cpuinfo that lists these flags."""
    path = folder / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n")
    return path


def test_the_cpu_needs_avx2_fma_and_f16c(monkeypatch, tmp_path):
    if native_step.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 question")
    for flags, reason in (("fpu sse avx2 fma f16c avx512f", None), ("fpu sse avx2 f16c", "this CPU lacks fma"),
                          ("fpu sse avx", "this CPU lacks avx2, fma and f16c")):
        monkeypatch.setattr(native_step, "CPUINFO", cpuinfo(tmp_path, flags))
        assert (native_step.cpu_reason() or "").startswith(reason or "") and bool(native_step.cpu_reason()) == bool(reason)
    monkeypatch.setattr(native_step, "CPUINFO", tmp_path / "missing")
    assert "/proc/cpuinfo" not in native_step.cpu_reason() and "missing" in native_step.cpu_reason()


def test_vnni_is_built_where_the_cpu_has_it(monkeypatch, tmp_path):
    for flags, expected in (("avx2 fma f16c", ()), ("avx2 fma f16c avx_vnni", ("-mavxvnni",)),
                            ("avx2 fma f16c avx512f avx512vl avx512_vnni avx_vnni", ("-mavx512vnni", "-mavx512vl")),
                            ("avx2 fma f16c avx512f avx512_vnni", ())):  # EVEX on 256 bits needs AVX-512 VL
        monkeypatch.setattr(native_step, "CPUINFO", cpuinfo(tmp_path, flags))
        assert native_step.vnni_flags() == expected
        monkeypatch.setenv(native_step.VNNI_SWITCH, "0")
        assert native_step.vnni_flags() == ()
        monkeypatch.setenv(native_step.VNNI_SWITCH, "avx_vnni")  # as a laptop with AVX-VNNI builds it
        assert native_step.vnni_flags() == (("-mavxvnni",) if "avx_vnni" in flags else ())
        monkeypatch.delenv(native_step.VNNI_SWITCH)
        assert native_step.avx_vnni_build_differs() == (flags == "avx2 fma f16c avx512f avx512vl avx512_vnni avx_vnni")


def test_more_rows_than_the_native_step_holds_keep_onnxruntimes_step():
    model = random_model()
    decoder = OnnxDecoder(model, native_step.MAX_ROWS + 1)
    assert decoder.native is None and "at most 16 rows" in decoder.native_unavailable
    with pytest.raises(native_step.Unavailable, match="at most 16 rows"):
        OnnxDecoder(model, native_step.MAX_ROWS + 1, native_step=True)


@needs_native
def test_the_weights_hold_no_rotated_rows_and_a_model_laid_out_with_them_is_refused():
    """RoPE's rotated values come from rope() (decode_step.c) moving and negating q's and k's
    values, not from the ONNX graph's rotated weight rows: the native weights hold q, k and v (d
    outputs each), and a Model carrying the graph's wider qkv is refused, not misread."""
    model = random_model()
    weights = native_step.NativeWeights(model, "float32")
    lib = native_step.load_library()
    m, d = weights.struct, model.config.d_model
    assert (m.cross_q.N, m.cross_kv.N) == (d, 2 * d)
    assert [m.blocks[i].qkv.N for i in range(model.config.n_layers)] == [3 * d] * model.config.n_layers
    assert lib.supported(ctypes.byref(m))
    m.blocks[0].qkv.N = 5 * d  # as the graph's qkv0: q, k, q_rot, k_rot, v
    assert not lib.supported(ctypes.byref(m))


@needs_native
@pytest.mark.parametrize("rope_fraction", [0.25, 1.0])
@pytest.mark.parametrize("rows", [1, 2])
def test_rope_over_any_part_of_a_head_gives_onnxruntimes_logits(rope_fraction, rows):
    """rope() pairs a head's dims as the graph's rotated rows do, whatever part of the head RoPE
    rotates (the default, half, is in every other test): a quarter, and the whole head."""
    model = random_model(seed=2, rope_fraction=rope_fraction)
    window = torch.tensor([ids_stream(40)] * rows)
    mine = OnnxDecoder(model, rows, precision="float32", native_step=True)
    theirs = OnnxDecoder(model, rows, precision="float32", native_step=False)
    with torch.inference_mode():
        mine.reset(window, 8)
        theirs.reset(window, 8)
        for token in (5, 77, 301):
            t = torch.tensor([token] * rows)
            torch.testing.assert_close(mine.step(t, window), theirs.step(t, window), atol=1e-4, rtol=1e-4)


# ---- the shipped model, two threads ----


@needs_native
def test_native_float32_gives_onnxruntime_float32_logits_across_resets_and_a_sliding_window():
    """Both decoders step the same ids (greedy from onnxruntime's) from a full window for 300
    ids: two continued resets, one input sliding out at every step."""
    from perceiver_music.checkpoint import load_checkpoint
    from perceiver_music.evaluate import load_eval_works
    from perceiver_music.generate import default_reset_latents

    model = load_checkpoint(REPO / "assets" / "model").model.float().eval()
    cfg = model.config
    works, _ = load_eval_works(str(REPO / "assets" / "primers"), split="test")
    primer = max(works, key=len).tolist()
    window = torch.tensor([(primer * (cfg.max_context // len(primer) + 1))[-cfg.max_context:]])
    native = OnnxDecoder(model, 1, precision="float32", threads=2, native_step=True)
    reference = OnnxDecoder(model, 1, precision="float32", threads=2, native_step=False)
    assert native.native.threads == 2
    R = default_reset_latents(cfg.num_latents)
    resets, worst = 0, 0.0
    logits = reference.reset(window, R)
    native.reset(window, R)
    for _ in range(300):
        token = logits.argmax(-1)
        window = torch.cat((window, token[:, None]), 1)[:, -cfg.max_context:]
        if reference.latent_slot >= cfg.num_latents:
            logits, mine = reference.reset(window, R), native.reset(window, R)
            resets += 1
        else:
            logits, mine = reference.step(token, window), native.step(token, window)
        worst = max(worst, float((mine - logits).abs().max()))
    assert resets == 2 and native.resets["continued"] == 2
    assert worst < 1e-4


@needs_native
def test_two_decoders_step_at_once_as_each_steps_alone():
    """Each decoder's native step has its own buffers and worker: two running in two threads at
    once (the web app's concurrent requests) give the logits each gives alone."""
    from perceiver_music.checkpoint import load_checkpoint

    model = load_checkpoint(REPO / "assets" / "model").model.float().eval()
    window = torch.tensor([ids_stream(600, seed=4)])
    decoders = [OnnxDecoder(model, 1, precision=p, threads=2, native_step=True) for p in ("float32", "int8")]
    alone = []
    for decoder in decoders:
        decoder.reset(window, 64)
        decoder.native.run(int(decoder.pos[0]), 77)  # the logits of one step, into decoder.logits
        alone.append(decoder.logits.copy())
    differs = []

    def repeat(decoder, expected) -> None:
        for _ in range(200):
            decoder.native.run(int(decoder.pos[0]), 77)
            if not np.array_equal(decoder.logits, expected):
                differs.append(float(np.abs(decoder.logits - expected).max()))

    threads = [threading.Thread(target=repeat, args=pair) for pair in zip(decoders, alone)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not differs
    assert not np.allclose(alone[0], alone[1])  # two different steps ran (float32, int8)


@needs_native
def test_an_idle_worker_sleeps():
    """The worker spins a few ms after a task, then sleeps: an idle decoder in a long-lived
    process takes no core."""
    lib = native_step.load_library()
    context = lib.create_context(2)
    try:
        assert lib.context_threads(context) == 2
        weight = np.random.default_rng(0).integers(-63, 64, (64, 64), dtype=np.int8)
        row, out = np.ones(64, np.float32), np.zeros(64, np.float32)
        scale, colsum = np.ones(64, np.float32), weight.sum(1, dtype=np.int32)
        table = (native_step.Weight * 1)(native_step.Weight(64, 64, weight.ctypes.data, scale.ctypes.data,
                                                            colsum.ctypes.data, None))
        pointers = lambda a: (ctypes.c_void_p * 1)(a.ctypes.data)  # noqa: E731
        assert lib.run_products(context, table, pointers(row), pointers(out), 1, 1) == 0  # wakes the worker
        assert np.abs(out - weight.sum(1)).max() < 0.1 * np.abs(weight.sum(1)).max() + 1
        time.sleep(0.2)  # past its spin
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(0.5)
        assert time.process_time() - cpu < 0.1 * (time.perf_counter() - wall)
    finally:
        lib.destroy_context(context)


# ---- several rows at once ----


class RowsApart:
    """Each row of a batch decoded by a decoder of its own (batch 1)."""

    def __init__(self, model, rows: int) -> None:
        self.decoders = [OnnxDecoder(model, 1, native_step=True) for _ in range(rows)]

    def reset(self, window, R):
        return torch.cat([d.reset(window[i : i + 1], R) for i, d in enumerate(self.decoders)])

    def step(self, tokens, window):
        return torch.cat([d.step(tokens[i : i + 1], window[i : i + 1]) for i, d in enumerate(self.decoders)])


SIZES = pytest.mark.parametrize("sizes", [{}, {"d_model": 128, "n_heads": 2, "cross_heads": 2}],
                                ids=["tiny", "head_dim_64"])  # hd 64: the default model's own code paths
ROWS = pytest.mark.parametrize("rows, one_primer", [(3, False), (4, True), (6, True)])


@needs_native
@SIZES
@ROWS
def test_each_row_of_a_float32_batch_gives_what_it_gives_alone(sizes, rows, one_primer):
    """Rows of their own (3 prompts) and variations of one primer (its inputs read once for all
    rows), through resets and the primer sliding out: every row's logits are those of the same
    row decoded alone."""
    from perceiver_music.generate import TokenWindow, default_reset_latents
    from test_decode_onnx import decode_side_by_side
    from test_generate import MAX_CONTEXT, N

    model = random_model(seed=5, **sizes)
    g = torch.Generator().manual_seed(1)
    start = torch.randint(3, 300, (1 if one_primer else rows, 40), generator=g).expand(rows, -1).contiguous()
    together, apart = OnnxDecoder(model, rows, native_step=True), RowsApart(model, rows)
    R = default_reset_latents(N)
    with torch.inference_mode():
        window = TokenWindow(start, rows, MAX_CONTEXT, torch.device("cpu"))
        torch.testing.assert_close(together.reset(window.view(), R), apart.reset(window.view(), R),
                                   atol=1e-4, rtol=1e-4)
        assert (together.shared.cached > 0) == one_primer
        last = decode_side_by_side(window, apart, together, 2 * MAX_CONTEXT, g, R)
    assert together.shared.cached == 0  # the primer slid out
    assert not torch.allclose(last[0], last[1])  # the rows really differ


def one_row_step(model, precision: str, decoder: OnnxDecoder, row: int) -> np.ndarray:
    """What the batch-1 native step gives one row of `decoder`'s next step: its caches laid out
    as one row's (the shared inputs' slots, then the row's own: attention does not depend on
    the slots' order), the same token and position."""
    alone = native_step.NativeStep(model, precision, 2)
    L, d = decoder.L, model.config.d_model
    shared, own = decoder.shared, decoder.rows
    k_t = np.ascontiguousarray(np.concatenate((shared.k[0], own.k[row]), axis=-1))
    v = np.ascontiguousarray(np.concatenate((shared.v[0], own.v[row]), axis=-2))
    mask = np.concatenate((shared.mask, own.mask))
    logits = np.zeros(model.config.vocab_size, np.float32)
    per_layer = lambda a: [np.ascontiguousarray(a[i, row]) for i in range(L)]  # noqa: E731
    scales = {}
    if decoder.cache_type == "int8":  # the codes' scales side by side as the codes
        scales["cross_scales"] = tuple(np.ascontiguousarray(np.concatenate((a[0], b[row]), axis=-1))
                                       for a, b in zip(shared.scales, own.scales))
        scales["latent_scales"] = (per_layer(decoder.latent_k_scale), per_layer(decoder.latent_v_scale))
    alone.point(k_t, v, mask, decoder.latent_mask, per_layer(decoder.latent_k_t), per_layer(decoder.latent_v), logits,
                np.zeros(d, np.float32), np.zeros(d, np.float32), [np.zeros(d, np.float32) for _ in range(L)],
                [np.zeros(d, np.float32) for _ in range(L)], **scales)
    alone.run(int(decoder.pos[0]), int(decoder.tokens[row]))
    return logits


@needs_native
@pytest.mark.parametrize("precision, cache_type", [("float32", "float32"), ("float32", "float16"),
                                                   ("float32", "int8"), ("int8", "float16"), ("int8", "int8")])
@SIZES
@ROWS
def test_the_rows_step_gives_each_row_what_the_one_row_step_gives_it(precision, cache_type, sizes, rows, one_primer):
    """int8 quantises each row on its own in the native step, so a row's step does not depend on
    its batch-mates: at every step checked (the primer shared, then sliding out), each row's
    logits are what the one-row step gives from the same caches (float32, float16 or int8). (Resets
    are onnxruntime's, whose int8 quantises the batch as one: rows alone would not get the same
    caches.) In int8 a few steps may differ more: the rows step sums a head's shared and own
    slots in another order than the one-row step, and a last-bit difference in a layer's input
    can move one of its int8 codes by one (seen: 1 step in 70, 0.14 in a logit)."""
    from perceiver_music.generate import TokenWindow, default_reset_latents
    from test_generate import MAX_CONTEXT, N

    model = random_model(seed=5, **sizes)
    g = torch.Generator().manual_seed(1)
    start = torch.randint(3, 300, (1 if one_primer else rows, 40), generator=g).expand(rows, -1).contiguous()
    decoder = OnnxDecoder(model, rows, precision=precision, native_step=True, cache_type=cache_type)
    assert decoder.rows.k.dtype == decoder.shared.v.dtype == decoder.latent_v.dtype == np.dtype(cache_type)
    R = default_reset_latents(N)
    errors, shared_seen = [], set()
    with torch.inference_mode():
        window = TokenWindow(start, rows, MAX_CONTEXT, torch.device("cpu"))
        decoder.reset(window.view(), R)
        for i in range(MAX_CONTEXT + 30):
            tokens = torch.randint(3, 300, (rows,), generator=g)
            window.append(tokens)
            if decoder.latent_slot >= N:
                decoder.reset(window.view(), R)
                continue
            if i % 3 == 0:  # the one-row step reads the caches as they are before this step
                decoder.tokens[:] = tokens.numpy()
                if decoder.cached == decoder.ring:
                    decoder._drop_oldest(1)
                expected = [one_row_step(model, precision, decoder, r) for r in range(rows)]
                shared_seen.add(decoder.shared.cached > 0)
            logits = decoder.step(tokens, window.view())
            if i % 3 == 0:
                scale = 1.0 + np.abs(np.stack(expected))  # atol 1e-4, rtol 1e-4
                errors.append(float((np.abs(logits.numpy() - np.stack(expected)) / scale).max()))
    errors = np.array(errors)
    if precision == "float32" and cache_type != "int8":
        assert errors.max() < 1e-4
    else:  # int8 caches quantise each query too: a last-bit difference can move one of its codes
        assert errors.max() < 0.5 and (errors > 1e-4).mean() <= 0.1
    assert len(errors) > 20 and shared_seen == ({True, False} if one_primer else {False})


@needs_native
@pytest.mark.skipif(not native_step.vnni_flags(), reason="this CPU has no VNNI")
@SIZES
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("other", ["0", pytest.param("avx_vnni", marks=pytest.mark.skipif(
    not native_step.avx_vnni_build_differs(), reason="needs a CPU with AVX-512 VNNI and AVX-VNNI"))])
def test_every_build_of_the_step_gives_the_same_logits(monkeypatch, sizes, rows, other):
    """The one-instruction byte products sum the same integers as AVX2's three, and the AVX-512
    kernels (built with AVX-512 VNNI) the same sums and float sums as the 256-bit ones: an int8
    step built with this CPU's VNNI gives the same logits, bit for bit, as one built for AVX2
    (other "0") or for AVX-VNNI ("avx_vnni"), through resets and the window sliding."""
    from perceiver_music.generate import TokenWindow, default_reset_latents
    from test_generate import MAX_CONTEXT, N

    model = random_model(seed=6, **sizes)
    vnni = OnnxDecoder(model, rows, precision="int8", native_step=True)
    monkeypatch.setenv(native_step.VNNI_SWITCH, other)
    other_build = OnnxDecoder(model, rows, precision="int8", native_step=True)
    assert vnni.native.vnni and other_build.native.vnni == (other == "avx_vnni")
    assert vnni.native.lib is not other_build.native.lib
    g = torch.Generator().manual_seed(2)
    window = TokenWindow(torch.randint(3, 300, (1, 40), generator=g).expand(rows, -1), rows, MAX_CONTEXT,
                         torch.device("cpu"))
    R = default_reset_latents(N)
    with torch.inference_mode():
        assert torch.equal(vnni.reset(window.view(), R), other_build.reset(window.view(), R))
        for _ in range(MAX_CONTEXT + 30):
            tokens = torch.randint(3, 300, (rows,), generator=g)
            window.append(tokens)
            if vnni.latent_slot >= N:
                mine, theirs = vnni.reset(window.view(), R), other_build.reset(window.view(), R)
            else:
                mine, theirs = vnni.step(tokens, window.view()), other_build.step(tokens, window.view())
            assert torch.equal(mine, theirs)
    assert vnni.resets["continued"] > 0


@needs_native
@pytest.mark.parametrize("cache_type, bound", [("float16", 5e-3), ("int8", 5e-2)])
@pytest.mark.parametrize("reset_runtime", ["onnx", "torch"])
@pytest.mark.parametrize("rows", [1, 4])
def test_smaller_caches_stay_next_to_float32_ones_across_resets_and_slides(cache_type, bound, reset_runtime, rows):
    """int8 runs keep the K/V caches in float16 or int8 codes: with float32 weights, so that the
    caches are the one difference, the logits stay within the caches' rounding of the float32
    decoder's (relative to the largest logit) through resets (which read the rings back as
    float32) and the window sliding; the rows are variations of one primer (its inputs in the
    shared ring) at 4 rows."""
    from perceiver_music.generate import TokenWindow, default_reset_latents
    from test_decode_onnx import decode_side_by_side
    from test_generate import MAX_CONTEXT, N

    model = random_model(seed=7, d_model=128, n_heads=2, cross_heads=2)
    exact = OnnxDecoder(model, rows, native_step=True, cache_type="float32", reset_runtime=reset_runtime)
    small = OnnxDecoder(model, rows, native_step=True, cache_type=cache_type, reset_runtime=reset_runtime)
    assert small.rows.k.dtype == small.shared.v.dtype == small.latent_k_t.dtype == np.dtype(cache_type)
    g = torch.Generator().manual_seed(2)
    R = default_reset_latents(N)
    differences = []
    with torch.inference_mode():
        window = TokenWindow(torch.randint(3, 300, (1, 30), generator=g).expand(rows, -1), rows, MAX_CONTEXT,
                             torch.device("cpu"))
        exact.reset(window.view(), R), small.reset(window.view(), R)
        decode_side_by_side(window, exact, small, 2 * MAX_CONTEXT, g, R,
                            compare=lambda a, b: differences.append(float((a - b).abs().max() / a.abs().max())))
    assert small.resets == exact.resets and small.resets["continued" if reset_runtime == "onnx" else "afresh"] > 3
    assert 0 < max(differences) < bound


@needs_native
@pytest.mark.parametrize("rows", [1, 4])
def test_the_step_stores_its_new_kv_as_the_python_side_quantises_them(rows):
    """The C quantises each step's new K/V into the int8 caches itself: its codes and scales are
    exactly what cache_codes.quantize makes of the same K/V (the resets' and the torch reset's
    way), in the ring and in every layer's latent cache."""
    from perceiver_music import cache_codes
    from perceiver_music.generate import TokenWindow, default_reset_latents
    from test_generate import MAX_CONTEXT, N

    model = random_model(seed=8, d_model=128, n_heads=2, cross_heads=2)
    decoder = OnnxDecoder(model, rows, precision="int8", native_step=True, cache_type="int8")
    g = torch.Generator().manual_seed(3)
    window = TokenWindow(torch.randint(3, 300, (rows, 30), generator=g), rows, MAX_CONTEXT, torch.device("cpu"))
    checked = 0
    with torch.inference_mode():
        decoder.reset(window.view(), default_reset_latents(N))
        for _ in range(40):  # resets between, and the window sliding
            tokens = torch.randint(3, 300, (rows,), generator=g)
            window.append(tokens)
            if decoder.latent_slot >= N:
                decoder.reset(window.view(), default_reset_latents(N))
                continue
            slot, s = decoder.rows.slot % decoder.rows.capacity, decoder.latent_slot
            decoder.step(tokens, window.view())
            codes, scale = cache_codes.quantize(torch.from_numpy(decoder.new_cross_k), -1)
            assert np.array_equal(decoder.rows.k[..., slot], codes.numpy())
            assert np.array_equal(decoder.rows.k_scale[..., slot], scale.numpy())
            codes, scale = cache_codes.quantize(torch.from_numpy(decoder.new_cross_v), -1)
            assert np.array_equal(decoder.rows.v[:, :, slot], codes.numpy())
            assert np.array_equal(decoder.rows.v_scale[..., slot], scale.numpy())
            for layer in range(decoder.L):
                codes, scale = cache_codes.quantize(torch.from_numpy(decoder.new_latent_k[layer]), -1)
                assert np.array_equal(decoder.latent_k_t[layer, ..., s], codes.numpy())
                assert np.array_equal(decoder.latent_k_scale[layer, ..., s], scale.numpy())
                codes, scale = cache_codes.quantize(torch.from_numpy(decoder.new_latent_v[layer]), -1)
                assert np.array_equal(decoder.latent_v[layer, :, :, s], codes.numpy())
                assert np.array_equal(decoder.latent_v_scale[layer, ..., s], scale.numpy())
            checked += 1
    assert checked > 10 and np.abs(decoder.rows.k).max() == 127


@needs_native
@pytest.mark.parametrize("cache_type", ["float32", "int8"])
def test_the_slots_the_primer_slid_out_of_are_not_read(cache_type):
    """Variations keep their primer's K/V in one shared ring, whose inputs slide out oldest first
    once the window is full. Neither the rows step nor a reset reads the slots they left: with
    NaN there, the step's logits are what they were and the reset's are finite; a step told to
    read every slot ever written does see the NaN. A span beyond the ring is refused."""
    from perceiver_music.generate import TokenWindow, default_reset_latents
    from test_generate import MAX_CONTEXT, N

    rows = 4
    model = random_model(seed=10, d_model=128, n_heads=2, cross_heads=2)
    decoder = OnnxDecoder(model, rows, native_step=True, cache_type=cache_type)
    g = torch.Generator().manual_seed(7)
    window = TokenWindow(torch.randint(3, 300, (1, 40), generator=g).expand(rows, -1).contiguous(), rows,
                         MAX_CONTEXT, torch.device("cpu"))
    R = default_reset_latents(N)
    with torch.inference_mode():
        decoder.reset(window.view(), R)
        for _ in range(MAX_CONTEXT - 40 + 10):  # the window fills, then 10 of the primer's inputs slide out
            tokens = torch.randint(3, 300, (rows,), generator=g)
            window.append(tokens)
            if decoder.latent_slot >= N:
                decoder.reset(window.view(), R)
            else:
                decoder.step(tokens, window.view())
    shared = decoder.shared
    first, count = shared.cached_span()
    assert first >= 10 and first + count == shared.used == 40

    def logits(**span) -> np.ndarray:
        span = span or {"shared_from": first, "shared_used": count}
        decoder.native.run(int(decoder.pos[0]), cross_used=decoder.rows.used, latent_used=decoder.latent_slot, **span)
        return decoder.logits.copy()

    before = logits()
    for array in (shared.k_scale, shared.v_scale) if cache_type == "int8" else (shared.k.swapaxes(-1, -2), shared.v):
        array[:, :, :first] = np.nan  # the slots slid out, (rows, H, slots[, hd])
    assert np.array_equal(logits(), before)
    assert np.isnan(logits(shared_from=0, shared_used=shared.used)).all()
    with pytest.raises(ValueError, match="cannot run"):
        logits(shared_from=first + 1, shared_used=count)
    assert decoder.latent_slot < N  # so the loop's next id is a step, and the one after a reset
    with torch.inference_mode():
        tokens = torch.randint(3, 300, (rows,), generator=g)
        window.append(tokens)
        after_step = decoder.step(tokens, window.view())
        window.append(torch.randint(3, 300, (rows,), generator=g))
        after_reset = decoder.reset(window.view(), R)
    assert torch.isfinite(after_step).all() and torch.isfinite(after_reset).all()
    assert decoder.resets["continued"] >= 2
