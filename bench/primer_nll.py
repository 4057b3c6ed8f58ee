"""NLL of a checkpoint on each example primer in assets/primers/, next to a unigram model of that
very file: every id is scored with the whole excerpt before it (the primers fit the context).

usage: python bench/primer_nll.py [CHECKPOINT] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perceiver_music import tokenizer as tk  # noqa: E402
from perceiver_music.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint  # noqa: E402
from perceiver_music.evaluate import score_tokens, unigram_self_nll  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    print(f"{'primer':50s} {'ids':>6s} {'NLL':>6s} {'unigram':>7s}   ({checkpoint.sha256[:8]})")
    for path in sorted((ROOT / "assets" / "primers").glob("*.mid")):
        ids = np.asarray([tk.SOS, *tk.encode(path)])
        (scores,) = score_tokens(checkpoint.model, [ids], checkpoint.config.max_context, 8, "cpu")
        print(f"{path.name:50s} {len(ids):6d} {scores.mean():6.3f} {unigram_self_nll([ids]):7.3f}")


if __name__ == "__main__":
    main()
