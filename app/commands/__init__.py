"""One module per CLI verb. Each has `add_arguments(parser)` and `run(args) -> int`.

Modules import only argparse-level things at the top; heavy imports (torch, note_seq,
fluidsynth) happen inside `run`, so `perceiver-music --help` starts fast.
"""
