"""Shared fixtures: a real tiny corpus prepared once per test session."""

from __future__ import annotations

import pytest
import torch

from midi_fixtures import write_tiny_corpus

# Tests run on 2 CPU cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))
torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory):
    from perceiver_music.data import prepare

    out = tmp_path_factory.mktemp("data")
    prepare([str(tiny_corpus)], out, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """A tiny random model saved as a real checkpoint: the engine's stand-in for assets/model.
    Its head is not zero, so it samples varied ids (a zero head would be uniform)."""
    from perceiver_music.checkpoint import save_checkpoint
    from perceiver_music.model import PerceiverAR, PerceiverARConfig

    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(max_context=512, num_latents=64, d_model=64, n_heads=2, cross_heads=2, n_layers=2))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    folder = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(model, folder, metadata={"step": 0, "note": "random weights for tests"})
    return folder
