"""`nas-mpq evaluate --model FILE [--data.*]`: test perplexity (accuracy for a classifier) and
sizes of a packed model, as JSON. The data defaults to what the model file says it was evaluated
on; `--data.*` overrides its arguments, `--data.class_path` replaces it.

    nas-mpq evaluate --model runs/admm/model.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from pytorch_lightning import LightningDataModule

from nas_mpq.export import data_bytes, evaluation_data, load_quantized, read_header
from nas_mpq.metrics import split_metrics

from .base import DEFAULT_DATA


def _data_default(argv: list[str]) -> dict[str, Any]:
    """The data module the model file names (only one of nas_mpq / search_spaces, checked before
    anything is imported), so `--data.*` overrides its arguments: the default of `--data` depends
    on `--model`, which the parser cannot express, hence this look-ahead."""
    look_ahead = argparse.ArgumentParser(add_help=False)
    look_ahead.add_argument("--model")
    model = look_ahead.parse_known_args(argv)[0].model
    return evaluation_data(model, base=LightningDataModule) if model else {"class_path": DEFAULT_DATA}


def run(argv: list[str]) -> int:
    parser = ArgumentParser(prog="nas-mpq evaluate", description="test perplexity (accuracy for a classifier) "
                                                                 "and sizes of a packed model (JSON)")
    parser.add_argument("--model", type=str, required=True, help="a model.safetensors written by finalize")
    parser.add_subclass_arguments(LightningDataModule, "data", help="the data (default: what the model was trained on)")
    parser.set_defaults({"data": _data_default(argv)})
    cfg = parser.parse_args(argv)
    header = read_header(cfg.model)
    net = load_quantized(cfg.model)
    datamodule = parser.instantiate_classes(cfg).data
    r = header["plan"].size()
    result = {"model": cfg.model, **split_metrics(net, datamodule, "test"), "size_bits": r.size_bits,
              "fp32_size_bits": r.fp32_size_bits, "compression": r.compression, "avg_bits": r.avg_bits,
              "file_bytes": Path(cfg.model).stat().st_size, "data_bytes": data_bytes(cfg.model)}
    print(json.dumps(result, indent=1))
    return 0
