"""Average the weights of checkpoints of one architecture (e.g. two stages of one fine-tune).

    python scripts/average_checkpoints.py A B [--weights 0.5,0.5] -o OUT

Writes OUT as `export` does (float16 weights, config, sha256); its metadata names each source
checkpoint's sha256, its weight and its own metadata, and keeps the last checkpoint's `step` and
`tokens_seen` (what provenance reports: the newest stage's length). Averaging works for checkpoints on one
training path (one fine-tuned from the other), not for unrelated models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--weights", help="comma-separated, summing to 1 (default: equal)")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    loaded = [load_checkpoint(path) for path in args.checkpoints]
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1 / len(loaded)] * len(loaded)
    if len(weights) != len(loaded) or abs(sum(weights) - 1) > 1e-6:
        sys.exit("give one weight per checkpoint, summing to 1")
    if len({c.config.to_dict().__repr__() for c in loaded}) != 1:
        sys.exit("the checkpoints have different architectures")
    model = loaded[-1].model
    with torch.no_grad():
        states = [c.model.state_dict() for c in loaded]
        for name, tensor in model.state_dict().items():
            tensor.copy_(sum(w * s[name].float() for w, s in zip(weights, states)))
    last = loaded[-1].metadata
    metadata = {"step": last.get("step"), "tokens_seen": last.get("tokens_seen"),
                "averaged": [{"sha256": c.sha256, "weight": w, "metadata": c.metadata} for c, w in zip(loaded, weights)]}
    digest = save_checkpoint(model, args.out, metadata, dtype=torch.float16)
    print(f"wrote {args.out} (sha256 {digest[:16]}...) from {len(loaded)} checkpoints")


if __name__ == "__main__":
    main()
