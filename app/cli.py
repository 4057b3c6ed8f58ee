"""The `perceiver-music` console script: a thin dispatcher over app.commands.*.

A UserFacingError (bad MIDI, missing soundfont, unwritable output, damaged checkpoint, ...)
prints one line and exits 2; nothing else turns into a user-visible traceback by design.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from perceiver_music import __version__

# verb -> (module under app.commands, one-line help)
COMMANDS = {
    "inspect": ("inspect", "describe a MIDI file: notes, duration, programs, tokens, what is dropped"),
    "render": ("render", "render a MIDI file to audio (wav, flac, ...) with fluidsynth"),
    "prepare": ("prepare", "turn MIDI folders or the music21 corpus into token shards for training"),
    "train": ("train", "train or fine-tune a model on prepared data (resumes a killed run)"),
    "eval": ("eval", "NLL of a checkpoint on held-out data, and NLL by context length"),
    "export": ("export", "write a checkpoint to ship: weights only, in float16"),
    "generate": ("generate", "continue one MIDI file (or start from scratch); optional audio and variations"),
    "batch": ("batch", "continue every MIDI file in a folder tree: manifest, resume, shards, parallel rendering"),
    "render-folder": ("render_folder", "render every MIDI file in a folder tree to audio, in parallel, resumable"),
}

EXIT_USER_ERROR = 2


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="perceiver-music", description="Continue MIDI with a Perceiver AR model; render it with fluidsynth."
    )
    parser.add_argument("--version", action="version", version=f"perceiver-music {__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")
    verbs.required = True
    modules = {}
    for verb, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"app.commands.{module_name}")
        sub = verbs.add_parser(verb, help=help_text, description=help_text)
        module.add_arguments(sub)
        modules[verb] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from perceiver_music.errors import UserFacingError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
