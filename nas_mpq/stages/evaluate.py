"""`nas-mpq evaluate --model FILE [--data.*]`: test perplexity (accuracy for a classifier) and
sizes of a packed model, as JSON. The data defaults to what the model file says it was evaluated
on; `--data.*` overrides its arguments, `--data.class_path` replaces it. A model file may name
classes of nas_mpq and search_spaces only; `--allow PACKAGE` (repeatable) trusts one more top-level
package, e.g. the one that defines your own network.

    nas-mpq evaluate --model runs/admm/model.safetensors
    nas-mpq evaluate --model my_run/model.safetensors --allow my_models
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from pytorch_lightning import LightningDataModule

from nas_mpq.allowlist import TRUSTED_PACKAGES
from nas_mpq.export import data_bytes, evaluation_data, load_quantized, read_header
from nas_mpq.metrics import split_metrics

from .base import DEFAULT_DATA


def _data_default(argv: list[str]) -> dict[str, Any]:
    """The data module the model file names (only one of the allowed packages, checked before
    anything is imported), so `--data.*` overrides its arguments: the default of `--data` depends
    on `--model`, which the parser cannot express, hence this look-ahead."""
    look_ahead = argparse.ArgumentParser(add_help=False)
    look_ahead.add_argument("--model")
    look_ahead.add_argument("--allow", action="append", default=[])
    known = look_ahead.parse_known_args(argv)[0]
    if not known.model:
        return {"class_path": DEFAULT_DATA}
    return evaluation_data(known.model, allowed=_allowed(known.allow), base=LightningDataModule)


def _allowed(extra: list[str]) -> list[str]:
    """The trusted packages plus the top-level packages named by --allow."""
    for name in extra:
        if not name.isidentifier():
            raise ValueError(f"--allow takes a top-level package name (e.g. my_models), got {name!r}")
    return [*TRUSTED_PACKAGES, *extra]


def run(argv: list[str]) -> int:
    parser = ArgumentParser(prog="nas-mpq evaluate", description="test perplexity (accuracy for a classifier) "
                                                                 "and sizes of a packed model (JSON)")
    parser.add_argument("--model", type=str, required=True, help="a model.safetensors written by finalize")
    parser.add_argument("--allow", type=str, action="append", default=[],
                        help="a top-level package the model file may also name classes of (repeatable)")
    parser.add_subclass_arguments(LightningDataModule, "data", help="the data (default: what the model was trained on)")
    parser.set_defaults({"data": _data_default(argv)})
    cfg = parser.parse_args(argv)
    header = read_header(cfg.model)
    net = load_quantized(cfg.model, allowed=_allowed(cfg.allow))
    datamodule = parser.instantiate_classes(cfg).data
    r = header["plan"].size()
    result = {"model": cfg.model, **split_metrics(net, datamodule, "test"), "size_bits": r.size_bits,
              "fp32_size_bits": r.fp32_size_bits, "compression": r.compression, "avg_bits": r.avg_bits,
              "file_bytes": Path(cfg.model).stat().st_size, "data_bytes": data_bytes(cfg.model)}
    print(json.dumps(result, indent=1))
    return 0
