"""The native decode step against onnxruntime's step, in one run (issue 13).

Two runtimes' steps took 1.5-1.65 ms at batch 1 here, and issue 13's 3x needs 0.92 ms or less
(BENCHMARKS.md). `bench/own_int8_products.py` found AVX2 int8 weight products of our own 2.2x
faster than onnxruntime's; the whole step in kernels of our own is now the engine's batch-1 step
(perceiver_music/native_step.py, perceiver_music/native/decode_step.c). This bench times it
against onnxruntime's step: the same weights, the same caches, in float32 and in int8.

Caches: real ones, from a float32 reset over the end of the longest shipped primer
(step_variants.real_caches), batch 1.

Checked before timing:
- native float32 gives onnxruntime float32's logits and new K/V (largest absolute difference);
- native int8's next-id distribution stays near float32 (total variation, next to onnxruntime
  int8's).

Timed in interleaved rounds (a burst of steps each): onnxruntime int8, onnxruntime float32,
native int8 (the engine's default) and native float32.

With --loop-rounds, also generate() at batch 1, interleaved round by round: the eager CPU
setting, onnx int8 with onnxruntime's step (PERCEIVER_MUSIC_NATIVE_STEP=0) and onnx int8 with
the native step (the engine's default), on random weights of `default_config()` at --context,
as bench/compiled_vs_eager.py measures them.

Prints one JSON object: median step ms, each one's ratio to onnxruntime int8 within the round,
the checks, and the loop's tokens/s and ratios to the eager CPU setting. (Its keys keep the
names of the probe it was, "own_*" for the native step, so that older results compare.)

    python bench/own_step.py --threads 2 --rounds 20 --loop-rounds 3
    python bench/avx2_laptop.py -- python bench/own_step.py ... --no-native-bfloat16  # as on an AVX2 laptop
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine, native_step_switched  # noqa: E402
from step_variants import bound, export_graphs, real_caches, total_variation  # noqa: E402

from perceiver_music import decode_onnx as D  # noqa: E402
from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402
from perceiver_music.native_step import NativeStep, Unavailable  # noqa: E402

def loop_rates(model, threads: int, rounds: int, new_tokens: int) -> dict:
    """Steady tokens/s of generate() at batch 1 (bench/generate.py's generation_rate, random
    weights, a random full-window primer), interleaved round by round: the eager CPU setting,
    onnx int8 with onnxruntime's step, and onnx int8 with the native step."""
    from generate import generation_rate

    settings = {"eager_cpu_setting": ({"backend": "eager", "dtype": torch.float16}, True),
                "onnxruntime_int8": ({"backend": "onnx", "dtype": torch.qint8}, False),
                "own_int8": ({"backend": "onnx", "dtype": torch.qint8}, True)}
    cfg = model.config
    prompt = torch.randint(3, cfg.vocab_size, (cfg.max_context,), generator=torch.Generator().manual_seed(1)).tolist()
    rates = {name: [] for name in settings}
    for warm_up in (True, False):  # the warm-up: exports and first sessions
        for _ in range(1 if warm_up else rounds):
            for name, (kw, native) in settings.items():
                with native_step_switched(native):
                    steady = generation_rate(model, prompt, 50 if warm_up else new_tokens, torch.device("cpu"),
                                             repeats=1, **kw)[1]
                if not warm_up:
                    rates[name].append(round(steady, 1))
    over = lambda name: [round(a / b, 2) for a, b in zip(rates[name], rates["eager_cpu_setting"])]  # noqa: E731
    return {"tokens_per_s": rates,
            "median_tokens_per_s": {name: float(np.median(r)) for name, r in rates.items()},
            "median_over_eager_cpu_setting": {name: float(np.median(over(name))) for name in settings}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "assets" / "model"))
    ap.add_argument("--data", default=str(REPO / "assets" / "primers"),
                    help="a prepared DATA_DIR or a MIDI folder: its longest work gives the caches")
    ap.add_argument("--threads", type=int, default=2, choices=(1, 2))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--burst", type=int, default=50, help="steps timed per runtime per round")
    ap.add_argument("--loop-rounds", type=int, default=0,
                    help="also generate() at batch 1 with the own step, against the eager CPU setting and "
                         "onnxruntime int8, this many interleaved rounds (random weights, --context)")
    ap.add_argument("--context", type=int, default=4096, help="the loop's model")
    ap.add_argument("--new-tokens", type=int, default=600, help="ids per loop measurement")
    ap.add_argument("--no-native-bfloat16", action="store_true",
                    help="the eager CPU setting without bfloat16 weights, as on a CPU without AVX512-BF16 or AMX")
    args = ap.parse_args()
    if args.no_native_bfloat16:
        from perceiver_music import cpu_precision

        cpu_precision.native_bfloat16 = lambda: False
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint).model.float().eval()
    one, _ = real_caches(model, args.data, args.threads)
    runs, outputs = {}, {}
    with tempfile.TemporaryDirectory(prefix="own-step-") as folder:
        files = export_graphs(model, Path(folder), ["int8"])
        keep = []
        for precision in ("int8", "float32"):
            sess = D.cpu_session(files[(precision, "step")], args.threads)
            binding, values = bound(sess, one, False)
            keep.append(values)
            sess.run_with_iobinding(binding)
            runs[f"onnxruntime_{precision}"] = lambda s=sess, b=binding: s.run_with_iobinding(b)
            outputs[f"onnxruntime_{precision}"] = binding.copy_outputs_to_cpu()
    L, d = model.config.n_layers, model.config.d_model
    for precision in ("int8", "float32"):
        try:
            native = NativeStep(model, precision, args.threads)
        except Unavailable as error:
            raise SystemExit(f"own_step: {error}")
        out = [np.zeros(model.config.vocab_size, np.float32), np.zeros(d, np.float32), np.zeros(d, np.float32),
               [np.zeros(d, np.float32) for _ in range(L)], [np.zeros(d, np.float32) for _ in range(L)]]
        caches = {name: np.ascontiguousarray(a) for name, a in one.items()}
        native.point(caches["cross_k_t"][0], caches["cross_v"][0], caches["cross_mask"], caches["latent_mask"],
                     [caches[f"latent_k_t{i}"][0] for i in range(L)], [caches[f"latent_v{i}"][0] for i in range(L)],
                     *out)
        token, pos = int(caches["tokens"][0]), int(caches["pos"][0])
        native.run(pos, token)
        runs[f"own_{precision}"] = lambda native=native, token=token, pos=pos: native.run(pos, token)
        outputs[f"own_{precision}"] = [out[0][None], out[1], out[2], *[a for pair in zip(out[3], out[4]) for a in pair]]
    reference, mine = outputs["onnxruntime_float32"], outputs["own_float32"]
    checks = {
        "own_float32_logits_max_abs_diff": float(np.abs(mine[0] - reference[0]).max()),
        "own_float32_new_kv_max_abs_diff": max(float(np.abs(a.reshape(-1) - b.reshape(-1)).max())
                                               for a, b in zip(mine[1:], reference[1:])),
        "own_int8_next_id_total_variation_vs_float32": total_variation(outputs["own_int8"][0], reference[0]),
        "onnxruntime_int8_next_id_total_variation_vs_float32": total_variation(outputs["onnxruntime_int8"][0],
                                                                               reference[0]),
    }
    ms = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for _ in range(3):
                run()
            if not name.startswith("own"):  # the own workers asleep, not spinning beside onnxruntime
                time.sleep(0.01)
            start = time.perf_counter()
            for _ in range(args.burst):
                run()
            ms[name].append(1e3 * (time.perf_counter() - start) / args.burst)
    loop = None
    if args.loop_rounds:
        os.environ["PERCEIVER_MUSIC_CACHE"] = tempfile.mkdtemp(prefix="own-step-loop-")  # this run's random model
        bench = bench_model(replace(default_config(), max_context=args.context), torch.device("cpu"))
        loop = dict(context=args.context, new_tokens=args.new_tokens, rounds=args.loop_rounds,
                    **loop_rates(bench, args.threads, args.loop_rounds, args.new_tokens))
    import onnxruntime

    print(json.dumps({
        "command": "python bench/own_step.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": dict(machine(), onnxruntime=onnxruntime.__version__),
        "context": model.config.max_context,
        "cached_inputs": int(one["cross_mask"].shape[0]),
        "threads": args.threads,
        "rounds": args.rounds,
        "checks": checks,
        "step_ms": {name: round(float(np.median(values)), 4) for name, values in ms.items()},
        "over_onnxruntime_int8": {name: round(float(np.median(np.divide(values, ms["onnxruntime_int8"]))), 3)
                                  for name, values in ms.items()},
        "bfloat16_switched_off": bool(args.no_native_bfloat16),
        "loop": loop,
    }, indent=1))


if __name__ == "__main__":
    main()
