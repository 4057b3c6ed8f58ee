"""scripts/average_checkpoints.py: the mean of two checkpoints' weights, with its provenance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_fixtures import randomize_weights
from perceiver_music.checkpoint import load_checkpoint, save_checkpoint
from perceiver_music.model import PerceiverAR, PerceiverARConfig

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "average_checkpoints.py"
SMALL = dict(max_context=64, num_latents=16, d_model=32, n_heads=2, cross_heads=2, n_layers=1)


def _checkpoint(folder: Path, seed: int, step: int, **config) -> Path:
    torch.manual_seed(seed)
    model = randomize_weights(PerceiverAR(PerceiverARConfig(**{**SMALL, **config})))
    save_checkpoint(model, folder, {"step": step, "tokens_seen": step * 10}, dtype=torch.float16)
    return folder


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_the_average_is_the_weighted_mean_and_names_its_sources(tmp_path):
    a, b = _checkpoint(tmp_path / "a", 0, 100), _checkpoint(tmp_path / "b", 1, 250)
    done = _run(a, b, "--weights", "0.25,0.75", "-o", tmp_path / "mean")
    assert done.returncode == 0, done.stderr
    mean, ca, cb = (load_checkpoint(p) for p in (tmp_path / "mean", a, b))
    for name, tensor in mean.model.state_dict().items():
        expected = (0.25 * ca.model.state_dict()[name] + 0.75 * cb.model.state_dict()[name]).half().float()
        assert torch.equal(tensor, expected), name
    assert mean.metadata["step"] == 250 and mean.metadata["tokens_seen"] == 2500
    assert [s["sha256"] for s in mean.metadata["averaged"]] == [ca.sha256, cb.sha256]
    assert [s["weight"] for s in mean.metadata["averaged"]] == [0.25, 0.75]


@pytest.mark.parametrize("problem", ["other shapes", "weights", "damaged"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, problem):
    a = _checkpoint(tmp_path / "a", 0, 100)
    b = _checkpoint(tmp_path / "b", 1, 100, d_model=64 if problem == "other shapes" else 32)
    extra = ["--weights", "0.5,0.6"] if problem == "weights" else []
    if problem == "damaged":
        (b / "model.safetensors").write_bytes(b"not weights")
    done = _run(a, b, *extra, "-o", tmp_path / "mean")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") <= 1
    assert not (tmp_path / "mean").exists()
