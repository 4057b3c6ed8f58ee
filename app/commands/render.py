"""`perceiver-music render FILE.mid -o OUT.wav`: the MIDI file as audio, through fluidsynth."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", help="a .mid/.midi file")
    parser.add_argument(
        "-o", "--output", required=True, help="the audio file to write: .wav or .flac (and .ogg/.mp3 where supported)"
    )
    parser.add_argument(
        "--soundfont",
        help="a .sf2 file (default: $PERCEIVER_MUSIC_SOUNDFONT, else FluidR3_GM if installed, else TimGM6mb)",
    )
    parser.add_argument("--sample-rate", type=int, default=44100, help="samples per second (default 44100)")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # the heavy imports below count towards the real-time factor
    from pathlib import Path

    from perceiver_music.atomic_io import ensure_output_dir
    from perceiver_music.render import audio_format, duration_seconds, preload, render, write_audio

    # A bad suffix, folder, soundfont or rate fails now, not after the render.
    audio_format(args.output)
    ensure_output_dir(Path(args.output).parent)
    # The soundfont loads (140 MB for FluidR3, in C, without the GIL) while the MIDI is read.
    soundfont = preload(args.soundfont, args.sample_rate, background=True)
    audio = render(args.midi, soundfont=soundfont, sample_rate=args.sample_rate)
    path = write_audio(args.output, audio, args.sample_rate)
    seconds = duration_seconds(audio, args.sample_rate)
    elapsed = time.perf_counter() - started
    print(f"wrote {path}: {seconds:.1f} s of audio in {elapsed:.1f} s ({seconds / elapsed:.0f}x real time)")
    return 0
