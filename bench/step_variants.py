"""Alternatives to the shipped compiled step, timed against it in one run (issue 13).

The int8 step (decode_onnx.py) moves about 35 MB a step at 4,096: int8 weights, the cross-attend
K/V and the latent K/V (9.4 MB a row, float32). Other ways to run it, each exported from the
same model and run on the same caches as the shipped graphs:

  int8                  the shipped step: dynamic int8 weight products, caches float32
  int8-latent-float16   the same, with the latent K/V cached in float16 and cast to float32 in
                        the graph (onnxruntime has no float16 MatMul on x86 CPUs)
  int4                  weights in 4 bits (MatMulNBits, blocks of 32, int8 compute); needs the
                        onnx_ir package, else reported as skipped
  int8-blocks           weights in 8 bits by blocks of 128 along the input axis (MatMulNBits,
                        int8 compute: onnxruntime's kernels for one-token LLM decoding), in
                        place of the shipped per-channel 7-bit DynamicQuantizeMatMul
  openvino-int8         another runtime: the float32 step with int8 weights per output column
                        (DequantizeLinear before each weight product, which OpenVINO's CPU plugin
                        runs as one product over compressed weights), compiled by OpenVINO for
                        the CPU with static shapes, float32 arithmetic, reading the same caches
                        in place; needs the openvino package, else reported as skipped

The caches are real: a float32 reset over the end of the longest shipped primer (nearly max_context ids,
R latents). Batch 1 is that window; "4 variations" is the shared_step graph with the window as
the shared ring and 256 empty own slots, four rows of latent caches, and the four most likely
next ids. Each round times every graph (a short burst each, interleaved), so slow spells of a
shared machine fall on all of them; ratios are per round, then the median.

Prints one JSON object: each variant's median step ms (batch 1 and 4 variations), its paired
ratio to the shipped int8 step, its 4-variation step over its batch-1 step, and how far its
next-id distributions are from the float32 step's at that one position (total variation; the
NLL along generate's schedule is bench/precision.py's and bench/precision_int4.py's).

    python bench/step_variants.py --threads 2 --rounds 40
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perceiver_music import decode_onnx as D  # noqa: E402
from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.evaluate import load_eval_works  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from generate import machine  # noqa: E402

OWN_SLOTS = 256  # the rows' ring of variations starts this size (decode_onnx.ROW_SLOTS)


class LatentFloat16Step(torch.nn.Module):
    """StepGraph whose latent caches are float16 graph inputs, cast to float32 where read."""

    def __init__(self, model, shared: bool) -> None:
        super().__init__()
        self.graph, self.first_latent = D.StepGraph(model, shared=shared), (3 if shared else 0) + 4

    def forward(self, tokens, pos, *caches):
        caches = list(caches)
        for i in range(self.first_latent, len(caches)):
            caches[i] = caches[i].float()
        return self.graph(tokens, pos, *caches)


def quantize_int4(path: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs every node it skips
    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), bits=4, block_size=32, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), False)


def rewrite_weight_products(path: Path, out: Path, rewrite, domain: str | None = None) -> None:
    """Every MatMul by a constant weight (K, N) in the graph at `path` is replaced by what
    rewrite(x, w, name, y) returns: (new initializers, new nodes) computing output y from input x
    and the float32 weight w. `domain`: an operator domain the new nodes need."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes, added, replaced = [], [], set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        name = node.input[1]
        initializers, new_nodes = rewrite(node.input[0], numpy_helper.to_array(weights[name]).astype(np.float32),
                                          name, node.output[0])
        replaced.add(name)
        added += initializers
        nodes += new_nodes
    kept = [init for init in graph.initializer if init.name not in replaced]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + added)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.save(model, str(out))


