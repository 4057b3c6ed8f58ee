"""`perceiver-music generate PRIMER.mid -o OUT.mid [--audio OUT.wav]`: continue one MIDI file.

Writes OUT.mid (the continuation alone) and OUT.full.mid (the primer window followed by the
continuation, the primer with its own instruments and drums). --audio renders the seam: the
last --lead-in seconds of the primer (8 by default) and then the continuation; --audio-full
FULL.wav renders the whole piece too. The continuation is as long as asked unless
--allow-end lets the model end the piece. With --variations N (2 to 4) every name gets
-1 ... -N before its suffix: OUT-1.mid, OUT-1.full.mid, OUT-1.wav, ... `--from-scratch` starts
from nothing instead of a primer (then only OUT.mid: there is no primer to prepend). The seed
is printed, so a result can be made again with --seed.

The generation options here are shared with `batch` (add_generation_arguments, request_from_args).
"""

from __future__ import annotations

import argparse
import os

CHECKPOINT_ENV = "PERCEIVER_MUSIC_CHECKPOINT"


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The controls every generating verb shares (the engine's ContinueRequest fields)."""
    from perceiver_music.engine import DEFAULT_KEY_HOLD, MAX_KEY_HOLD
    group = parser.add_argument_group("generation")
    group.add_argument("--length", type=float, default=20.0, metavar="SECONDS",
                       help="seconds of music to add (default 20)")
    group.add_argument("--length-tokens", type=int, metavar="N",
                       help="ids to add (a cap when --length is given too)")
    group.add_argument("--window", type=float, metavar="SECONDS",
                       help="continue from the last SECONDS of the primer (default: all of it)")
    group.add_argument("--temperature", type=float, default=1.0, help="0 (greedy) to 5 (default 1.0)")
    group.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest ids (default 0: off)")
    group.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    group.add_argument("--min-p", type=float, default=0.0, help="drop ids below this share of the top one (default 0)")
    group.add_argument("--key-hold", type=float, default=DEFAULT_KEY_HOLD, metavar="STRENGTH",
                       help=f"pull the notes toward the key heard so far, 0 (off) to {MAX_KEY_HOLD:g} "
                            f"(default {DEFAULT_KEY_HOLD:g})")
    group.add_argument("--allow-end", action="store_true",
                       help="let the model end the piece before the asked length (default: it never does)")
    group.add_argument("--seed", type=int, help="reproduce a result (default: a fresh random seed, printed)")
    group.add_argument("--variations", type=int, default=1, help="1 to 4 continuations, sampled as one batch")
    group.add_argument("--checkpoint", default=os.environ.get(CHECKPOINT_ENV) or None,
                       help=f"a checkpoint folder (default: ${CHECKPOINT_ENV}, else the embedded model)")
    group.add_argument("--soundfont",
                       help="a .sf2 file (default: $PERCEIVER_MUSIC_SOUNDFONT, else FluidR3_GM if installed, "
                            "else TimGM6mb)")
    group.add_argument("--sample-rate", type=int, default=44100, help="audio samples per second (default 44100)")
    group.add_argument("--device", default="auto", help="auto (default: cuda when there is one), cpu, cuda")
    group.add_argument("--cpu-runtime", choices=["auto", "onnx", "torch"], default="auto",
                       help="on a CPU: onnx (the compiled decode step, onnxruntime), torch (the eager "
                            "PyTorch step) or auto (default: onnx when onnxruntime is installed)")
    group.add_argument("--cpu-precision", choices=["auto", "float32"], default="auto",
                       help="on a CPU: auto (default: the runtime's fastest that keeps the music's NLL within "
                            "0.01 nats/id: onnx int8 weights, torch float16) or float32 (exact, slower: both "
                            "runtimes give the same greedy continuations)")


def request_from_args(args: argparse.Namespace, **overrides):
    from perceiver_music.engine import DEFAULT_LEAD_IN, ContinueRequest

    fields = dict(
        window_seconds=args.window,
        length_seconds=args.length,
        length_tokens=args.length_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        key_hold=args.key_hold,
        seed=args.seed,
        variations=args.variations,
        allow_end=args.allow_end,
        # --lead-in belongs to each verb (batch renders the whole piece unless told otherwise)
        lead_in_seconds=getattr(args, "lead_in", DEFAULT_LEAD_IN),
        soundfont=args.soundfont,
        sample_rate=args.sample_rate,
        checkpoint=args.checkpoint,
        device=args.device,
        cpu_runtime=args.cpu_runtime,
        cpu_precision=args.cpu_precision,
    )
    fields.update(overrides)
    return ContinueRequest(**fields)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("primer", nargs="?", help="a .mid/.midi file to continue")
    parser.add_argument("--from-scratch", action="store_true", help="no primer: start from nothing")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.mid",
                        help="the continuation; OUT.full.mid gets the primer window + continuation")
    parser.add_argument("--audio", metavar="OUT.wav",
                        help="also render the seam: the primer's last --lead-in seconds, then the continuation "
                             "(.wav or .flac)")
    parser.add_argument("--lead-in", type=float, default=8.0, metavar="SECONDS",
                        help="seconds of primer before the continuation in --audio (default 8)")
    parser.add_argument("--audio-full", metavar="FULL.wav",
                        help="also render the whole piece: the primer window and the continuation")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_generation_arguments(parser)


