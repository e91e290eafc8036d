"""Any LightningDataModule with a held-out search split carved from its training set.

The supernet search trains the weights on training batches and the bit-width choices on batches
the weights never see. A plain LightningDataModule has no such split; `WithSearchSplit` makes one:
a seeded permutation of the training dataset sends `fraction` of its examples to the search
split and keeps the rest for training. Both loaders keep the wrapped training loader's batch
size, collate function, workers and shuffling; validation, test, the batch-transfer hooks and
the data state are the wrapped module's own. The training dataset must be map-style (indexable,
with a length) behind one DataLoader with a plain sequential or random sampler.
"""
from __future__ import annotations

from typing import Any, Iterable

import pytorch_lightning as pl
import torch
from torch.utils.data import (DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler,
                              Subset)

CARVED = ("train", "search")
DELEGATED = ("val_dataloader", "test_dataloader", "predict_dataloader", "on_before_batch_transfer",
             "transfer_batch_to_device", "on_after_batch_transfer", "prepare_data", "teardown",
             "state_dict", "load_state_dict")
"""Taken from the wrapped module as they are, so Lightning sees which of them it defines."""


class WithSearchSplit(pl.LightningDataModule):
    """`datamodule` with `fraction` of its training examples (chosen by `seed`) held out as the
    search split: a `nas_mpq.lit.SearchData` for SupernetModule.

    Example:
        >>> data = WithSearchSplit(MyDataModule(), fraction=0.1, seed=0)
        >>> pl.Trainer(max_epochs=5).fit(SupernetModule(net, budget=Budget("avg_bits", 2.0)), datamodule=data)
        >>> held_out = data.indices("search")    # indices into MyDataModule's training dataset
    """

    def __init__(self, datamodule: pl.LightningDataModule, fraction: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction (of the training set held out for the search) must be in (0, 1), "
                             f"got {fraction}")
        self.datamodule, self.fraction, self.seed = datamodule, fraction, seed
        self.prepare_data_per_node = datamodule.prepare_data_per_node
        for name in DELEGATED:
            setattr(self, name, getattr(datamodule, name))

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    def indices(self, split: str) -> list[int]:
        """Indices into the wrapped training dataset of "train" or "search", in dataset order."""
        return self._indices(len(self._training_loader().dataset), split)

    def _indices(self, n: int, split: str) -> list[int]:
        n_search = round(self.fraction * n)
        if not 0 < n_search < n:
            raise ValueError(f"a fraction of {self.fraction} of {n} training examples leaves "
                             f"{n_search} for the search and {n - n_search} for training; both need some")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return sorted(order[:n_search] if split == "search" else order[n_search:])

    def train_dataloader(self) -> DataLoader:
        return self._carved("train", sharded=False)  # Lightning shards it under data parallelism

    def search_dataloader(self) -> DataLoader:
        """Batches of the held-out search split; under data parallelism this process's share."""
        return self._carved("search", sharded=True)

    def evaluation_batches(self, split: str = "test") -> Iterable[Any]:
        """The whole split in one process, in a fixed order: "train" and "search" as carved,
        "valid" and "test" the wrapped module's validation and test loaders."""
        if split in CARVED:
            return self._carved(split, sharded=False, shuffle=False)
        loaders = {"valid": self.datamodule.val_dataloader, "test": self.datamodule.test_dataloader}
        if split not in loaders:
            raise ValueError(f"unknown split {split!r}; valid: {[*CARVED, *loaders]}")
        return loaders[split]()

    def _training_loader(self) -> DataLoader:
        loader = self.datamodule.train_dataloader()
        name = type(self.datamodule).__name__
        if not isinstance(loader, DataLoader):
            raise ValueError(f"{name}.train_dataloader() gives a {type(loader).__name__}; WithSearchSplit "
                             "carves the search split from one torch DataLoader")
        if isinstance(loader.dataset, IterableDataset) or not hasattr(loader.dataset, "__len__"):
            raise ValueError(f"{name}'s training set ({type(loader.dataset).__name__}) is not indexable with a "
                             "length, so no search split can be carved from it; give the datamodule a "
                             "search_dataloader() and evaluation_batches() of its own (nas_mpq.lit.SearchData)")
        own_batches = loader.batch_sampler is not None and loader.batch_size is None
        if own_batches or not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
            raise ValueError(f"{name}.train_dataloader() uses its own sampler ({type(loader.sampler).__name__}"
                             f", {type(loader.batch_sampler).__name__}); WithSearchSplit can only rebuild a "
                             "DataLoader made with batch_size and shuffle")
        return loader

    def _carved(self, split: str, sharded: bool, shuffle: bool | None = None) -> DataLoader:
        loader = self._training_loader()
        data = Subset(loader.dataset, self._indices(len(loader.dataset), split))
        shuffle = isinstance(loader.sampler, RandomSampler) if shuffle is None else shuffle
        sampler = None
        trainer = self.trainer
        if sharded and trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(data, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                         shuffle=shuffle, seed=self.seed)
            sampler.set_epoch(trainer.current_epoch)
            shuffle = False
        workers = loader.num_workers
        return DataLoader(data, batch_size=loader.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          drop_last=loader.drop_last, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                          multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
                          persistent_workers=loader.persistent_workers and workers > 0,
                          prefetch_factor=loader.prefetch_factor if workers > 0 else None)
