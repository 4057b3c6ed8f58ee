"""`perceiver-music train --config CONFIG.toml --data DATA_DIR --out RUN_DIR [--init CHECKPOINT]`.

Re-running with the same --out resumes from its last complete checkpoint (after a crash or a
kill -9). Several GPUs or processes: `torchrun --nproc_per_node N -m app.cli train ...`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML with [model], [train], [augment] tables (all keys optional)")
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="a folder made by `prepare`")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints and metrics; resumed if present")
    parser.add_argument("--init", metavar="CHECKPOINT", help="fine-tune: start from this checkpoint's weights")
    parser.add_argument("--steps", type=int, help="override [train] steps")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override one setting, e.g. --set model.attention='\"linear\"' or --set train.lr=3e-4")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from perceiver_music.train import load_run_config, train

    config = load_run_config(args.config, overrides=args.set)
    if args.steps is not None:
        config.train.steps = args.steps
    summary = train(config, args.data, args.out, init=args.init, device=args.device,
                    max_minutes=args.max_minutes, progress=not args.quiet)
    best = summary["best_val_nll"]
    best_text = f", best val NLL {best:.4f}" if best is not None else ""
    verb = "stopped at" if summary["stopped_early"] else "finished"
    print(f"{verb} step {summary['step']}/{summary['steps']}, {summary['tokens_seen']:,} target tokens{best_text}; "
          f"checkpoints in {summary['out']}")
    return 0
