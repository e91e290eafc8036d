"""SupernetModule in a user's own pl.Trainer on a user's own LightningDataModule: the data
contract is checked at set-up, WithSearchSplit supplies the search split, and search batches reach
the device through the batch-transfer hooks like training batches."""
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import tiny_lm
from nas_mpq.data import DigitsDataModule, LMDataModule, WithSearchSplit
from nas_mpq.lit import SearchData, SpaceConfig, SupernetModule, check_datamodule
from nas_mpq.plan import Budget
from nas_mpq.search import search_groups
from search_spaces.cnn import ResNetCNN

VOCAB = 50


class RandomTokens(pl.LightningDataModule):
    """A plain LightningDataModule, nothing of nas-mpq: random token sequences, batches of
    (tokens, next tokens)."""

    def __init__(self, sequences: int = 96, length: int = 12) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, VOCAB, (sequences + 16, length + 1), generator=g)
        self.train = TensorDataset(tokens[:sequences, :-1], tokens[:sequences, 1:])
        self.valid = TensorDataset(tokens[sequences:, :-1], tokens[sequences:, 1:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.valid, batch_size=8)


class RecordingTransfers(SupernetModule):
    """Records the inputs of every batch of the training loop (training and search batches) that
    goes through the module's transfer hook."""

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if self.trainer.training:
            self.transferred.append(batch[0].clone())
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def trainer(max_epochs=2, **kw):
    return pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


def thetas(module):
    return torch.stack([g.choice.theta.detach().clone() for g in search_groups(module.net)])


def test_supernet_in_a_plain_trainer_on_a_plain_datamodule():
    pl.seed_everything(0)
    data = WithSearchSplit(RandomTokens(), fraction=0.25, seed=0)
    module = RecordingTransfers(tiny_lm(vocab=VOCAB, dim=16), budget=Budget("avg_bits", 2.0), warmup_fraction=0.1)
    module.transferred = []
    prior = thetas(module)
    trainer().fit(module, datamodule=data)
    logged = module.trainer.callback_metrics
    assert {"search/loss", "train/loss", "val/ppl"} <= set(logged) and "val/acc" not in logged  # an LM
    assert not torch.equal(thetas(module), prior)  # the choices trained on the search split
    train_inputs = data.datamodule.train.tensors[0]
    search_rows = {tuple(row) for row in train_inputs[data.indices("search")].tolist()}
    training_rows = {tuple(row) for row in train_inputs[data.indices("train")].tolist()}
    batches = [{tuple(row) for row in inputs.tolist()} for inputs in module.transferred]
    search_batches = [b for b in batches if b <= search_rows]
    training_batches = [b for b in batches if b <= training_rows]
    assert search_batches and training_batches and len(search_batches) + len(training_batches) == len(batches)
    plan = module.derive_plan()
    gates = [f"rnn.weight_{kind}_l{layer}:{gate}" for layer in (0, 1) for kind in ("ih", "hh") for gate in "ifgo"]
    assert plan.budget == Budget("avg_bits", 2.0) and set(plan.groups) == {"encoder.weight", *gates, "decoder.weight"}
    numel = {n: g.numel for n, g in plan.groups.items()}
    assert sum(numel[n] * b for n, b in plan.bits.items()) <= 2.0 * sum(numel.values())  # within the budget


class RandomImages(pl.LightningDataModule):
    """A plain LightningDataModule of (images, labels): the network's logits make it a classifier."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        images, labels = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
        self.train, self.valid = TensorDataset(images[:40], labels[:40]), TensorDataset(images[40:], labels[40:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.valid, batch_size=8)


def test_a_classifier_on_a_plain_datamodule_logs_its_accuracy():
    pl.seed_everything(0)
    module = SupernetModule(ResNetCNN(num_classes=3, width=4, stages=1), space=SpaceConfig(name="cnn"),
                            budget=Budget("avg_bits", 2.0), warmup_fraction=0.0)
    trainer(max_epochs=1).fit(module, datamodule=WithSearchSplit(RandomImages(), fraction=0.2))
    logged = module.trainer.callback_metrics
    assert {"search/loss", "val/ppl", "val/acc"} <= set(logged) and 0.0 <= float(logged["val/acc"]) <= 1.0


def test_a_datamodule_without_a_search_split_is_refused_at_setup_naming_what_is_missing():
    module = SupernetModule(tiny_lm(vocab=VOCAB, dim=8), budget=Budget("avg_bits", 2.0))
    with pytest.raises(ValueError, match=r"RandomTokens has no evaluation_batches\(\), search_dataloader\(\), which "
                                         r"SupernetModule needs \(SearchData in nas_mpq.lit\).*WithSearchSplit"):
        trainer().fit(module, datamodule=RandomTokens())
    with pytest.raises(ValueError, match=r"SupernetModule needs a datamodule with \['evaluation_batches', "
                                         r"'search_dataloader', 'train_dataloader'\].*not bare dataloaders"):
        trainer().fit(module, train_dataloaders=RandomTokens().train_dataloader())


def test_the_bundled_datamodules_are_search_data(corpus_dir):
    for datamodule in (LMDataModule(str(corpus_dir), max_vocab=100), DigitsDataModule(),
                       WithSearchSplit(RandomTokens())):
        check_datamodule(datamodule, SearchData, "SupernetModule")
