"""WithSearchSplit: a held-out search split carved from any LightningDataModule's training set."""
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

from nas_mpq.data import WithSearchSplit


def pairs(n):
    x = torch.arange(n)
    return TensorDataset(x, 2 * x)


def stack(items):
    return tuple(torch.stack(t) for t in zip(*items))


class Plain(pl.LightningDataModule):
    """Training loader only, as many user datamodules start."""

    def __init__(self, n=40, batch_size=4, shuffle=True):
        super().__init__()
        self.n, self.batch_size, self.shuffle, self.stages = n, batch_size, shuffle, []

    def setup(self, stage):
        self.stages.append(stage)

    def train_dataloader(self):
        return DataLoader(pairs(self.n), batch_size=self.batch_size, shuffle=self.shuffle, drop_last=True,
                          collate_fn=stack)


class WithValidation(Plain):
    def val_dataloader(self):
        return DataLoader(pairs(6), batch_size=3)


def examples(loader):
    return sorted(int(i) for x, _ in loader for i in x)


def test_the_search_split_is_held_out_and_seeded():
    dm = WithSearchSplit(Plain(n=40), fraction=0.25, seed=0)
    train, search = dm.indices("train"), dm.indices("search")
    assert len(search) == 10 and len(train) == 30 and sorted(train + search) == list(range(40))
    assert dm.indices("search") == search == sorted(search)
    assert WithSearchSplit(Plain(n=40), fraction=0.25, seed=1).indices("search") != search
    assert search != list(range(30, 40))  # a permutation, not the tail
    trained, searched = examples(dm.train_dataloader()), examples(dm.search_dataloader())
    assert len(trained) == 28 and set(trained) <= set(train)  # whole batches of 4 (drop_last)
    assert len(searched) == 8 and set(searched) <= set(search)


def test_loaders_keep_the_wrapped_loaders_settings():
    inner = Plain(n=40, batch_size=4)
    dm = WithSearchSplit(inner, fraction=0.25)
    original = inner.train_dataloader()
    for loader in (dm.train_dataloader(), dm.search_dataloader()):
        assert loader.batch_size == 4 and loader.drop_last and loader.collate_fn is original.collate_fn is stack
        assert type(loader.sampler).__name__ == "RandomSampler"
    assert type(WithSearchSplit(Plain(shuffle=False)).train_dataloader().sampler).__name__ == "SequentialSampler"
    ordered = dm.evaluation_batches("search")
    assert type(ordered.sampler).__name__ == "SequentialSampler"
    assert [int(i) for x, _ in ordered for i in x] == dm.indices("search")[:8]  # 2 whole batches (drop_last)


def test_validation_test_and_hooks_are_the_wrapped_modules_own():
    plain, validated = WithSearchSplit(Plain()), WithSearchSplit(WithValidation())
    assert not is_overridden("val_dataloader", plain) and is_overridden("val_dataloader", validated)
    assert not is_overridden("transfer_batch_to_device", plain)
    assert [int(i) for x, _ in validated.evaluation_batches("valid") for i in x] == list(range(6))
    with pytest.raises(ValueError, match=r"unknown split 'dev'; valid: \['train', 'search', 'valid', 'test'\]"):
        plain.evaluation_batches("dev")
    plain.trainer = SimpleNamespace(world_size=1)
    plain.setup("fit")
    assert plain.datamodule.stages == ["fit"] and plain.datamodule.trainer is plain.trainer


def test_each_process_reads_its_own_share_of_the_search_split():
    shares = []
    for rank in range(2):
        dm = WithSearchSplit(Plain(n=40, batch_size=1), fraction=0.5)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
        shares.append(examples(dm.search_dataloader()))
        assert len(examples(dm.evaluation_batches("search"))) == 20  # evaluation: the whole split
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == dm.indices("search")


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(10))


class OwnLoader(Plain):
    def __init__(self, loader):
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader


def test_what_cannot_be_carved_is_refused_naming_why():
    with pytest.raises(ValueError, match=r"fraction .* must be in \(0, 1\), got 1.0"):
        WithSearchSplit(Plain(), fraction=1.0)
    with pytest.raises(ValueError, match="leaves 0 for the search and 3 for training"):
        WithSearchSplit(Plain(n=3), fraction=0.1).search_dataloader()
    with pytest.raises(ValueError, match=r"\(Stream\) is not indexable with a length.*search_dataloader\(\)"):
        WithSearchSplit(OwnLoader(DataLoader(Stream()))).train_dataloader()
    weighted = DataLoader(pairs(10), sampler=WeightedRandomSampler([1.0] * 10, 10))
    with pytest.raises(ValueError, match=r"uses its own sampler \(WeightedRandomSampler"):
        WithSearchSplit(OwnLoader(weighted)).train_dataloader()
    with pytest.raises(ValueError, match="gives a dict; WithSearchSplit carves the search split from one"):
        WithSearchSplit(OwnLoader({"a": DataLoader(pairs(10))})).train_dataloader()
