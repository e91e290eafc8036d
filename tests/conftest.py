"""Shared fixtures: a small real corpus folder (the head of Tiny Shakespeare) and tiny LSTM LMs."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from search_spaces.lstm_lm import LSTMLM, lstm_lm_space


@pytest.fixture(autouse=True)
def cli_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """`main()` lets exceptions through (as with --debug), so tests match them; the tests of the
    one-line error messages unset this."""
    monkeypatch.setenv("NAS_MPQ_DEBUG", "1")


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


# A pipeline config on the small corpus with tiny limits, for end-to-end runs of the CLI.
NET = {"class_path": "search_spaces.lstm_lm.LSTMLM",
       "init_args": {"embed_dim": 16, "hidden_dim": 16, "num_layers": 2, "dropout": 0.1}}
TRAINER = {"max_epochs": 2, "limit_train_batches": 5, "limit_val_batches": 2, "limit_test_batches": 2,
           "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture
def config(tmp_path, corpus_dir):
    cfg = {
        "seed_everything": 0,
        "data": {"corpus": str(corpus_dir), "max_vocab": 200, "batch_size": 8, "eval_batch_size": 4, "bptt": 12},
        "pretrain": {"trainer": TRAINER, "model": {"net": NET}},
        "search": {"trainer": TRAINER, "model": {"net": NET, "space": {"name": "lstm_lm"},
                                                 "budget": {"kind": "avg_bits", "value": 2.0},
                                                 "warmup_fraction": 0.1, "ramp_fraction": 0.2}},
        "finalize": {"trainer": TRAINER, "model": {"net": NET, "method": "admm", "rho": 0.01, "rho_growth": 1.5,
                                                   "admm_every": 2}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