def output_names(output: str, audio: str | None, variations: int, with_full: bool,
                 audio_full: str | None = None) -> list[dict]:
    """Per variation: {"continuation": path, "full": path or None, "audio": path or None,
    "audio_full": path or None}."""
    from pathlib import Path

    def named(path: str, index: int | None, role: str = "") -> str:
        p = Path(path)
        stem = p.stem if index is None else f"{p.stem}-{index}"
        return str(p.with_name(f"{stem}{role}{p.suffix}"))

    names = []
    for index in ([None] if variations == 1 else range(1, variations + 1)):
        names.append({
            "continuation": named(output, index),
            "full": named(output, index, ".full") if with_full else None,
            "audio": named(audio, index) if audio else None,
            "audio_full": named(audio_full, index) if audio_full else None,
        })
    return names


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perceiver_music.atomic_io import ensure_output_dir, write_bytes
    from perceiver_music.data import MIDI_SUFFIXES
    from perceiver_music.engine import check_request, continue_midi
    from perceiver_music.errors import BadRequestError, OutputPathError

    if args.from_scratch and args.primer:
        raise BadRequestError("give a primer or --from-scratch, not both")
    if not args.from_scratch and not args.primer:
        raise BadRequestError("give a primer (PRIMER.mid) or --from-scratch")
    if Path(args.output).suffix.lower() not in MIDI_SUFFIXES:
        raise OutputPathError(f"{args.output}: the output must be a MIDI file (.mid)")
    ensure_output_dir(Path(args.output).parent)
    audio_format = None
    for path in (args.audio, args.audio_full):
        if path:
            from perceiver_music.render import audio_format as check_audio_format

            check_audio_format(path)
            suffix = Path(path).suffix.lower().lstrip(".")
            if suffix not in ("wav", "flac"):
                raise OutputPathError(f"{path}: the audio must be .wav or .flac")
            ensure_output_dir(Path(path).parent)
    if args.audio:
        audio_format = Path(args.audio).suffix.lower().lstrip(".")
    request = request_from_args(
        args,
        primer=None if args.from_scratch else args.primer,
        window_seconds=None if args.from_scratch else args.window,
        render_audio=bool(args.audio),
        audio_format=audio_format or "wav",
    )
    check_request(request)

    bar = _ProgressBar(disabled=args.quiet, unit="ids" if request.length_tokens is not None else "s")
    try:
        result = continue_midi(request, progress=bar)
    finally:
        bar.close()
    print(f"seed {result.seed}")
    names = output_names(args.output, args.audio, len(result.variations), with_full=not args.from_scratch,
                         audio_full=args.audio_full)
    if result.notice:
        print(result.notice)
    for variation, paths in zip(result.variations, names):
        stats = variation.stats
        write_bytes(paths["continuation"], variation.continuation_midi)
        label = f"variation {variation.index}: " if len(result.variations) > 1 else ""
        print(f"{label}wrote {paths['continuation']} (the continuation: {stats['seconds_of_music']:.1f} s, "
              f"{stats['new_notes']} notes, {stats['new_tokens']} tokens)")
        if paths["full"]:
            write_bytes(paths["full"], variation.full_midi)
            print(f"{label}wrote {paths['full']} (the primer window, then the continuation from "
                  f"{result.seam_seconds:.1f} s)")
        if paths["audio"] and variation.audio is not None:
            from perceiver_music.render import duration_seconds, write_audio

            write_audio(paths["audio"], variation.audio, variation.sample_rate)
            lead = (f"the last {variation.lead_in_seconds:.1f} s of the primer, then the continuation"
                    if variation.lead_in_seconds < result.seam_seconds else "the whole piece")
            print(f"{label}wrote {paths['audio']} ({duration_seconds(variation.audio, variation.sample_rate):.1f} s "
                  f"of audio: {lead})")
        if paths["audio_full"]:
            from perceiver_music.engine import render_full
            from perceiver_music.render import duration_seconds, write_audio

            whole = render_full(variation, soundfont=args.soundfont, sample_rate=args.sample_rate)
            write_audio(paths["audio_full"], whole, args.sample_rate)
            print(f"{label}wrote {paths['audio_full']} ({duration_seconds(whole, args.sample_rate):.1f} s of audio: "
                  f"the whole piece)")
        if variation.notice:
            print(f"{label}{variation.notice}")
    speed = result.variations[0].stats["tokens_per_s"] if result.variations else 0
    print(f"{result.elapsed_s:.1f} s in all, {speed:.0f} tokens/s")
    return 0


class _ProgressBar:
    """Engine Progress events to a tqdm bar on stderr: seconds of music, or ids with --length-tokens."""

    def __init__(self, disabled: bool, unit: str):
        self.disabled, self.unit = disabled, unit
        self.bar = None

    def __call__(self, event) -> None:
        if self.disabled or event.stage != "generating":
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            counts = "{n:.1f}/{total:.1f} " + self.unit
            self.bar = tqdm(total=event.total, desc="generating", dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| " + counts + " [{elapsed}{postfix}]")
        self.bar.n = min(event.done, event.total)
        self.bar.set_postfix_str(f"{event.tokens_per_s:.0f} tokens/s", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
