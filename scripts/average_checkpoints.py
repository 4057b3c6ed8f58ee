"""Average the weights of checkpoints of one architecture (e.g. two stages of one fine-tune).

    python scripts/average_checkpoints.py A B [--weights 0.5,0.5] -o OUT

Writes OUT as `export` does (float16 weights, config, sha256); its metadata names each source
checkpoint's sha256, its weight and its own metadata, and keeps the last checkpoint's `step`
and `tokens_seen` (what provenance reports: the newest stage's length). Averaging works for
checkpoints on one training path (one fine-tuned from the other), not for unrelated models.
A broken checkpoint or mismatched shapes: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perceiver_music.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from perceiver_music.errors import UserFacingError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--weights", help="comma-separated, summing to 1 (default: equal)")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        parser.exit(2, f"error: --weights takes numbers, not {args.weights!r}\n")
    try:
        loaded = [load_checkpoint(path) for path in args.checkpoints]
    except UserFacingError as error:
        parser.exit(2, f"error: {error}\n")
    weights = weights or [1 / len(loaded)] * len(loaded)
    if len(weights) != len(loaded) or abs(sum(weights) - 1) > 1e-6:
        parser.exit(2, "error: give one weight per checkpoint, summing to 1\n")
    states = [c.model.state_dict() for c in loaded]
    shapes = {tuple((name, tuple(t.shape)) for name, t in s.items()) for s in states}
    if len(shapes) != 1:
        parser.exit(2, "error: the checkpoints' weights differ in names or shapes\n")
    averaged = {name: sum(w * s[name].float() for w, s in zip(weights, states)) for name in states[-1]}
    model = loaded[-1].model  # its config (dropout settings included) goes into OUT
    model.load_state_dict(averaged)
    last = loaded[-1].metadata
    metadata = {"step": last.get("step"), "tokens_seen": last.get("tokens_seen"),
                "averaged": [{"sha256": c.sha256, "weight": w, "metadata": c.metadata} for c, w in zip(loaded, weights)]}
    try:
        digest = save_checkpoint(model, args.out, metadata, dtype=torch.float16)
    except (UserFacingError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.out} (sha256 {digest[:16]}...) from {len(loaded)} checkpoints")


if __name__ == "__main__":
    main()
