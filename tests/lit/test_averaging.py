"""EMAWeights: a pretrain run's checkpoint, validation and test perplexity are all of the averaged
weights, and a resumed run averages on from where it stopped."""
import json

import pytorch_lightning as pl
import torch
import yaml

from nas_mpq.cli import main
from nas_mpq.data import LMDataModule
from nas_mpq.lit import TrainModule
from search_spaces.lstm_lm import LSTMLM

EMA = {"class_path": "nas_mpq.lit.averaging.EMAWeights", "init_args": {"decay": 0.9}}


def _ema_config(config, tmp_path, **trainer):
    cfg = yaml.safe_load(config.read_text())
    cfg["pretrain"]["trainer"].update(callbacks=[EMA], **trainer)
    path = tmp_path / "ema.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _ppl(cfg, state_dict, split="test"):
    """Test (or validation) perplexity of the network with these weights, by a trainer with no
    callbacks, on the batches the run evaluates."""
    net = LSTMLM(**{**cfg["pretrain"]["model"]["net"]["init_args"], "vocab_size": cfg["data"]["max_vocab"]})
    module = TrainModule(net)
    module.load_state_dict(state_dict)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_test_batches=2, limit_val_batches=2)
    run = trainer.test if split == "test" else trainer.validate
    return run(module, datamodule=LMDataModule(**cfg["data"]), verbose=False)[0][f"{split}/ppl"]


def test_pretrain_reports_and_saves_the_averaged_weights(config, tmp_path):
    path, cfg = _ema_config(config, tmp_path)
    run = tmp_path / "fp32"
    assert main(["pretrain", "--config", str(path), "--run_dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    ckpt = torch.load(run / "model.ckpt", weights_only=True)
    average, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(average[k], raw[k]) for k in average)
    assert metrics["test_ppl"] == _ppl(cfg, average) != _ppl(cfg, raw)
    assert metrics["val_ppl"] == _ppl(cfg, average, "val") != _ppl(cfg, raw, "val")
    # ... and the validation the best checkpoint was chosen by during fit was of the average too
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    scores = [v["best_model_score"] for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert metrics["val_ppl"] == scores[0].item()


def test_a_resumed_pretrain_ends_with_the_same_average(config, tmp_path):
    path, _ = _ema_config(config, tmp_path)
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    assert main(["pretrain", "--config", str(path), "--run_dir", str(straight)]) == 0
    assert main(["pretrain", "--config", str(path), "--run_dir", str(first), "--trainer.max_epochs", "1"]) == 0
    epoch0 = first / "checkpoints" / "last.ckpt"
    assert main(["pretrain", "--config", str(path), "--run_dir", str(resumed), "--resume", str(epoch0)]) == 0
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
