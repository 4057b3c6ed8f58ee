"""What the Python around the compiled CPU step costs: each piece of the sampling loop timed right
after a real decode step (issue 13), as generate() runs it.

A decode step reads about 35 MB (weights and caches), so what runs after it starts with cold
caches; timed in a loop of its own, the same torch op looks ten times cheaper than it is in
generation. This times, after each of `--steps` onnx int8 steps of the default model at a
4,096-id window, one of: nothing, generate's sampler (`sample_next`, without and with top-p
0.95), one `torch.rand` draw, one torch multiply of the logits, and a numpy inverse-CDF draw
(softmax, cumsum, searchsorted); the same pieces back to back with no step between; and
the step itself. Medians in microseconds, as JSON.

usage: python bench/after_step.py [--threads 2] [--steps 120] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.decode_onnx import OnnxDecoder  # noqa: E402
from perceiver_music.engine import load_model  # noqa: E402
from perceiver_music.generate import default_reset_latents, sample_next  # noqa: E402
from perceiver_music.tokenizer import NOTE_ON_BASE, VOCAB_SIZE  # noqa: E402


def numpy_draw(logits: torch.Tensor, u: float) -> int:
    x = logits.numpy().astype(np.float64)
    cdf = np.cumsum(np.exp(x - x.max(axis=1, keepdims=True)), axis=1)
    return int(np.searchsorted(cdf[0], u * cdf[0, -1], side="right"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_model(None)
    model = checkpoint.model
    decoder = OnnxDecoder(model, 1, precision="int8")
    window = torch.randint(NOTE_ON_BASE, VOCAB_SIZE, (1, model.config.max_context))
    R = default_reset_latents(model.config.num_latents)
    generator = torch.Generator().manual_seed(0)
    token = torch.tensor([NOTE_ON_BASE + 60])
    pieces = {
        "nothing": lambda logits: None,
        "sample_next": lambda logits: sample_next(logits, generator=generator),
        "sample_next_top_p_0.95": lambda logits: sample_next(logits, top_p=0.95, generator=generator),
        "torch_rand": lambda logits: torch.rand(1, generator=generator),
        "torch_multiply": lambda logits: logits * 2.0,
        "numpy_draw": lambda logits: numpy_draw(logits, 0.5),
    }
    after_step_us = {}
    with torch.inference_mode():
        for name, piece in pieces.items():
            times = []
            for i in range(args.steps):
                if i % (model.config.num_latents - R) == 0:
                    decoder.reset(window, R)
                logits = decoder.step(token, window)
                t0 = time.perf_counter()
                piece(logits)
                times.append(time.perf_counter() - t0)
            after_step_us[name] = round(float(np.median(times)) * 1e6, 1)
        alone_us = {}  # the same pieces back to back, no step between: warm caches
        for name, piece in pieces.items():
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                piece(logits)
                times.append(time.perf_counter() - t0)
            alone_us[name] = round(float(np.median(times)) * 1e6, 1)
        step = []
        for i in range(args.steps):
            if i % (model.config.num_latents - R) == 0:
                decoder.reset(window, R)
            t0 = time.perf_counter()
            decoder.step(token, window)
            step.append(time.perf_counter() - t0)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "model_sha256": checkpoint.sha256,
        "after_step_median_us": after_step_us,
        "alone_median_us": alone_us,
        "step_median_ms": round(float(np.median(step)) * 1e3, 3),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
