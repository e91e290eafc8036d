"""Optuna pruning for pytorch_lightning trainers (optuna-integration's callback imports the
`lightning` package, whose classes do not mix with pytorch_lightning's)."""
from __future__ import annotations

import optuna
import pytorch_lightning as pl


class OptunaPruning(pl.Callback):
    """Reports `monitor` after every validation epoch to `trial` and raises optuna.TrialPruned when
    the pruner says so. One instance may follow a trial through several stages (search, then
    finalize): the reported step counts validation epochs across all of them.

    Example:
        >>> trainer = pl.Trainer(callbacks=[OptunaPruning(trial)])
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val/ppl") -> None:
        self.trial, self.monitor = trial, monitor
        self.step = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not a stage's closing validate()
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"pruning monitors {self.monitor!r}, which this stage does not log; "
                           f"it logs {sorted(trainer.callback_metrics)}")
        step, self.step = self.step, self.step + 1
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at validation {step}: {self.monitor} = {float(value):.4g}")
