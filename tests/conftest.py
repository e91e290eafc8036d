"""Shared fixtures: a small real corpus folder (the head of Tiny Shakespeare), tiny LSTM LMs, a
check that every weight of an exported model lies on its quantization table, and a guard on host
reads of tensors; `uncompiled_fusion` runs quant.fused's one-pass functions without compiling them;
`load_benchmark` runs a script of benchmarks/ as a module."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import torch
import yaml
from safetensors import safe_open

import nas_mpq
import search_spaces
from nas_mpq.quant import fused
from nas_mpq.quant.packing import unpack_codes
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
def uncompiled_fusion(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """quant.fused's functions through fresh `_Compiled` wrappers with torch.compile returning the
    function itself (no compilation: fast); returns the shapes of the weights `mix` was called on."""
    mixed: list[torch.Size] = []

    def recording_mix(*args):
        mixed.append(args[0].shape)
        return fused._mix(*args)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(fused, "_mix_compiled", fused._Compiled(recording_mix))
    monkeypatch.setattr(fused, "_inner_compiled", fused._Compiled(fused._inner))
    return mixed


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
                                                 "warmup_fraction": 0.1, "ramp_fraction": 0.2, "plan_from": "best_val"}},
        "finalize": {"trainer": TRAINER, "model": {"net": NET, "method": "admm", "rho": 0.01, "rho_growth": 1.5,
                                                   "admm_every": 2}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_exported_model(path, capsys, test_ppl):
    """Every quantized group of the exported file holds integer codes within its bits (sign codes
    at 1 bit), and the model the file loads into scores `test_ppl`, the finalize's figure for the
    model it trained (`nas-mpq evaluate`): the file holds that model, not only codes in range.
    Returns the file's plan and the evaluation."""
    from nas_mpq.cli import main
    from nas_mpq.export import group_shape, load_quantized, read_header
    plan = read_header(path)["plan"]
    net = load_quantized(path)
    with safe_open(str(path), framework="pt") as f:
        for name, g in plan.groups.items():
            if g.bits in (0, 16, 32):
                continue
            shape = group_shape(net, g)
            codes = unpack_codes(f.get_tensor(f"{name}.codes"), g.bits, math.prod(shape)).reshape(shape)
            limit = 1 if g.bits <= 2 else 2 ** (g.bits - 1) - 1
            assert codes.abs().max() <= limit and (g.bits != 1 or (codes.abs() == 1).all()), name
    capsys.readouterr()
    assert main(["evaluate", "--model", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_ppl"] == pytest.approx(test_ppl, abs=1e-4)
    return plan, result


HOST_READS = ("tolist", "item", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
"""The Tensor methods that bring a value to the host (on an accelerator: wait for the device)."""
OWN_CODE = tuple(str(Path(m.__file__).parent) for m in (nas_mpq, search_spaces))


@contextmanager
def host_reads(fail: bool = True, calls: list[str] | None = None) -> Iterator[list[str]]:
    """Within the block, every call of a HOST_READS method made by nas_mpq or search_spaces code
    is recorded ("method at file:line (device type of the tensor read)", in `calls` or a new list,
    yielded) and, with `fail`, raises AssertionError; calls from torch and Lightning pass."""
    calls = [] if calls is None else calls
    originals = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}

    def guarded(name: str):
        method = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(OWN_CODE):
                calls.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno} ({self.device.type})")
                if fail:
                    raise AssertionError(f"host read of a tensor: {calls[-1]}")
            return method(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, guarded(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/<name>.py as a module, freshly executed."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
