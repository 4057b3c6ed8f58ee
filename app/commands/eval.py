"""`perceiver-music eval CHECKPOINT --data DATA_DIR|MIDI_FOLDER [--json]`: NLL and NLL by context."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (or a run folder: its latest checkpoint)")
    parser.add_argument("--data", required=True, help="a prepared DATA_DIR or a folder of MIDI files")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of a DATA_DIR")
    parser.add_argument("--contexts", help="comma-separated context limits (default 512, 1024, ... up to the model's)")
    parser.add_argument("--max-tokens", type=int, help="score only the first works, up to about this many tokens")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from perceiver_music.checkpoint import load_checkpoint
    from perceiver_music.evaluate import evaluate, load_eval_works
    from perceiver_music.train import final_checkpoint

    torch.set_flush_denormal(True)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    path = Path(args.checkpoint)
    if (path / "latest.json").exists():
        path = final_checkpoint(path)
    checkpoint = load_checkpoint(path, device=device)
    works, train_tokens = load_eval_works(args.data, args.split, args.max_tokens)
    contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else None
    report = evaluate(checkpoint.model, works, contexts, args.batch_size, device, train_tokens)
    result = {"checkpoint": str(checkpoint.path), "sha256": checkpoint.sha256, "data": args.data, **report.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{report.works} works, {report.tokens:,} tokens: NLL {report.nll:.4f} nats/token at full context"
          + (f" (unigram baseline {report.unigram_nll:.4f})" if report.unigram_nll is not None else ""))
    print(f"{'context':>8} {'stride':>6} {'NLL all':>9} {'tokens':>9}   NLL on tokens with >= {report.long_threshold} before")
    for row in report.by_context:
        long = f"{row.nll_long:.4f} ({row.tokens_long:,})" if row.nll_long is not None else "-"
        print(f"{row.context:>8} {row.stride:>6} {row.nll:>9.4f} {row.tokens:>9,}   {long}")
    return 0
