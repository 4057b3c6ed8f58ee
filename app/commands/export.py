"""`perceiver-music export RUN_DIR|CHECKPOINT -o FOLDER`: a checkpoint to ship (weights only, fp16)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (its latest checkpoint) or a checkpoint folder")
    parser.add_argument("-o", "--out", required=True, help="the new checkpoint folder")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                        help="storage type of the weights (default float16: half the size, same music)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from perceiver_music.checkpoint import load_checkpoint, save_checkpoint
    from perceiver_music.train import final_checkpoint

    source = Path(args.source)
    if (source / "latest.json").exists():
        source = final_checkpoint(source)
    checkpoint = load_checkpoint(source)
    metadata = {k: v for k, v in checkpoint.metadata.items() if k in ("step", "tokens_seen", "run")}
    metadata["exported_from_sha256"] = checkpoint.sha256
    digest = save_checkpoint(checkpoint.model, args.out, metadata, dtype=getattr(torch, args.dtype))
    size = (Path(args.out) / "model.safetensors").stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.1f} MB, sha256 {digest[:16]}…) from {source}")
    return 0
