"""What an AVX2-only CPU executes per generated id: instruction counts under valgrind.

No AVX2-only machine is at hand and neither PyTorch nor onnxruntime can be told to leave out
their AVX-512 kernels on this one (onnxruntime's MLAS picks kernels by CPUID). valgrind's
emulated CPU has no AVX-512 (its CPUID leaves AVX-512 out, and it cannot execute such code), so
under valgrind every library takes its AVX2 path: PyTorch reports capability AVX2, oneDNN has
no native bfloat16, MLAS runs its AVX2 kernels. valgrind's timings mean nothing, but its
instruction counts are exact and repeatable. This script counts the instructions of
`generate()` per id, per runtime, as the difference of two lengths (so start-up, the export
check and the prefill cancel out; the lengths differ by two whole reset cycles, so each id
carries its share of the resets), with the shipped model and a 4,096-id window.

    python bench/avx2_instructions.py [--runtimes eager-cpu-setting,onnx-int8] [--out FILE]

Prints one JSON object. Instruction counts are not time: a dispatch-bound eager step runs many
cheap scalar instructions, a compiled step fewer, wider, memory-bound ones; the ratio is an
estimate of the speed-up, not a measurement of it (BENCHMARKS.md says how it compares with time).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# runtime -> generate()'s backend and dtype (the dtype by name: resolved in the child)
RUNTIMES = {
    "eager-float32": ("eager", None),
    "eager-cpu-setting": ("eager", "float16"),
    "onnx-float32": ("onnx", None),
    "onnx-int8": ("onnx", "qint8"),
}
CONTEXT = 4096
CYCLE = 129  # ids per reset cycle of the default model (a reset, then 128 steps)


def child(runtime: str, new_ids: int, threads: int) -> None:
    """Generate `new_ids` ids after a CONTEXT-id prompt; print what the libraries saw."""
    import torch

    from perceiver_music.checkpoint import load_checkpoint
    from perceiver_music.cpu_precision import native_bfloat16
    from perceiver_music.generate import generate

    torch.set_num_threads(threads)
    backend, dtype = RUNTIMES[runtime]
    model = load_checkpoint(REPO / "assets" / "model").model.float().eval()
    prompt = torch.randint(4, model.config.vocab_size, (CONTEXT,), generator=torch.Generator().manual_seed(0))
    stats: dict = {}
    generate(model, prompt, max_new_tokens=new_ids, seed=0, allow_eos=False, backend=backend,
             dtype=getattr(torch, dtype) if dtype else None, stats=stats)
    print(json.dumps({"torch_capability": torch.backends.cpu.get_cpu_capability(),
                      "native_bfloat16": native_bfloat16(), "runtime": stats["runtime"]}))


def count(runtime: str, new_ids: int, threads: int) -> tuple[int, dict]:
    """Instructions of one child process under valgrind (cachegrind, no cache simulation)."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               "--smc-check=all-non-file", sys.executable, __file__, "--child", runtime, str(new_ids),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"valgrind run failed ({runtime}, {new_ids} ids): {done.stderr[-2000:]}")
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    return int(match.group(1).replace(",", "")), seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", default="eager-cpu-setting,onnx-int8", help=", ".join(RUNTIMES))
    # One thread: valgrind runs all threads on one core, and a thread pool's workers spinning
    # while they wait would be counted as work.
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    ap.add_argument("--short", type=int, default=CYCLE + 1, help="ids of the short run")
    ap.add_argument("--cycles", type=int, default=2, help="reset cycles more in the long run")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--child", nargs=2, metavar=("RUNTIME", "IDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.threads)
        return
    runtimes = args.runtimes.split(",")
    if set(runtimes) - set(RUNTIMES):
        ap.error(f"--runtimes takes {', '.join(RUNTIMES)}")
    short, long = args.short, args.short + args.cycles * CYCLE
    report = {"command": "python bench/avx2_instructions.py " + " ".join(sys.argv[1:]), "context": CONTEXT,
              "ids": [short, long], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runtimes": {}}
    for runtime in runtimes:
        started = time.time()
        few, seen = count(runtime, short, args.threads)
        many, _ = count(runtime, long, args.threads)
        report["runtimes"][runtime] = {**seen, "instructions": [few, many],
                                       "instructions_per_id": round((many - few) / (long - short)),
                                       "valgrind_s": round(time.time() - started)}
    per_id = {name: r["instructions_per_id"] for name, r in report["runtimes"].items()}
    if "eager-cpu-setting" in per_id:
        report["eager_cpu_setting_over"] = {name: round(per_id["eager-cpu-setting"] / n, 2)
                                            for name, n in per_id.items() if name != "eager-cpu-setting"}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
