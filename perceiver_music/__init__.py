"""perceiver-music: continue MIDI with a Perceiver AR model, render it with fluidsynth."""

__version__ = "0.1.0"
