"""Weight averaging whose checkpoints are the averaged model for every evaluation.

pytorch_lightning's EMAWeightAveraging validates the exponential moving average of the weights
during fit and saves it as a checkpoint's `state_dict` (the raw weights go under
`current_model_state`, for resuming). After fit, `trainer.test(ckpt_path=...)` would load the raw
weights back (the callback restores them whenever it has an average model, i.e. after any fit),
and `trainer.validate` would swap in the average: one checkpoint, two models. `EMAWeights` keeps
the base class's behaviour during fit and, outside it, leaves the checkpoint's `state_dict` (the
average) in place for test, validate and predict alike; every later stage that loads the
checkpoint (`--init_ckpt`) reads that `state_dict` too.

    callbacks:
      - class_path: nas_mpq.lit.averaging.EMAWeights
        init_args: {decay: 0.998}
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


def _fitting(trainer: pl.Trainer) -> bool:
    return trainer.state.fn == TrainerFn.FITTING


class EMAWeights(EMAWeightAveraging):
    """EMAWeightAveraging (`decay`, `update_every_n_steps`, `update_starting_at_step`, ...) whose
    saved average is the model that test, validate and predict evaluate after fit."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if _fitting(trainer):  # resuming: restore the average and the raw weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)
