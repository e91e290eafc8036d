"""Shared fixtures: a small real corpus folder (the head of Tiny Shakespeare) and tiny LSTM LMs."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from search_spaces.lstm_lm import LSTMLM, lstm_lm_space


def shakespeare_text() -> str:
    return resources.files("nas_mpq.data").joinpath("corpora/tinyshakespeare.txt").read_text("utf-8")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/valid/test.txt cut from the first 6000 lines of Tiny Shakespeare."""
    lines = shakespeare_text().splitlines(keepends=True)
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("".join(lines[:5000]))
    (folder / "valid.txt").write_text("".join(lines[5000:5500]))
    (folder / "test.txt").write_text("".join(lines[5500:6000]))
    return folder


def tiny_lm(vocab: int = 50, dim: int = 8, layers: int = 2, tie: bool = False, seed: int = 0) -> LSTMLM:
    torch.manual_seed(seed)
    return LSTMLM(vocab, embed_dim=dim, hidden_dim=dim, num_layers=layers, dropout=0.0, tie_weights=tie)


@pytest.fixture
def space():
    return lstm_lm_space()
