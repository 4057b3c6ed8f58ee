"""Training throughput of a model on this machine: target tokens per second, float32 against
bfloat16 autocast, measured in one run with the two interleaved (so load changes hit both).

A step is what `train` does: forward with cross-attend dropout, z-loss, backward, clipping,
AdamW. Crops are random ids (speed does not depend on the music).

usage: python bench/train_throughput.py [--checkpoint assets/model] [--batch 8] [--crop 4097]
       [--steps 4] [--rounds 3] [--threads 2] [--attention-dropout P]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.cpu_precision import native_bfloat16  # noqa: E402
from perceiver_music.model import PerceiverAR  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def steps_per_s(model, optimizer, batch: torch.Tensor, steps: int, bfloat16: bool) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16 else contextlib.nullcontext()
    started = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss, _ = model.loss(batch, z_loss=1e-4)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="assets/model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=0, help="ids per crop (default: context + 1)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and precision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention-dropout", type=float, help="default: the checkpoint's")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    config = load_checkpoint(args.checkpoint).config
    if args.attention_dropout is not None:
        config = dataclasses.replace(config, attention_dropout=args.attention_dropout)
    model = PerceiverAR(config)
    model.load_state_dict(load_checkpoint(args.checkpoint).model.float().state_dict())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as train.py
    crop = args.crop or config.max_context + 1
    batch = torch.randint(3, 391, (args.batch, crop))
    targets = args.batch * min(config.num_latents, crop - 1)
    precisions = ["float32"] + (["bfloat16"] if native_bfloat16() else [])
    for precision in precisions:  # warm-up: allocator, oneDNN primitives
        steps_per_s(model, optimizer, batch, 1, precision == "bfloat16")
    rates: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(args.rounds):
        for precision in precisions:
            rates[precision].append(steps_per_s(model, optimizer, batch, args.steps, precision == "bfloat16") * targets)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "flags": cpu_flags(), "threads": args.threads,
                    "torch": torch.__version__, "native_bfloat16": native_bfloat16()},
        "checkpoint": args.checkpoint, "attention_dropout": config.attention_dropout_p, "batch": args.batch, "crop": crop, "target_tokens_per_step": targets,
        "target_tokens_per_s": {p: {"median": round(sorted(r)[len(r) // 2], 1), "runs": [round(x, 1) for x in r]}
                                for p, r in rates.items()},
    }
    if "bfloat16" in rates:
        result["bfloat16_speedup"] = round(result["target_tokens_per_s"]["bfloat16"]["median"]
                                           / result["target_tokens_per_s"]["float32"]["median"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