def quantize_int8_blocks(path: Path, out: Path, block: int = 128) -> None:
    """Every weight product becomes com.microsoft.MatMulNBits with 8-bit codes, symmetric per
    block of `block` inputs: code = round(w / scale) + 128, scale = the block's largest |w| / 127
    (the operator's default zero point for 8 bits is 128)."""
    from onnx import helper, numpy_helper

    def rewrite(x, w, name, y):
        K, N = w.shape
        blocks = -(-K // block)
        padded = np.zeros((N, blocks * block), np.float32)
        padded[:, :K] = w.T
        padded = padded.reshape(N, blocks, block)
        scale = np.abs(padded).max(-1) / 127.0
        scale[scale == 0] = 1.0
        codes = (np.clip(np.rint(padded / scale[..., None]), -127, 127) + 128).astype(np.uint8)
        return ([numpy_helper.from_array(codes, f"{name}_codes"),
                 numpy_helper.from_array(scale.reshape(-1).astype(np.float32), f"{name}_scales")],
                [helper.make_node("MatMulNBits", [x, f"{name}_codes", f"{name}_scales"], [y], domain="com.microsoft",
                                  K=K, N=N, bits=8, block_size=block, accuracy_level=4)])

    rewrite_weight_products(path, out, rewrite, domain="com.microsoft")


def dequantize_int8_columns(path: Path, out: Path) -> None:
    """Every weight product reads its weight through DequantizeLinear: int8 codes, symmetric,
    one scale per output column (the largest |w| of the column / 127)."""
    from onnx import helper, numpy_helper

    def rewrite(x, w, name, y):
        scale = np.abs(w).max(0) / 127.0
        scale[scale == 0] = 1.0
        codes = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        return ([numpy_helper.from_array(codes, f"{name}_codes"),
                 numpy_helper.from_array(scale.astype(np.float32), f"{name}_scales")],
                [helper.make_node("DequantizeLinear", [f"{name}_codes", f"{name}_scales"], [f"{name}_dq"], axis=1),
                 helper.make_node("MatMul", [x, f"{name}_dq"], [y])])

    rewrite_weight_products(path, out, rewrite)


def openvino_available() -> str | None:
    """None if OpenVINO can run, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"{error.name or error} is not installed"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # OpenVINO's own oneDNN reads it too, and then fails
        return ("OpenVINO's CPU plugin cannot compile the step with ONEDNN_MAX_CPU_ISA set "
                "(bench/avx2_laptop.py sets it)")
    return None


def openvino_run(path: Path, feeds: dict, threads: int) -> tuple:
    """(run, logits of one run, what it must keep alive): the graph compiled by OpenVINO for the
    CPU at the feeds' shapes, its inputs the feeds' own memory (shared, not copied)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({port.get_any_name(): ov.PartialShape(list(np.shape(feeds[port.get_any_name()])))
                   for port in model.inputs})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                 "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    arrays = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
    for name, array in arrays.items():
        request.set_tensor(name, ov.Tensor(array, shared_memory=True))
    request.infer()
    return request.infer, request.get_output_tensor(0).data.copy(), (compiled, arrays)


def int4_available() -> str | None:
    """None if the int4 quantiser can run, else why not."""
    try:
        import onnx_ir  # noqa: F401
        from onnxruntime.quantization import matmul_nbits_quantizer  # noqa: F401
    except ImportError as error:
        return f"{error.name or error} is not installed"
    return None


def export_graphs(model, folder: Path, variants: list[str]) -> dict:
    """{(variant, graph): onnx file} for graph in step, shared_step; plus the float32 reference."""
    examples = D._example_inputs(model)
    first_latent = {"step": 2 + 4, "shared_step": 5 + 4}
    files = {}
    for graph in ("step", "shared_step"):
        shared = graph == "shared_step"
        names = D.step_names(model.config.n_layers, shared)
        axes = D.step_dynamic_axes(model.config.n_layers, shared)
        plain = folder / f"{graph}.float32.onnx"
        D._export(D.StepGraph(model, shared=shared).eval(), examples[graph], plain, *names, axes)
        files[("float32", graph)] = plain
        for variant in variants:
            out = folder / f"{graph}.{variant}.onnx"
            if variant == "int8":
                D._quantize(plain, out)
            elif variant == "int4":
                quantize_int4(plain, out)
            elif variant == "int8-blocks":
                quantize_int8_blocks(plain, out)
            elif variant == "openvino-int8":
                dequantize_int8_columns(plain, out)
            elif variant == "int8-latent-float16":
                args = [a.half() if i >= first_latent[graph] else a for i, a in enumerate(examples[graph])]
                half = folder / f"{graph}.latent-float16.float32.onnx"
                D._export(LatentFloat16Step(model, shared).eval(), args, half, *names, axes)
                D._quantize(half, out)
            files[(variant, graph)] = out
    return files


def real_caches(model, data: str, threads: int) -> tuple[dict, dict]:
    """The step graphs' inputs (batch 1, 4 variations) after a float32 reset over the end of the
    longest work in `data`."""
    cfg = model.config
    works, _ = load_eval_works(data, split="test")
    ids = max(works, key=len)[-(cfg.max_context - 1):].tolist()
    decoder = D.OnnxDecoder(model, 1, precision="float32", threads=threads)
    logits = decoder.reset(torch.tensor([ids]), default_reset_latents(cfg.num_latents))
    rows, L = decoder.rows, cfg.n_layers
    one = {"tokens": logits.argmax(-1).numpy().astype(np.int64), "pos": decoder.pos.copy(),
           "cross_k_t": rows.k.copy(), "cross_v": rows.v.copy(), "cross_mask": rows.mask.copy(),
           "latent_mask": decoder.latent_mask.copy()}
    for i in range(L):
        one[f"latent_k_t{i}"], one[f"latent_v{i}"] = decoder.latent_k_t[i].copy(), decoder.latent_v[i].copy()
    H, hd = rows.heads, rows.head_dim
    four = {"tokens": logits[0].topk(4).indices.numpy().astype(np.int64), "pos": decoder.pos.copy(),
            "shared_k": np.ascontiguousarray(rows.k.transpose(0, 1, 3, 2)), "shared_v": rows.v.copy(),
            "shared_mask": rows.mask.copy(),
            "cross_k_t": np.zeros((4, H, hd, OWN_SLOTS), np.float32),
            "cross_v": np.zeros((4, H, OWN_SLOTS, hd), np.float32),
            "cross_mask": np.full(OWN_SLOTS, -np.inf, np.float32), "latent_mask": decoder.latent_mask.copy()}
    for i in range(L):
        four[f"latent_k_t{i}"] = np.repeat(one[f"latent_k_t{i}"], 4, axis=0)
        four[f"latent_v{i}"] = np.repeat(one[f"latent_v{i}"], 4, axis=0)
    return one, four


def bound(sess, feeds: dict, half_latents: bool) -> tuple:
    """An IO binding of feeds (latent caches float16 if asked), the OrtValues it reads kept alive."""
    import onnxruntime as ort

    binding, values = sess.io_binding(), []
    for name, array in feeds.items():
        if half_latents and name.startswith("latent_") and name != "latent_mask":
            array = array.astype(np.float16)
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        values.append(value)
        binding.bind_ortvalue_input(name, value)
    for output in sess.get_outputs():
        binding.bind_output(output.name)
    return binding, values


def total_variation(logits: np.ndarray, reference: np.ndarray) -> float:
    p, q = (torch.from_numpy(x).float().softmax(-1) for x in (logits, reference))
    return round(0.5 * float((p - q).abs().sum(-1).max()), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--data", default=str(REPO / "assets" / "primers"),
                    help="a prepared DATA_DIR or a MIDI folder: its longest work gives the caches")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--burst", type=int, default=50, help="steps timed per graph per round")
    args = ap.parse_args()
    if not D.available():
        raise SystemExit("step_variants needs onnxruntime")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.float().eval()
    skipped = {}
    variants = ["int8", "int8-latent-float16", "int4", "int8-blocks", "openvino-int8"]
    for variant, why in (("int4", int4_available()), ("openvino-int8", openvino_available())):
        if why is not None:
            variants.remove(variant)
            skipped[variant] = why
    one, four = real_caches(model, args.data, args.threads)
    cases = {"batch1": ("step", one), "4_variations": ("shared_step", four)}
    with tempfile.TemporaryDirectory(prefix="step-variants-") as folder:
        files = export_graphs(model, Path(folder), variants)
        runs = {}  # (variant, case) -> (run one step, its logits, what run needs kept alive)
        for variant in ["float32", *variants]:
            for case, (graph, feeds) in cases.items():
                if variant == "openvino-int8":
                    runs[(variant, case)] = openvino_run(files[(variant, graph)], feeds, args.threads)
                    continue
                sess = D.cpu_session(files[(variant, graph)], args.threads)
                binding, values = bound(sess, feeds, variant == "int8-latent-float16")
                sess.run_with_iobinding(binding)
                runs[(variant, case)] = (partial(sess.run_with_iobinding, binding), binding.copy_outputs_to_cpu()[0],
                                         values)
        ms = {key: [] for key in runs if key[0] != "float32"}
        for _ in range(args.rounds):
            for key in ms:
                run = runs[key][0]
                for _ in range(3):
                    run()
                start = time.perf_counter()
                for _ in range(args.burst):
                    run()
                ms[key].append(1e3 * (time.perf_counter() - start) / args.burst)

    def median(values) -> float:
        return round(float(np.median(values)), 3)

    report = {}
    for variant in variants:
        entry = {}
        for case in cases:
            entry[f"{case}_step_ms"] = median(ms[(variant, case)])
            entry[f"{case}_over_int8"] = median(np.divide(ms[(variant, case)], ms[("int8", case)]))
            entry[f"{case}_next_id_total_variation_vs_float32"] = total_variation(runs[(variant, case)][1],
                                                                                   runs[("float32", case)][1])
        entry["4_variations_over_batch1_step"] = median(np.divide(ms[(variant, "4_variations")], ms[(variant, "batch1")]))
        report[variant] = entry
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if "openvino-int8" in variants:
        import openvino

        versions.update(openvino=openvino.__version__,
                        openvino_isa=os.environ.get("PERCEIVER_MUSIC_OPENVINO_ISA", "this CPU's"))
    print(json.dumps({
        "command": "python bench/step_variants.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": dict(machine(), **versions),
        "context": model.config.max_context,
        "rounds": args.rounds,
        "variants": report,
        "skipped": skipped,
    }, indent=1))


if __name__ == "__main__":
    main()
