"""Wall time of the whole search against FP32 training of the same model, same data, same batch
size and the same number of epochs, both as Lightning runs of the quick LSTM config
(configs/shakespeare_lstm/quick.yaml: 2 x 128 LSTM, 2k vocabulary, batches 32 x 35; the FP32 run
as its pretrain stage, the search as its search stage, validation included in both). The search
runs once per `arch_every` asked for; the runs are interleaved round by round (FP32, then each
search), so machine noise hits them alike; then the search with its scales fitted on every 8th
batch only (refit_every 8, arch_every 1) and the post-training search (train_weights false, no
warm-up), the same epochs. Prints JSON.

    python benchmarks/search_wall.py [--epochs 1] [--limit_batches N] [--rounds 3] [--accelerator cpu|gpu]
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import yaml

from nas_mpq.data import LMDataModule
from nas_mpq.lit import TaskModule, TrainModule, SpaceConfig, SupernetModule
from nas_mpq.plan import Budget

QUICK = Path(__file__).resolve().parent.parent / "configs" / "shakespeare_lstm" / "quick.yaml"
REFIT_EVERY = 8
"""The refit_every of the search timed beside the others (and of overhead.py's supernet_refit step)."""


def build(spec: dict[str, Any], **extra: Any) -> Any:
    """The object a class_path / init_args entry names."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}), **extra)


def _factory(spec: dict[str, Any]) -> Callable:
    module, _, name = spec["class_path"].rpartition(".")
    return partial(getattr(importlib.import_module(module), name), **spec.get("init_args", {}))


def _modules(cfg: dict[str, Any], vocab: int) -> dict[str, Callable[..., TaskModule]]:
    pretrain, search = cfg["pretrain"]["model"], dict(cfg["search"]["model"])
    options = {k: v for k, v in search.items() if k not in ("net", "space", "budget", "optimizer", "arch_optimizer")}
    return {
        "fp32": lambda: TrainModule(build(pretrain["net"], vocab_size=vocab), _factory(pretrain["optimizer"])),
        "search": lambda arch_every, **more: SupernetModule(
            build(search["net"], vocab_size=vocab), SpaceConfig(**search["space"]), Budget(**search["budget"]),
            _factory(search["optimizer"]), _factory(search["arch_optimizer"]), arch_every=arch_every,
            **{**options, **more}),
    }


def _fit_seconds(module: TaskModule, trainer_cfg: dict[str, Any], data: LMDataModule, epochs: int,
                 limit_batches: int | None, accelerator: str) -> float:
    options = {k: v for k, v in trainer_cfg.items() if k not in ("max_epochs", "enable_model_summary")}
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=limit_batches or 1.0, logger=False,
                         accelerator=accelerator, devices=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, **options)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def search_wall_time(epochs: int = 1, limit_batches: int | None = None, rounds: int = 3,
                     arch_every: tuple[int, ...] = (1, 2, 4), accelerator: str = "cpu") -> dict[str, Any]:
    """Median wall seconds over `rounds` of FP32 training and of the search at each arch_every,
    and their ratios to FP32, on one device of Lightning's `accelerator` (cpu, gpu)."""
    cfg = yaml.safe_load(QUICK.read_text())
    data = LMDataModule(**cfg["data"])
    modules = _modules(cfg, data.vocab_size)  # the corpus is read and encoded here, before any timing
    seconds: dict[str, list[float]] = {"fp32": [], **{f"search_arch_every_{k}": [] for k in arch_every},
                                       f"search_refit_every_{REFIT_EVERY}": [], "search_post_training": []}
    for _ in range(rounds):
        pl.seed_everything(cfg.get("seed_everything", 0), verbose=False)
        seconds["fp32"].append(_fit_seconds(modules["fp32"](), cfg["pretrain"]["trainer"], data, epochs,
                                            limit_batches, accelerator))
        for k in arch_every:
            pl.seed_everything(cfg.get("seed_everything", 0), verbose=False)
            seconds[f"search_arch_every_{k}"].append(_fit_seconds(modules["search"](k), cfg["search"]["trainer"],
                                                                  data, epochs, limit_batches, accelerator))
        pl.seed_everything(cfg.get("seed_everything", 0), verbose=False)
        seconds[f"search_refit_every_{REFIT_EVERY}"].append(_fit_seconds(
            modules["search"](1, refit_every=REFIT_EVERY), cfg["search"]["trainer"], data, epochs, limit_batches,
            accelerator))
        pl.seed_everything(cfg.get("seed_everything", 0), verbose=False)
        post_training = modules["search"](1, train_weights=False, warmup_fraction=0.0)
        seconds["search_post_training"].append(_fit_seconds(post_training, cfg["search"]["trainer"], data, epochs,
                                                            limit_batches, accelerator))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "config": str(QUICK.relative_to(QUICK.parent.parent.parent)), "accelerator": accelerator, "epochs": epochs,
        "train_batches_per_epoch": limit_batches or len(data.train_dataloader()), "rounds": rounds,
        "wall_s": {name: [round(x, 2) for x in s] for name, s in seconds.items()},
        "ratio_to_fp32": {name: round(median[name] / median["fp32"], 3) for name in median if name != "fp32"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit_batches", type=int, default=None, help="training batches per epoch (default: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    args = ap.parse_args()
    print(json.dumps(search_wall_time(args.epochs, args.limit_batches, args.rounds, accelerator=args.accelerator),
                     indent=1))


if __name__ == "__main__":
    main()
