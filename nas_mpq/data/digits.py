"""LightningDataModule for the 8 x 8 handwritten digits that ship with scikit-learn
(sklearn.datasets.load_digits: 1797 images, 10 classes; nothing to download).

A seeded stratified permutation cuts the images into train / search / valid / test; the search
split is what the supernet's choices are trained on, valid and test are only for reporting.
Batches are (images (B, 1, 8, 8), labels (B,)), pixels scaled to [0, 1] and standardised with the
training split's mean and std. Under data parallelism each process reads every world_size-th
training (and search) image, so the CLI's use_distributed_sampler=False holds here too.

Example:
    >>> dm = DigitsDataModule(batch_size=64)
    >>> images, labels = next(iter(dm.train_dataloader()))
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

SPLITS = ("train", "search", "valid", "test")


class EpochShuffle(Sampler[int]):
    """A permutation that depends on (seed, epoch) only (Lightning calls set_epoch), so a resumed
    run sees the same batches as one that ran straight through."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DigitsDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 64, eval_batch_size: int = 256, search_fraction: float = 0.15,
                 valid_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        fractions = {"search_fraction": search_fraction, "valid_fraction": valid_fraction,
                     "test_fraction": test_fraction}
        for name, v in fractions.items():
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if sum(fractions.values()) >= 0.9:
            raise ValueError(f"search, valid and test fractions sum to {sum(fractions.values()):.2f}; "
                             "leave at least 10 % of the images for training")
        for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if v < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.fractions = (search_fraction, valid_fraction, test_fraction)
        self.num_classes, self.image_size = 10, 8

    @cached_property
    def _splits(self) -> dict[str, TensorDataset]:
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        rng = np.random.default_rng(self.seed)
        parts: dict[str, list[int]] = {s: [] for s in SPLITS}
        for c in range(self.num_classes):  # stratified: every split has every class in proportion
            idx = rng.permutation(np.flatnonzero(digits.target == c))
            cuts = np.cumsum([round(f * len(idx)) for f in self.fractions])
            for split, chunk in zip(("search", "valid", "test", "train"), np.split(idx, cuts)):
                parts[split] += chunk.tolist()
        mean, std = images[parts["train"]].mean(), images[parts["train"]].std()
        images = (images - mean) / std
        return {s: TensorDataset(images[sorted(i)], labels[sorted(i)]) for s, i in parts.items()}

    def split_size(self, split: str) -> int:
        return len(self._splits[split])

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = self._splits[split]
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and split in ("train", "search"):
            idx = list(range(trainer.global_rank, len(data), trainer.world_size))
            data = TensorDataset(*(t[idx] for t in data.tensors))
        sampler = EpochShuffle(len(data), self.seed) if shuffle else None
        return DataLoader(data, batch_size=batch_size, sampler=sampler)

    def evaluation_batches(self, split: str = "test") -> DataLoader:
        """The whole split in one process: what a reported test figure is computed on."""
        return self._loader(split, self.eval_batch_size, False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, True)

    def search_dataloader(self) -> DataLoader:
        """Batches of the held-out search split, for the architecture step."""
        return self._loader("search", self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)
