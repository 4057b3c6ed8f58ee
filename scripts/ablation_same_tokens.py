"""Score several run folders on the same held-out tokens: all of them, and the "long" ones
(at least THRESHOLD ids before them in their work), each model with its own full context.
Models of different contexts are then compared on exactly the same tokens.

usage: python scripts/ablation_same_tokens.py DATA_DIR THRESHOLD RUN_DIR... [--max-tokens N]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.checkpoint import load_checkpoint  # noqa: E402
from perceiver_music.evaluate import load_eval_works, score_tokens  # noqa: E402
from perceiver_music.train import final_checkpoint  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("threshold", type=int)
parser.add_argument("runs", nargs="+")
parser.add_argument("--max-tokens", type=int, default=80000)
args = parser.parse_args()
torch.set_flush_denormal(True)
works, _ = load_eval_works(args.data, "test", args.max_tokens)
position = np.concatenate([np.arange(1, len(w)) for w in works])
long = position >= args.threshold
result = {"data": args.data, "tokens": int(position.size), "long_threshold": args.threshold,
          "long_tokens": int(long.sum()), "runs": {}}
for run in args.runs:
    model = load_checkpoint(final_checkpoint(run)).model
    nll = np.concatenate(score_tokens(model, works, model.config.max_context, 8, "cpu"))
    result["runs"][Path(run).name] = {"context": model.config.max_context, "nll": round(float(nll.mean()), 4),
                                      "nll_long": round(float(nll[long].mean()), 4)}
print(json.dumps(result))
