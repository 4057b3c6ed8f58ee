"""`perceiver-music eval CHECKPOINT --data DATA_DIR|MIDI_FOLDER [--by-source] [--baseline OLD] [--json]`:
NLL and NLL by context, by corpus, next to unigram models and another checkpoint on the same tokens."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (or a run folder: its latest checkpoint)")
    parser.add_argument("--data", required=True, help="a prepared DATA_DIR or a folder of MIDI files")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of a DATA_DIR")
    parser.add_argument("--contexts", help="comma-separated context limits (default 512, 1024, ... up to the model's)")
    parser.add_argument("--sources", help="comma-separated corpora of a DATA_DIR to score (default: all)")
    parser.add_argument("--by-source", action="store_true",
                        help="a report per corpus (a DATA_DIR's sources, or a folder's subfolders) and for all together")
    parser.add_argument("--max-tokens", type=int,
                        help="score only the first works, up to about this many tokens (per corpus with --by-source)")
    parser.add_argument("--baseline", metavar="CHECKPOINT", help="also score this checkpoint on the same tokens")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _load(path_text: str, device: str):
    from pathlib import Path

    from perceiver_music.checkpoint import load_checkpoint
    from perceiver_music.train import final_checkpoint

    path = Path(path_text)
    if (path / "latest.json").exists():
        path = final_checkpoint(path)
    return load_checkpoint(path, device=device)


def run(args: argparse.Namespace) -> int:
    import torch

    from perceiver_music.evaluate import evaluate_by_source, load_eval_works_by_source

    torch.set_flush_denormal(True)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    checkpoints = [_load(args.checkpoint, device)] + ([_load(args.baseline, device)] if args.baseline else [])
    only = set(args.sources.split(",")) if args.sources else None
    works, sources, train_tokens = load_eval_works_by_source(args.data, args.split, args.max_tokens, args.by_source, only)
    contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else None
    results = []
    for checkpoint in checkpoints:
        reports = evaluate_by_source(checkpoint.model, works, sources if args.by_source else None, contexts,
                                     args.batch_size, device, train_tokens)
        results.append({"checkpoint": str(checkpoint.path), "sha256": checkpoint.sha256,
                        "reports": {name: report.to_dict() for name, report in reports.items()}})
    result = {"data": args.data, "split": args.split, **results[0], **results[0]["reports"]["all"]}
    if args.baseline:
        result["baseline"] = results[1]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for i, entry in enumerate(results):
        print(("baseline " if i else "") + f"{entry['checkpoint']} (sha256 {entry['sha256'][:8]})")
        for name, report in entry["reports"].items():
            _print_report(name, report)
    return 0


def _print_report(name: str, report: dict) -> None:
    unigrams = []
    if report["unigram_self_nll"] is not None:
        unigrams.append(f"unigram of these tokens {report['unigram_self_nll']:.4f}")
    if report["unigram_nll"] is not None:
        unigrams.append(f"unigram of the training split {report['unigram_nll']:.4f}")
    print(f"[{name}] {report['works']} works, {report['tokens']:,} tokens: NLL {report['nll']:.4f} nats/token at "
          f"full context" + (f" ({'; '.join(unigrams)})" if unigrams else ""))
    print(f"{'context':>8} {'stride':>6} {'NLL all':>9} {'tokens':>9}   NLL on tokens with >= {report['long_threshold']} before")
    for row in report["by_context"]:
        long = f"{row['nll_long']:.4f} ({row['tokens_long']:,})" if row["nll_long"] is not None else "-"
        print(f"{row['context']:>8} {row['stride']:>6} {row['nll']:>9.4f} {row['tokens']:>9,}   {long}")
