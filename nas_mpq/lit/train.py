"""Training module: FP32 pretraining, or QAT of a fixed precision plan (apply_plan_)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from nas_mpq.plan import PrecisionPlan
from nas_mpq.quant import check_bits
from nas_mpq.search import apply_plan_, to_float_, uniform_plan

from .common import TaskModule, OptimizerFactory, SpaceConfig, check_plateau, plateau_schedule, weight_param_groups


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-3)


class TrainModule(TaskModule):
    """Trains `net` on the training split. With `plan` (a plan.json path) the network is first made
    a fixed-precision QAT model: every group goes through the quantizer of its planned bits and
    settings (a `space` given must yield the plan's groups, and a `method` or `per_channel` it sets
    must be the plan's);
    `uniform_bits` does the same with every group at one bit-width (the uniform baseline).
    `lr_decay` multiplies the learning rate by that factor when val/ppl has not improved for
    `lr_patience` epochs (ReduceLROnPlateau); pair it with an EarlyStopping callback.

    Example:
        >>> module = TrainModule(LSTMLM(vocab_size=10000), plan="runs/s/plan.json")
        >>> pl.Trainer(max_epochs=3).fit(module, datamodule=LMDataModule())
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory = _default_optimizer,
                 space: SpaceConfig | None = None, plan: str | None = None,
                 uniform_bits: int | None = None, lr_decay: float | None = None, lr_patience: int = 0,
                 seed: int = 0) -> None:
        super().__init__(net, seed)
        check_plateau(lr_decay, lr_patience)
        self.save_hyperparameters(ignore=["net", "optimizer"])
        # plain values in checkpoints, so they load with torch.load(weights_only=True)
        self.hparams.update(space=None if space is None else asdict(space))
        self.optimizer_factory = optimizer
        self.plan: PrecisionPlan | None = None
        if plan is not None and uniform_bits is not None:
            raise ValueError(f"give either plan ({plan}) or uniform_bits ({uniform_bits}), not both")
        if plan is not None:
            self.plan = PrecisionPlan.load(plan)
            if space is not None and space.name != self.plan.space_name:
                raise ValueError(f"plan {plan} is for search space {self.plan.space_name!r}, "
                                 f"the model config says {space.name!r}")
            if space is not None:
                space.check_plan_settings(self.plan)
        elif uniform_bits is not None:
            self.plan = uniform_plan(self.net, (space or SpaceConfig()).build(), check_bits(uniform_bits))
        self.search_space = space.build() if space is not None and self.plan is not None else None
        self.reinitialize()

    def reinitialize(self) -> None:
        """Rebuild the plan's quantizers from the current weights (LSQ scales start from them);
        call it after loading pretrained weights."""
        if self.plan is not None:
            apply_plan_(to_float_(self.net), self.plan, self.search_space)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = self.task_loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return plateau_schedule(self.optimizer_factory(weight_param_groups(self.net)),
                                self.hparams.lr_decay, self.hparams.lr_patience)
