"""Checkpoints: safetensors weights, a JSON config, a sha256 — never a pickle.

A checkpoint is a folder:
  model.safetensors   the weights
  config.json         {"model": PerceiverARConfig fields, "metadata": {...}}
  model.sha256        "<hex>  model.safetensors", checked on every load
A path to the folder or to its model.safetensors both work. `ModelCache` is the explicit,
lock-protected cache the front ends share, so no module-level global holds a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic_io import atomic_path, ensure_output_dir, write_json, write_text
from .errors import CheckpointError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DIGEST = "model.sha256"

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS_DIR / "model"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Checkpoint:
    model: Any  # PerceiverAR, in eval mode
    path: Path  # the checkpoint folder
    sha256: str
    metadata: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


def save_checkpoint(model, folder: str | os.PathLike, metadata: dict | None = None, dtype=None) -> str:
    """Write the three files (each atomically); returns the weights' sha256.

    `dtype` (e.g. torch.float16) stores floating weights smaller for shipping; loading casts
    them back to the model's float32. The digest is written last: a folder whose digest is
    missing or stale is incomplete.
    """
    from safetensors.torch import save_file

    folder = ensure_output_dir(folder)
    module = getattr(model, "module", model)  # unwrap DDP
    state = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous()
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(folder / CONFIG, {"model": module.config.to_dict(), "metadata": metadata or {}})
    digest = sha256_of(folder / WEIGHTS)
    write_text(folder / DIGEST, f"{digest}  {WEIGHTS}\n")
    return digest


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS:
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected {WEIGHTS}, {CONFIG}, {DIGEST})")
    for name in (WEIGHTS, CONFIG, DIGEST):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    return path


def read_config(path: str | os.PathLike) -> dict:
    folder = _resolve(path)
    try:
        data = json.loads((folder / CONFIG).read_text())
        data["model"]  # noqa: B018 - must be there
        return data
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} is damaged") from None


def load_checkpoint(path: str | os.PathLike = DEFAULT_CHECKPOINT, device: str = "cpu", verify: bool = True) -> Checkpoint:
    """Load and check a checkpoint; every way it can be broken is a one-line CheckpointError."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import PerceiverAR, PerceiverARConfig

    folder = _resolve(path)
    data = read_config(folder)
    expected = (folder / DIGEST).read_text().split()[0] if (folder / DIGEST).read_text().strip() else ""
    actual = sha256_of(folder / WEIGHTS)
    if verify and actual != expected:
        raise CheckpointError(
            f"checkpoint {folder} is damaged: {WEIGHTS} has sha256 {actual[:12]}…, "
            f"its {DIGEST} says {expected[:12]}…"
        )
    try:
        config = PerceiverARConfig.from_dict(data["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {folder}: the model config is not valid ({error})") from None
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {folder}: {WEIGHTS} cannot be read ({error})") from None
    model = PerceiverAR(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint {folder}: weights do not match its config ({first})") from None
    model.to(torch.device(device)).eval()
    # The weights' identity for caches of compiled forms (decode_onnx): the file's sha256, valid
    # while the parameters are not changed in place (their version counters say so).
    model.checkpoint_sha256 = (actual, tuple(p._version for p in model.parameters()))
    return Checkpoint(model=model, path=folder, sha256=actual, metadata=data.get("metadata", {}))


class ModelCache:
    """Loaded checkpoints by (folder, device), shared by the threads of a front end."""

    def __init__(self, max_models: int = 2):
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], Checkpoint] = {}
        self._max = max_models

    def get(self, path: str | os.PathLike = DEFAULT_CHECKPOINT, device: str = "cpu") -> Checkpoint:
        folder = _resolve(path)
        key = (str(folder.resolve()), device)
        with self._lock:
            if key not in self._models:
                if len(self._models) >= self._max:
                    self._models.pop(next(iter(self._models)))
                self._models[key] = load_checkpoint(folder, device)
            return self._models[key]
