"""Writing files so that nothing is ever left half-written: a temp file, then os.replace.

Every output of the project (audio, MIDI, JSON sidecars, checkpoints, manifests) goes through
here, so an interrupted run leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create a folder for outputs, or say in one line why it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"cannot create output folder {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {path} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on failure it is removed.

    For writers that want a file name (soundfile, torch, safetensors) rather than bytes.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name")
    folder = ensure_output_dir(path.parent if str(path.parent) else ".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part" + path.suffix)
    except OSError as error:
        raise OutputPathError(f"cannot write in {folder}: {error.strerror or error}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        _remove_quietly(tmp)
        raise OutputPathError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """`fsync=False` for caches that can be rebuilt: still never torn, but not forced to disk."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
