"""UnigramOutputBias: a fresh model's output bias starts at the training split's log unigram
probabilities; a trained bias (resumed, or loaded with --init_ckpt) is left alone; bad settings
fail before training."""
from types import SimpleNamespace

import pytorch_lightning as pl
import pytest
import torch
import yaml

from nas_mpq.cli import main
from nas_mpq.data import LMDataModule
from nas_mpq.lit import TrainModule
from nas_mpq.lit.output_prior import UnigramOutputBias
from search_spaces.transformer_lm import TransformerLM

PRIOR = {"class_path": "nas_mpq.lit.output_prior.UnigramOutputBias", "init_args": {"layer": "decoder"}}


def _data(corpus_dir):
    return LMDataModule(str(corpus_dir), max_vocab=200, batch_size=8, eval_batch_size=4, bptt=12)


def _module(vocab_size):
    return TrainModule(TransformerLM(vocab_size, d_model=8, num_heads=2, num_layers=1, max_len=12))


def _prior(data, smoothing=1.0):
    """The expected bias: log p(token) of the training split, add-`smoothing` counts, centred."""
    counts = torch.bincount(data.split_tokens("train"), minlength=data.vocab_size).double() + smoothing
    log_p = (counts / counts.sum()).log()
    return log_p - log_p.mean(), counts


def _setup(callback, module, data):
    """The callback's start of fit, on a trainer whose data module is `data` (all it reads)."""
    callback.setup(SimpleNamespace(datamodule=data), module, "fit")


def test_a_fresh_bias_is_set_to_the_log_unigram_probabilities(corpus_dir):
    data = _data(corpus_dir)
    module = _module(data.vocab_size)
    _setup(UnigramOutputBias(smoothing=0.5), module, data)
    prior, counts = _prior(data, smoothing=0.5)
    bias = module.net.decoder.bias.detach().double()
    assert torch.allclose(bias, prior, atol=1e-6) and abs(bias.mean()) < 1e-6
    assert torch.allclose(bias.softmax(0), counts / counts.sum(), atol=1e-7)
    top = int(counts.argmax())  # the most frequent token has the largest bias, a rarest one the smallest
    assert bias[top] == bias.max() and bias[int(counts.argmin())] == bias.min() < bias[top] - 5


def test_a_trained_bias_is_left_alone(corpus_dir):
    data = _data(corpus_dir)
    module = _module(data.vocab_size)
    with torch.no_grad():
        module.net.decoder.bias.uniform_(-1, 1)
    before = module.net.decoder.bias.detach().clone()
    with pytest.warns(UserWarning, match="bias of 'decoder' is not all zeros"):
        _setup(UnigramOutputBias(), module, data)
    assert torch.equal(module.net.decoder.bias, before)


def test_bad_settings_name_what_is_wrong(corpus_dir):
    data = _data(corpus_dir)
    module = _module(data.vocab_size)
    with pytest.raises(ValueError, match=r"no module 'head'.*'decoder'"):
        _setup(UnigramOutputBias(layer="head"), module, data)
    with pytest.raises(ValueError, match="has no bias"):
        _setup(UnigramOutputBias(layer="blocks"), module, data)
    with pytest.raises(ValueError, match="needs a LightningModule whose network is its `net`.*got LightningModule"):
        _setup(UnigramOutputBias(), pl.LightningModule(), data)
    with pytest.raises(ValueError, match="smoothing must be a positive count, got 0"):
        UnigramOutputBias(smoothing=0)
    with pytest.raises(ValueError, match=r"needs a data module with split_tokens\('train'\).*got LightningDataModule"):
        _setup(UnigramOutputBias(), module, pl.LightningDataModule())
    with pytest.raises(ValueError, match="out of range for the 10 outputs"):
        _setup(UnigramOutputBias(), _module(10), data)


def test_pretrain_starts_from_the_prior_and_an_init_ckpt_keeps_its_bias(config, tmp_path):
    cfg = yaml.safe_load(config.read_text())
    cfg["pretrain"]["trainer"]["callbacks"] = [PRIOR]
    path = tmp_path / "prior.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "fp32"
    assert main(["pretrain", "--config", str(path), "--run_dir", str(run), "--trainer.max_epochs", "1"]) == 0
    prior = _prior(LMDataModule(**cfg["data"]))[0].float()
    trained = torch.load(run / "model.ckpt", weights_only=True)["state_dict"]["net.decoder.bias"]
    # five Adam steps at 2e-3 move a bias by at most about 1e-2: it is the prior, nudged
    assert 0 < (trained - prior).abs().max() < 0.05 and prior.max() - prior.min() > 5
    # continued from those weights with the bias shifted by 3 (the same softmax), the run keeps
    # that bias rather than starting it at the prior again
    state = torch.load(run / "model.ckpt", weights_only=False)
    state["state_dict"]["net.decoder.bias"] += 3.0
    shifted = tmp_path / "shifted.ckpt"
    torch.save(state, shifted)
    again = tmp_path / "continued"
    with pytest.warns(UserWarning, match="not all zeros"):
        assert main(["pretrain", "--config", str(path), "--run_dir", str(again), "--trainer.max_epochs", "1",
                     "--init_ckpt", str(shifted)]) == 0
    kept = torch.load(again / "model.ckpt", weights_only=True)["state_dict"]["net.decoder.bias"]
    assert (kept - (trained + 3.0)).abs().max() < 0.05


class _BiasAtTrainStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.bias = pl_module.net.decoder.bias.detach().clone()


def test_a_resumed_fit_trains_on_from_the_saved_bias(corpus_dir, tmp_path):
    """The callback runs before Lightning restores a checkpoint (on the fresh, all-zero bias), so
    what this checks is that nothing writes the prior after the restore."""
    data = _data(corpus_dir)

    def fit(callbacks, max_epochs, ckpt_path=None):
        torch.manual_seed(0)
        module = _module(data.vocab_size)
        trainer = pl.Trainer(max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=callbacks, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer
    ckpt = tmp_path / "epoch1.ckpt"
    fit([UnigramOutputBias()], 1).save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    saved = state["state_dict"]["net.decoder.bias"].add_(0.5)  # not what the prior would give
    torch.save(state, ckpt)
    seen = _BiasAtTrainStart()
    fit([UnigramOutputBias(), seen], 2, ckpt_path=ckpt)
    assert torch.equal(seen.bias, saved)
