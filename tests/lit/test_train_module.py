"""Plan QAT (TrainModule): the quantizers' kept scales follow the weights whatever the optimizer."""
from functools import partial

import pytorch_lightning as pl
import torch

from conftest import tiny_lm
from nas_mpq.data import LMDataModule
from nas_mpq.lit import TrainModule
from nas_mpq.search import search_groups


def test_kept_scales_are_refitted_after_a_fused_optimizer_step(corpus_dir):
    """A fused Adam step does not move a weight's version counter; the scales a QAT forward uses
    must still be fitted to the weights as they are after the step, not as they were before."""
    module = TrainModule(tiny_lm(vocab=200, dim=16), optimizer=partial(torch.optim.Adam, lr=0.05, fused=True),
                         uniform_bits=2)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=LMDataModule(str(corpus_dir), max_vocab=200, batch_size=8, eval_batch_size=4,
                                                bptt=12))
    checked = 0
    for g in search_groups(module.net):
        w = g.weight
        kept = g.choice.shared_stats(w)
        if kept is None:
            continue
        g.choice.clear_stats()
        fresh = g.choice.shared_stats(w)
        assert torch.equal(kept.scale(2), fresh.scale(2)), g.name
        checked += 1
    assert checked > 0
