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
