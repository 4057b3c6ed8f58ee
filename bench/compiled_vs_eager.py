"""The compiled CPU step against the eager CPU setting, interleaved round by round.

bench/generate.py measures the eager paths first and the compiled step a minute later; on a
shared VM whose speed drifts by a quarter or more within minutes, one such run put onnx int8
at 1.4x the eager CPU setting and another, the same day, at 2.5x. Here every round measures
each setting back to back (the steady generation rate of `bench/generate.py`, prefill
excluded, 600 ids per variation, random weights of `default_config()` at max_context =
--context), so a ratio compares settings measured within the same minute; the JSON gives each
round's figures, the medians, and each round's ratio to the eager CPU setting.

Settings: the eager CPU setting (`dtype=torch.float16`: float16/bfloat16 Linear weights,
what the engine ran on a CPU before the compiled step), onnx int8 (the engine's default: at
1 to 16 rows the native step, native_step.py, where it can be had), onnx int8 with onnxruntime's
step too (PERCEIVER_MUSIC_NATIVE_STEP=0), onnx float32 (exact); batch 1 and 4
variations; per round also the compiled int8 step's ms at
batch 1, for 4 variations of one primer and for 4 rows of their own ids (bench/generate.py's
reset_and_step_ms: the steps right after the reset over the primer).

    python bench/compiled_vs_eager.py --threads 2 --context 4096 --rounds 5
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python bench/compiled_vs_eager.py --no-native-bfloat16 ...   # PyTorch as on an AVX2 laptop
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generate import bench_model, generation_rate, machine, native_step_switched, reset_and_step_ms  # noqa: E402

from perceiver_music.model import default_config  # noqa: E402
from perceiver_music.tokenizer import VOCAB_SIZE  # noqa: E402

SETTINGS = {  # name -> generate() keywords, and whether a batch of one steps natively (where it can)
    "eager_cpu_setting": ({"backend": "eager", "dtype": torch.float16}, True),
    "onnx_int8": ({"backend": "onnx", "dtype": torch.qint8}, True),
    "onnx_int8_onnxruntime_step": ({"backend": "onnx", "dtype": torch.qint8}, False),
    "onnx_float32": ({"backend": "onnx", "dtype": None}, True),
}
BASELINE = "eager_cpu_setting"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=600, help="ids per variation per measurement")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--no-native-bfloat16", action="store_true",
                    help="the eager CPU setting without bfloat16 weights, as on a CPU without AVX512-BF16 or AMX")
    args = ap.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    if set(settings) - set(SETTINGS) or BASELINE not in settings:
        ap.error(f"--settings takes {', '.join(SETTINGS)} and needs {BASELINE}")
    if args.no_native_bfloat16:
        from perceiver_music import cpu_precision

        cpu_precision.native_bfloat16 = lambda: False
    torch.set_num_threads(args.threads)
    os.environ["PERCEIVER_MUSIC_CACHE"] = tempfile.mkdtemp(prefix="bench-ab-")  # this run's random model
    device = torch.device("cpu")
    model = bench_model(replace(default_config(), max_context=args.context), device)
    prompt = torch.randint(3, VOCAB_SIZE, (args.context,), generator=torch.Generator().manual_seed(1)).tolist()

    cases = [(name, variations) for name in settings for variations in (1, 4)]
    rates: dict = {f"{name}_x{v}": [] for name, v in cases}
    step_ms: dict = {"batch1": [], "4_variations": [], "4_own_prompts": []}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for name, v in cases:  # warm-up: exports and first sessions outside the rounds
        kw, native = SETTINGS[name]
        with native_step_switched(native):
            generation_rate(model, prompt, 50, device, repeats=1, num_variations=v, **kw)
    for _ in range(args.rounds):
        for name, v in cases:
            kw, native = SETTINGS[name]
            with native_step_switched(native):
                _, steady = generation_rate(model, prompt, args.new_tokens, device, repeats=1, num_variations=v, **kw)
            rates[f"{name}_x{v}"].append(round(steady, 1))
        if "onnx_int8" in settings:
            for key, batch, one_primer in (("batch1", 1, True), ("4_variations", 4, True), ("4_own_prompts", 4, False)):
                row = reset_and_step_ms(model, args.context, device, torch.qint8, steps=64, backend="onnx", batch=batch,
                                        one_primer=one_primer)
                step_ms[key].append(row["step_ms"])

    def over_baseline(key: str, v: int) -> list[float]:
        return [round(a / b, 2) for a, b in zip(rates[key], rates[f"{BASELINE}_x{v}"])]

    report = {
        "command": "python bench/compiled_vs_eager.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "context": args.context,
        "bfloat16_switched_off": bool(args.no_native_bfloat16),
        "new_tokens_per_variation": args.new_tokens,
        "tokens_per_s": rates,  # steady rate, all variations together
        "median_tokens_per_s": {k: round(statistics.median(r), 1) for k, r in rates.items()},
        "over_eager_cpu_setting": {key: over_baseline(key, v) for (name, v), key in
                                   ((case, f"{case[0]}_x{case[1]}") for case in cases) if name != BASELINE},
    }
    report["median_over_eager_cpu_setting"] = {k: statistics.median(r) for k, r in report["over_eager_cpu_setting"].items()}
    if step_ms["batch1"]:
        report["onnx_int8_step_ms"] = step_ms
        for key in ("4_variations", "4_own_prompts"):
            ratios = [round(b4 / b1, 2) for b1, b4 in zip(step_ms["batch1"], step_ms[key])]
            report[f"onnx_int8_{key}_over_batch1_step"] = ratios
            report[f"median_onnx_int8_{key}_over_batch1_step"] = statistics.median(ratios)
    if "onnx_int8" in settings:  # an id of 4 variations against one of 1, over the generation
        per_id = [round(4 * a / b, 2) for a, b in zip(rates["onnx_int8_x1"], rates["onnx_int8_x4"])]
        report["onnx_int8_4_variations_over_1_per_id"] = per_id
        report["median_onnx_int8_4_variations_over_1_per_id"] = statistics.median(per_id)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
