import pytest
import torch

from nas_mpq.data import DigitsDataModule


def test_splits_are_disjoint_stratified_and_deterministic():
    dm = DigitsDataModule(search_fraction=0.15, valid_fraction=0.15, test_fraction=0.2)
    sizes = {s: dm.split_size(s) for s in ("train", "search", "valid", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10) and sizes["train"] > 800
    images = {s: dm._splits[s].tensors[0].reshape(dm.split_size(s), -1) for s in sizes}
    rows = {s: {tuple(r.tolist()) for r in x} for s, x in images.items()}
    # a handful of the 1797 digits are pixel-for-pixel duplicates; no split shares more than those
    assert all(len(rows[a] & rows[b]) <= 3 for a in rows for b in rows if a < b)
    for s in sizes:
        counts = torch.bincount(dm._splits[s].tensors[1], minlength=10)
        assert counts.min() > 0.7 * counts.float().mean()
    again = DigitsDataModule()
    assert torch.equal(again._splits["test"].tensors[0], dm._splits["test"].tensors[0])
    train = dm._splits["train"].tensors[0]
    assert abs(float(train.mean())) < 1e-5 and float(train.std()) == pytest.approx(1.0, abs=1e-4)


def test_batches_and_epoch_shuffle():
    dm = DigitsDataModule(batch_size=50, eval_batch_size=100)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 1, 8, 8) and y.shape == (50,) and y.dtype == torch.long
    loader = dm.train_dataloader()
    first = torch.cat([b[1] for b in loader])
    assert torch.equal(first, torch.cat([b[1] for b in dm.train_dataloader()]))  # same seed, same order
    loader.sampler.set_epoch(1)
    second = torch.cat([b[1] for b in loader])
    assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)
    test = torch.cat([b[1] for b in dm.evaluation_batches("test")])
    assert torch.equal(test, dm._splits["test"].tensors[1])  # in order, the whole split
    assert len(list(dm.search_dataloader())) == -(-dm.split_size("search") // 50)


def test_bad_arguments():
    with pytest.raises(ValueError, match="search_fraction must be in"):
        DigitsDataModule(search_fraction=0.0)
    with pytest.raises(ValueError, match="leave at least 10 %"):
        DigitsDataModule(search_fraction=0.3, valid_fraction=0.3, test_fraction=0.35)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        DigitsDataModule(batch_size=0)
