"""The compiled CPU decode step (decode_onnx.py): exactness against the eager step across resets
and slides, greedy and seeded continuations, variations, cancel, the disk cache and its repair,
the engine's and the CLI's runtime choice, and the eager fallback without onnxruntime."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from perceiver_music import decode_onnx, native_step  # noqa: E402
from perceiver_music.decode_onnx import OnnxDecoder, SessionCache, exported_files  # noqa: E402
from perceiver_music.generate import EagerDecoder, TokenWindow, default_reset_latents, generate  # noqa: E402
from test_generate import MAX_CONTEXT, N, ids_stream, random_model, replay_schedule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# At batch 1 the decoder steps with the native step where it can be built (x86-64 with AVX2, a C
# compiler), and says so in the runtime's name.
NATIVE_HERE = native_step.cpu_reason() is None and native_step.compiler() is not None
WITH_NATIVE = "+native-step" if NATIVE_HERE else ""
needs_native = pytest.mark.skipif(not NATIVE_HERE, reason="the native step needs x86-64 with AVX2 and a C compiler")


def decoder(model, batch=1, cache_dir=None, **kw) -> OnnxDecoder:
    return OnnxDecoder(model, batch, cache_dir=cache_dir, sessions=kw.pop("sessions", SessionCache()), **kw)


def decode_side_by_side(window, eager, compiled, steps, g, R, after_each=lambda: None, same_in_every_row=False,
                        compare=None):
    """Appends `steps` random ids to every row of `window` (one id for all rows if
    `same_in_every_row`) and runs both decoders on the generation loop's schedule (a cheap step
    per id, a reset once N latents are cached), checking at each id that the compiled logits
    are the eager ones (or calling compare(eager's, compiled's)). Returns the last logits."""
    latents = R
    rows = window.view().shape[0]
    for _ in range(steps):
        tokens = torch.randint(3, 300, (1 if same_in_every_row else rows,), generator=g).expand(rows).contiguous()
        window.append(tokens)
        if latents >= N:
            latents = R
            a, b = eager.reset(window.view(), R), compiled.reset(window.view(), R)
        else:
            latents += 1
            a, b = eager.step(tokens, window.view()), compiled.step(tokens, window.view())
        if compare is None:
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        else:
            compare(a, b)
        after_each()
    return a


# ---- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["onnxruntime", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("reset_runtime", ["onnx", "torch"])
@pytest.mark.parametrize("prompt_len, R", [(10, None), (6, None), (3, 4)])
def test_compiled_step_matches_eager_across_resets_and_slides(tmp_path, step, reset_runtime, prompt_len, R):
    # prompt 6: a reset lands at window 60, so its steps wrap around the end of the ring. The
    # onnx resets keep the cached inputs (their positions run on past max_context) until the
    # positions near the graphs' tables' end, where one starts afresh from position 0.
    model = random_model()
    eager = EagerDecoder(model)
    compiled = decoder(model, cache_dir=tmp_path, reset_runtime=reset_runtime, native_step=step == "native")
    assert (compiled.native is not None) == (step == "native")
    tokens = ids_stream(4 * MAX_CONTEXT, seed=5)
    R = R or default_reset_latents(N)
    kinds = {"reset": 0, "step": 0}
    slid_steps = 0
    with torch.inference_mode():
        pairs = zip(replay_schedule(model, eager, tokens, prompt_len, R),
                    replay_schedule(model, compiled, tokens, prompt_len, R))
        for (a, *_), (b, window, _, kind) in pairs:
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
            kinds[kind] += 1
            slid_steps += kind == "step" and window.shape[1] == MAX_CONTEXT
    assert kinds["reset"] > 10 and slid_steps > 2 * MAX_CONTEXT
    if reset_runtime == "onnx":  # resets that kept the cached inputs, and renumberings past the tables' end
        assert compiled.resets["continued"] > 10 and compiled.resets["afresh"] >= 3


STEPS = ["onnxruntime", pytest.param("native", marks=needs_native)]


@pytest.mark.parametrize("step", STEPS)
def test_compiled_step_in_a_batch_of_different_rows(tmp_path, step):
    model = random_model(seed=2)
    B = 3
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(3, 300, (B, 50), generator=g)
    eager, compiled = EagerDecoder(model), decoder(model, B, cache_dir=tmp_path, native_step=step == "native")
    assert (compiled.native is not None) == (step == "native")
    R = default_reset_latents(N)
    with torch.inference_mode():
        window = TokenWindow(rows, B, MAX_CONTEXT, torch.device("cpu"))
        torch.testing.assert_close(compiled.reset(window.view(), R), eager.reset(window.view(), R), atol=1e-4, rtol=1e-4)
        a = decode_side_by_side(window, eager, compiled, 3 * MAX_CONTEXT, g, R)
    assert not torch.allclose(a[0], a[1])  # the rows really differ


@pytest.mark.parametrize("step", STEPS)
def test_variations_of_one_primer_share_its_cached_inputs(tmp_path, monkeypatch, step):
    # The primer's cross-attend K/V are kept once for all variations (the shared ring) and each
    # variation's own ids in the rows' ring, which grows as they come; the primer slides out
    # of the window, and a window whose rows share only their first ids shares just those.
    monkeypatch.setattr(decode_onnx, "ROW_SLOTS", 4)  # so that the rows' ring grows several times
    model = random_model(seed=6)
    B, primer_len = decode_onnx.SHARE_FROM_ROWS, 40
    g = torch.Generator().manual_seed(2)
    primer = torch.randint(3, 300, (1, primer_len), generator=g).repeat(B, 1)
    eager, compiled = EagerDecoder(model), decoder(model, B, cache_dir=tmp_path, native_step=step == "native")
    assert (compiled.native is not None) == (step == "native")
    R = default_reset_latents(N)

    def run(window, eager, steps):
        shared_cached, row_slots = [], []

        def record():
            shared_cached.append(compiled.shared.cached)
            row_slots.append(compiled.rows.capacity)

        decode_side_by_side(window, eager, compiled, steps, g, R, after_each=record)
        return shared_cached, row_slots

    with torch.inference_mode():
        window = TokenWindow(primer, B, MAX_CONTEXT, torch.device("cpu"))
        torch.testing.assert_close(compiled.reset(window.view(), R), eager.reset(window.view(), R), atol=1e-4, rtol=1e-4)
        assert (compiled.shared.cached, compiled.rows.cached) == (primer_len, 0)
        shared_cached, row_slots = run(window, eager, 3 * MAX_CONTEXT)
        assert shared_cached[0] == primer_len and shared_cached[-1] == 0  # slid out, oldest first
        assert all(a >= b for a, b in zip(shared_cached, shared_cached[1:]))
        assert compiled.shared.capacity == 1  # the steps no longer read it
        assert len(set(row_slots)) >= 4 and row_slots[-1] == MAX_CONTEXT
        assert compiled.resets["continued"] > 10

        partial = window.view().clone()
        partial[:, :10] = partial[0, :10]
        common = int((partial != partial[0]).any(dim=0).int().argmax())
        assert common >= 10
        eager = EagerDecoder(model)
        torch.testing.assert_close(compiled.reset(partial, R), eager.reset(partial, R), atol=1e-4, rtol=1e-4)
        assert (compiled.shared.cached, compiled.rows.cached) == (common, partial.shape[1] - common)
        run(TokenWindow(partial, B, MAX_CONTEXT, torch.device("cpu")), eager, MAX_CONTEXT)


@pytest.mark.parametrize("B", [2, decode_onnx.SHARE_FROM_ROWS])
def test_rows_that_are_one_window_are_computed_once(tmp_path, monkeypatch, B):
    # Variations' prefill (every row the same window) runs the reset's graphs for one row and
    # broadcasts its K/V and logits; so do the resets of rows that stay the same (greedy
    # variations). Rows that differ run every row, and stay exact.
    model = random_model(seed=8)
    g = torch.Generator().manual_seed(4)
    primer = torch.randint(3, 300, (1, 40), generator=g).repeat(B, 1)
    eager, compiled = EagerDecoder(model), decoder(model, B, cache_dir=tmp_path)
    rows_run = {"inputs": [], "latents": []}
    for graph, feed in (("inputs", "ids"), ("latents", "latent_ids")):
        session = getattr(compiled.compiled, graph)

        def run(outputs, feeds, *rest, _run=session.run, _graph=graph, _feed=feed):
            rows_run[_graph].append(feeds[_feed].shape[0])
            return _run(outputs, feeds, *rest)

        monkeypatch.setattr(session, "run", run)
    R = default_reset_latents(N)
    with torch.inference_mode():
        window = TokenWindow(primer, B, MAX_CONTEXT, torch.device("cpu"))
        torch.testing.assert_close(compiled.reset(window.view(), R), eager.reset(window.view(), R), atol=1e-4, rtol=1e-4)
        assert rows_run == {"inputs": [1], "latents": [1]}
        decode_side_by_side(window, eager, compiled, 3 * (N - R) + 3, g, R, same_in_every_row=True)
        assert len(rows_run["latents"]) >= 3 and set(rows_run["latents"]) == {1}
        done = len(rows_run["latents"])
        a = decode_side_by_side(window, eager, compiled, MAX_CONTEXT, g, R)
    assert set(rows_run["latents"][done:]) == {B}
    assert not torch.allclose(a[0], a[1])  # the rows really differ


def test_fewer_variations_than_share_from_rows_keep_their_own_inputs(tmp_path):
    # Fewer variations than SHARE_FROM_ROWS (the web app's 1 or 2) read their primer's K/V each:
    # sharing it did not pay there.
    model = random_model(seed=7)
    B = decode_onnx.SHARE_FROM_ROWS - 1
    g = torch.Generator().manual_seed(3)
    primer = torch.randint(3, 300, (1, 40), generator=g).repeat(B, 1)
    eager, compiled = EagerDecoder(model), decoder(model, B, cache_dir=tmp_path)
    R = default_reset_latents(N)
    with torch.inference_mode():
        window = TokenWindow(primer, B, MAX_CONTEXT, torch.device("cpu"))
        torch.testing.assert_close(compiled.reset(window.view(), R), eager.reset(window.view(), R), atol=1e-4, rtol=1e-4)
        assert (compiled.shared.cached, compiled.rows.cached, compiled.rows.capacity) == (0, 40, MAX_CONTEXT)
        decode_side_by_side(window, eager, compiled, MAX_CONTEXT, g, R)
    assert compiled.shared.cached == 0


def test_a_reset_over_another_window_starts_afresh(tmp_path):
    # Only a window that is the cached inputs plus one new id keeps the cache: an edited or
    # unrelated window (a caller's own schedule) is encoded anew.
    model = random_model(seed=3)
    compiled = decoder(model, cache_dir=tmp_path)
    g = torch.Generator().manual_seed(1)
    window = torch.randint(3, 300, (1, 40), generator=g)
    with torch.inference_mode():
        compiled.reset(window, 8)
        for t in torch.randint(3, 300, (8,), generator=g):
            window = torch.cat((window, t.view(1, 1)), dim=1)
            compiled.step(t.view(1), window)
        edited = window.clone()
        edited[0, 5] = (edited[0, 5] + 1) % 300 + 3
        for other in (edited, torch.randint(3, 300, (1, 48), generator=g), window[:, 10:]):
            torch.testing.assert_close(compiled.reset(other, 8), EagerDecoder(model).reset(other, 8), atol=1e-4, rtol=1e-4)
        assert compiled.resets == {"afresh": 4, "continued": 0}
        nxt = torch.cat((other, torch.tensor([[7]])), dim=1)  # and the cache it made is kept again
        torch.testing.assert_close(compiled.reset(nxt, 8), EagerDecoder(model).reset(nxt, 8), atol=1e-4, rtol=1e-4)
        assert compiled.resets == {"afresh": 4, "continued": 1}


def test_greedy_continuations_match_eager_for_hundreds_of_ids():
    model = random_model(seed=1)
    prompt = ids_stream(30, seed=9)
    eager = generate(model, prompt, max_new_tokens=600, temperature=0, backend="eager")
    compiled = generate(model, prompt, max_new_tokens=600, temperature=0, backend="onnx")
    assert compiled == eager
    assert len(eager[0]) == 600 and len(set(eager[0])) > 20  # varied, and far past the window


def test_auto_is_the_compiled_step_on_a_cpu():
    stats: dict = {}
    model = random_model()
    generate(model, ids_stream(5), max_new_tokens=10, seed=0, stats=stats)
    assert stats["runtime"] == "onnx-float32" + WITH_NATIVE
    generate(model, ids_stream(5), max_new_tokens=10, seed=0, stats=stats, backend="eager")
    assert stats["runtime"] == "eager"
    generate(random_model(attention="linear"), ids_stream(5), max_new_tokens=10, seed=0, stats=stats)
    assert stats["runtime"] == "eager"  # the compiled step is softmax only


def test_seeds_and_variations_behave_as_with_eager():
    model = random_model(seed=4)
    prompt = ids_stream(7)
    a = generate(model, prompt, max_new_tokens=200, seed=11, backend="onnx")
    assert a == generate(model, prompt, max_new_tokens=200, seed=11, backend="eager")
    assert a == generate(model, prompt, max_new_tokens=200, seed=11, backend="onnx")
    assert a != generate(model, prompt, max_new_tokens=200, seed=12, backend="onnx")
    sampled = generate(model, prompt, max_new_tokens=150, seed=3, num_variations=3, backend="onnx")
    assert sampled == generate(model, prompt, max_new_tokens=150, seed=3, num_variations=3, backend="eager")
    assert len({tuple(v) for v in sampled}) == 3
    greedy = generate(model, prompt, max_new_tokens=150, temperature=0, num_variations=3, backend="onnx")
    assert greedy[0] == greedy[1] == greedy[2]


def test_cancel_and_progress_with_the_compiled_step():
    model = random_model()
    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 5:
            cancel.set()

    out = generate(model, [5], max_new_tokens=10_000, seed=0, cancel=cancel, progress=progress, backend="onnx")
    assert 5 <= len(out[0]) < 10_000 and calls == sorted(calls)


def test_int8_weights_quantise_the_products_and_stay_close(tmp_path):
    import onnx

    model = random_model(seed=3, d_model=64, n_heads=2, cross_heads=2)
    files = exported_files(model, "int8", cache_dir=tmp_path)
    graph = onnx.load(str(files["step"])).graph
    ops = {node.op_type for node in graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    # 7-bit weights: an AVX2 CPU's uint8 x int8 pairs cannot saturate 16 bits
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights
    assert max(int(abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert "Gather" in ops and not any(n.op_type == "DequantizeLinear" and "tok_emb" in n.name for n in graph.node)
    exact = decoder(model, cache_dir=tmp_path)
    int8 = decoder(model, cache_dir=tmp_path, precision="int8")
    window = torch.tensor([ids_stream(40)])
    with torch.inference_mode():
        a, b = exact.reset(window, N).log_softmax(-1), int8.reset(window, N).log_softmax(-1)
    assert not torch.equal(a, b)
    assert 0.5 * (a.exp() - b.exp()).abs().sum() < 0.5  # a distribution close to float32's


def test_weights_changed_in_place_get_a_fresh_export(tmp_path):
    model = random_model()
    sessions = SessionCache()
    window = torch.tensor([ids_stream(20)])
    with torch.inference_mode():
        before = decoder(model, cache_dir=tmp_path, sessions=sessions).reset(window, 8)
    with torch.no_grad():
        model.head.weight.mul_(2.0)
    with torch.inference_mode():
        after = decoder(model, cache_dir=tmp_path, sessions=sessions).reset(window, 8)
        torch.testing.assert_close(after, EagerDecoder(model).reset(window, 8), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before, after)


# ---- the disk cache ------------------------------------------------------------------------------


def test_second_start_reuses_the_export(tmp_path, monkeypatch):
    model = random_model()
    files = exported_files(model, cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [files["step"].parent.name]  # no temp left
    meta = json.loads((files["step"].parent / "meta.json").read_text())
    assert meta["key"]["weights_sha256"].startswith("tensors:")

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(decode_onnx, "build_export", no_export)
    window = torch.tensor([ids_stream(20)])
    with torch.inference_mode():
        decoder(model, cache_dir=tmp_path).reset(window, 8)  # a fresh process's first decoder


@pytest.mark.parametrize("damage", ["garbage", "truncated", "meta"])
def test_a_damaged_export_is_rebuilt(tmp_path, damage):
    model = random_model()
    files = exported_files(model, cache_dir=tmp_path)
    step = files["step"]
    good = step.read_bytes()
    if damage == "garbage":
        step.write_bytes(b"not an onnx file" * 100)
    elif damage == "truncated":
        step.write_bytes(good[: len(good) // 2])
    else:
        (step.parent / "meta.json").write_text("{broken")
    eager = EagerDecoder(model)
    window = torch.tensor([ids_stream(30)])
    with torch.inference_mode():
        compiled = decoder(model, cache_dir=tmp_path)
        torch.testing.assert_close(compiled.reset(window, 12), eager.reset(window, 12), atol=1e-4, rtol=1e-4)
        tok = torch.tensor([7])
        torch.testing.assert_close(compiled.step(tok, window), eager.step(tok, window), atol=1e-4, rtol=1e-4)
    assert json.loads((step.parent / "meta.json").read_text())["files"]["step"]["sha256"]
    assert len(list((tmp_path / "onnx").iterdir())) == 1


def test_garbage_that_passes_the_checksum_is_still_rebuilt(tmp_path):
    """If a broken file's checksum were written too (a bad disk, a bad copy), the session that
    cannot load it is dropped and the export made again, once."""
    model = random_model()
    files = exported_files(model, cache_dir=tmp_path)
    files["step"].write_bytes(b"\x00garbage")
    meta_path = files["step"].parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["step"]["sha256"] = decode_onnx.sha256_of(files["step"])
    meta_path.write_text(json.dumps(meta))
    window = torch.tensor([ids_stream(30)])
    with torch.inference_mode():
        got = decoder(model, cache_dir=tmp_path).reset(window, 12)
        torch.testing.assert_close(got, EagerDecoder(model).reset(window, 12), atol=1e-4, rtol=1e-4)


def test_a_stale_export_is_not_used(tmp_path, monkeypatch):
    model = random_model()
    old = exported_files(model, cache_dir=tmp_path)
    monkeypatch.setattr(decode_onnx, "EXPORT_VERSION", decode_onnx.EXPORT_VERSION + 1)
    new = exported_files(model, cache_dir=tmp_path)
    assert new["step"].parent != old["step"].parent
    other = exported_files(random_model(seed=9), cache_dir=tmp_path)
    assert other["step"].parent not in (old["step"].parent, new["step"].parent)


def test_exports_this_installation_cannot_load_are_removed(tmp_path, monkeypatch):
    # An upgrade (export version, onnxruntime, torch) leaves the old exports unloadable: each
    # new export removes them, and keeps other models' exports of this installation.
    model, second = random_model(), random_model(seed=9)
    old = exported_files(model, cache_dir=tmp_path)["step"].parent
    junk = tmp_path / "onnx" / "no-meta"
    junk.mkdir()
    monkeypatch.setattr(decode_onnx, "EXPORT_VERSION", decode_onnx.EXPORT_VERSION + 1)
    kept = exported_files(second, cache_dir=tmp_path)["step"].parent
    assert not old.exists() and not junk.exists()
    again = exported_files(model, cache_dir=tmp_path)["step"].parent
    assert kept.exists() and again.exists() and kept != again


def test_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("PERCEIVER_MUSIC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert decode_onnx.cache_folder() == tmp_path / "perceiver-music"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert decode_onnx.cache_folder() == tmp_path / "home" / ".cache" / "perceiver-music"


# ---- without onnxruntime, the engine and the CLI ---------------------------------------------------


def test_without_onnxruntime_auto_runs_eager(monkeypatch):
    monkeypatch.setattr(decode_onnx, "available", lambda: False)
    stats: dict = {}
    model = random_model()
    out = generate(model, ids_stream(5), max_new_tokens=30, seed=0, stats=stats)
    assert stats["runtime"] == "eager" and len(out[0]) == 30
    with pytest.raises(ValueError, match="onnxruntime"):
        generate(model, ids_stream(5), max_new_tokens=3, backend="onnx")


def test_engine_cpu_runtime(random_checkpoint, monkeypatch):
    from perceiver_music.checkpoint import ModelCache
    from perceiver_music.engine import ContinueRequest, continue_midi
    from perceiver_music.errors import BadRequestError

    models = ModelCache()

    def run(runtime, **kw):
        request = ContinueRequest(length_tokens=120, length_seconds=None, temperature=0, seed=1, device="cpu",
                                  checkpoint=str(random_checkpoint), render_audio=False, cpu_runtime=runtime, **kw)
        return continue_midi(request, models=models).variations[0]

    from perceiver_music import engine

    compiled = "onnx-" + engine.ONNX_PRECISION + WITH_NATIVE
    onnx, auto, torch_ = run("onnx"), run("auto"), run("torch")
    assert onnx.stats["runtime"] == auto.stats["runtime"] == compiled
    assert torch_.stats["runtime"] == "eager-float16" and onnx.provenance["stats"]["runtime"] == compiled
    assert onnx.new_ids == auto.new_ids and len(onnx.new_ids) == 120
    keys = [json.loads(m.read_text())["key"] for m in (decode_onnx.cache_folder() / "onnx").glob("*/meta.json")]
    sha = models.get(random_checkpoint, "cpu").sha256
    assert {"weights_sha256": "checkpoint:" + sha} in [{"weights_sha256": k["weights_sha256"]} for k in keys]
    with pytest.raises(BadRequestError, match="CPU runtime"):
        run("fast")
    monkeypatch.setattr(decode_onnx, "available", lambda: False)
    with pytest.raises(BadRequestError, match="onnxruntime"):
        run("onnx")
    assert run("auto").stats["runtime"] == "eager-float16"


def test_engine_cpu_precision_float32_is_exact_on_both_runtimes(random_checkpoint, monkeypatch):
    from perceiver_music.checkpoint import ModelCache
    from perceiver_music.engine import ContinueRequest, continue_midi
    from perceiver_music.errors import BadRequestError

    models = ModelCache()

    def run(runtime, precision):
        request = ContinueRequest(length_tokens=200, length_seconds=None, temperature=0, seed=1, device="cpu",
                                  checkpoint=str(random_checkpoint), render_audio=False, cpu_runtime=runtime,
                                  cpu_precision=precision)
        return continue_midi(request, models=models).variations[0]

    onnx, torch_ = run("onnx", "float32"), run("torch", "float32")
    assert (onnx.stats["runtime"], torch_.stats["runtime"]) == ("onnx-float32" + WITH_NATIVE, "eager")
    assert onnx.new_ids == torch_.new_ids and len(onnx.new_ids) == 200
    assert run("auto", "float32").stats["runtime"] == "onnx-float32" + WITH_NATIVE
    with pytest.raises(BadRequestError, match="CPU precision"):
        run("auto", "float16")
    monkeypatch.setattr(decode_onnx, "available", lambda: False)
    assert run("auto", "float32").stats["runtime"] == "eager"


def test_cli_cpu_runtime_flag(random_checkpoint, tmp_path, capsys):
    import argparse

    from app.cli import main
    from app.commands.generate import add_generation_arguments, request_from_args

    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    assert request_from_args(parser.parse_args([])).cpu_runtime == "auto"
    assert request_from_args(parser.parse_args(["--cpu-runtime", "torch"])).cpu_runtime == "torch"
    assert request_from_args(parser.parse_args([])).cpu_precision == "auto"
    outs = {}
    for runtime, precision in (("torch", "auto"), ("onnx", "auto"), ("onnx", "float32")):
        out = tmp_path / f"{runtime}-{precision}.mid"
        assert main(["generate", "--from-scratch", "-o", str(out), "--checkpoint", str(random_checkpoint),
                     "--length-tokens", "80", "--temperature", "0", "--seed", "1", "--device", "cpu",
                     "--cpu-runtime", runtime, "--cpu-precision", precision, "--quiet"]) == 0
        outs[runtime, precision] = out.read_bytes()
    capsys.readouterr()
    import io

    import mido

    from perceiver_music import engine

    def runtime_of(data: bytes) -> str:  # the provenance that the MIDI carries
        text = [m.text for t in mido.MidiFile(file=io.BytesIO(data)).tracks for m in t if m.type == "text"][0]
        return json.loads(text)["stats"]["runtime"]

    assert runtime_of(outs["torch", "auto"]) == "eager-float16"
    assert runtime_of(outs["onnx", "auto"]) == "onnx-" + engine.ONNX_PRECISION + WITH_NATIVE
    assert runtime_of(outs["onnx", "float32"]) == "onnx-float32" + WITH_NATIVE
    for flag in ("--cpu-runtime", "--cpu-precision"):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([flag, "fast"])
        assert stop.value.code == 2


def test_a_cache_folder_that_cannot_be_written_falls_back_to_a_temporary_one(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    model = random_model()
    files = exported_files(model, cache_dir=blocked / "cache")
    assert files["step"].is_file() and blocked not in files["step"].parents
    window = torch.tensor([ids_stream(30)])
    with torch.inference_mode():
        got = decoder(model, cache_dir=blocked / "cache").reset(window, 12)
        torch.testing.assert_close(got, EagerDecoder(model).reset(window, 12), atol=1e-4, rtol=1e-4)


def test_a_batch_of_several_prompts_runs_the_compiled_step_in_float32(random_checkpoint):
    """int8 quantises a product's input with one scale for the whole batch: a prompt's music
    would depend on its batch-mates, so several prompts in one batch run in float32."""
    from perceiver_music.checkpoint import ModelCache
    from perceiver_music.engine import ContinueRequest, continue_batch

    models = ModelCache()
    requests = [ContinueRequest(length_tokens=20, length_seconds=None, seed=s, device="cpu", render_audio=False,
                                checkpoint=str(random_checkpoint)) for s in (1, 2)]
    results = continue_batch(requests, models=models)
    assert {r.variations[0].stats["runtime"] for r in results} == {"onnx-float32" + WITH_NATIVE}
    alone = continue_batch(requests[:1], models=models)[0]
    assert alone.variations[0].stats["runtime"] == "onnx-int8" + WITH_NATIVE
