"""What the LightningModules need from a datamodule: the batch contract, and a typing.Protocol
that the search checks when the trainer sets up.

Batches, from every loader, are `(inputs, targets)` or `(inputs, targets, first)`. The network
says the task: one that maps `(inputs, hidden)` to `(logits, hidden)` is a language model (targets
per position; with `first` in its batches the hidden state is carried across batches and reset
where `first` is True, without it every batch starts afresh), one that maps `inputs` to logits is
a classifier (targets are labels, and accuracy is logged besides perplexity).

`SupernetModule` needs a `SearchData` module: besides Lightning's training (and optional
validation and test) loaders, a held-out search split the choices train on and evaluation
batches. Any LightningDataModule becomes one through `nas_mpq.data.WithSearchSplit`, which
carves the search split from its training set; `LMDataModule` and `DigitsDataModule` are ones.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol


class SearchData(Protocol):
    """What the supernet search reads: training batches train the weights, search batches the
    choices (the two splits must not overlap), and evaluation batches calibrate activation
    quantizers and give a stage's reported test figures."""

    def train_dataloader(self) -> Iterable[Any]:
        """Batches of the training split (Lightning's own; shards it under data parallelism)."""

    def search_dataloader(self) -> Iterable[Any]:
        """Batches of the held-out search split; under data parallelism this process's share."""

    def evaluation_batches(self, split: str) -> Iterable[Any]:
        """The whole split ("train", "search", "valid" or "test") in a fixed order in one process,
        whatever the trainer's world size, so every process sees the same batches."""


def _methods(protocol: type) -> list[str]:
    return sorted(name for name in dir(protocol) if not name.startswith("_"))


def check_datamodule(datamodule: Any, protocol: type, needed_by: str) -> None:
    """ValueError naming every method of `protocol` that `datamodule` lacks (or the datamodule
    itself, when the trainer was given loaders instead of one)."""
    hint = ("any LightningDataModule gets them from nas_mpq.data.WithSearchSplit(datamodule, fraction=0.1), "
            "which holds out part of its training set as the search split")
    if datamodule is None:
        raise ValueError(f"{needed_by} needs a datamodule with {_methods(protocol)} "
                         f"(trainer.fit(module, datamodule=...)), not bare dataloaders; {hint}")
    missing = [name for name in _methods(protocol) if not callable(getattr(datamodule, name, None))]
    if missing:
        raise ValueError(f"{type(datamodule).__name__} has no {', '.join(f'{m}()' for m in missing)}, which "
                         f"{needed_by} needs ({protocol.__name__} in nas_mpq.lit); {hint}")
