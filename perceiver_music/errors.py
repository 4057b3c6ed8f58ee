"""Errors a person can act on. Each has a one-line message; front ends show it, never a traceback.

The CLI prints `error: <message>` and exits 2 for any `UserFacingError`.
"""


class UserFacingError(Exception):
    """Base class: something wrong with the input or the set-up, not a bug."""

    def __init__(self, message: str):
        # One line, always: messages end up in a status bar or a terminal line.
        super().__init__(" ".join(str(message).split()))


class BadMidiError(UserFacingError):
    """The MIDI input cannot be used: unreadable, empty, absurd or too large."""


class OutputPathError(UserFacingError):
    """An output file or folder cannot be written."""


class SoundfontError(UserFacingError):
    """The soundfont is missing or unreadable."""


class FluidsynthMissingError(UserFacingError):
    """libfluidsynth (the C library behind pyfluidsynth) is not installed."""


class CheckpointError(UserFacingError):
    """A model checkpoint is missing, damaged or does not match its config."""


class BadRequestError(UserFacingError):
    """A request's settings are out of range (length, temperature, variations, ...)."""


class DataError(UserFacingError):
    """A training data folder is missing or not in the expected layout."""
