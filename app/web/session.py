"""Per-session state of the web app: the current primer, an undo stack, a Stop switch, a folder.

Plain Python, no Gradio: a `SessionStore` maps Gradio's session hash (one per browser tab or
API client) to a `Session`. Each session writes under its own folder `<output root>/<id>/`,
named by a random id of its own (never the session hash), and the engine adds a folder per
request inside it, so two people or two clicks never share a file.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_music.atomic_io import ensure_output_dir, write_bytes

HISTORY_SIZE = 16  # primers kept for undo
MAX_SESSIONS = 1000  # oldest sessions are forgotten beyond this (their files stay on disk)


@dataclass(frozen=True)
class Primer:
    path: Path | None = field(compare=False)  # a file in the session folder; None: start from silence
    name: str  # what the person called it (shown in the page and in provenance)
    sha256: str | None = None  # two primers with the same name and bytes are the same primer

    @classmethod
    def of_file(cls, path: Path, name: str | None = None) -> "Primer":
        path = Path(path)
        return cls(path, name or path.name, hashlib.sha256(path.read_bytes()).hexdigest())


NO_PRIMER = Primer(None, "(none)")


@dataclass
class Session:
    root: Path  # this session's output folder (created on first write)
    primer: Primer = NO_PRIMER
    history: list[Primer] = field(default_factory=list)
    variations: dict[int, Path] = field(default_factory=dict)  # index -> full MIDI of the last result
    previews: OrderedDict = field(default_factory=OrderedDict)  # window key -> (audio, roll) files
    preview_whole: bool = False  # the primer player plays the whole window, not its last 30 s
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def folder(self, *parts: str) -> Path:
        return ensure_output_dir(self.root.joinpath(*parts))

    def keep_primer(self, data: bytes, name: str) -> Path:
        """A private copy of a primer's bytes (uploads in Gradio's cache may be cleaned), under
        its own name in a folder of its own."""
        safe = "".join(c if c.isalnum() or c in "-_. " else "_" for c in Path(name).name).strip()[-80:]
        return write_bytes(self.folder("primers", uuid.uuid4().hex[:8]) / (safe or "primer.mid"), data)

    def set_primer(self, primer: Primer) -> None:
        """Make `primer` current; the one it replaces can be brought back with `undo`.
        Choosing the current primer again changes nothing."""
        with self.lock:
            if primer == self.primer:
                return
            self.history.append(self.primer)
            del self.history[:-HISTORY_SIZE]
            self.primer = primer

    def undo(self) -> Primer | None:
        """Back to the previous primer, or None when there is nothing to undo."""
        with self.lock:
            if not self.history:
                return None
            self.primer = self.history.pop()
            return self.primer

    def new_cancel(self) -> threading.Event:
        """A fresh Stop switch for the generation that starts now."""
        with self.lock:
            self.cancel = threading.Event()
            return self.cancel


class SessionStore:
    """Sessions by Gradio session hash, created on first use, under one output root."""

    def __init__(self, output_root: str | Path):
        self.root = Path(output_root)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_hash: str | None) -> Session:
        key = session_hash or "anonymous"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = Session(self.root / uuid.uuid4().hex[:12])
                self._sessions[key] = session
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(key)
            return session

    def stop(self, session_hash: str | None) -> None:
        """The tab was closed: stop its generation. The session itself is kept (a tab that
        reconnects finds its primer again); the oldest are forgotten beyond MAX_SESSIONS."""
        with self._lock:
            session = self._sessions.get(session_hash or "anonymous")
        if session is not None:
            session.cancel.set()

    def __len__(self) -> int:
        return len(self._sessions)


def copy_into(session: Session, source: Path, name: str) -> Primer:
    """A primer from a file on disk (an upload, an example), copied into the session folder
    (unless it is the current primer again)."""
    data = Path(source).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if session.primer.sha256 == digest and session.primer.name == name:
        return session.primer
    return Primer(session.keep_primer(data, name), name, digest)

