"""Training module: FP32 pretraining, or QAT of a fixed precision plan (apply_plan_)."""
from __future__ import annotations

import torch
from torch import nn

from nas_mpq.plan import PrecisionPlan
from nas_mpq.search import apply_plan_, search_groups

from .common import LMModule, OptimizerFactory, SpaceConfig


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-3)


class LMTrainModule(LMModule):
    """Trains `net` on the training split. With `plan` (a plan.json path) the network is first made
    a fixed-precision QAT model: every group goes through the quantizer of its planned bits.

    Example:
        >>> module = LMTrainModule(LSTMLM(vocab_size=10000), plan="runs/s/plan.json")
        >>> pl.Trainer(max_epochs=3).fit(module, datamodule=LMDataModule())
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory = _default_optimizer,
                 space: SpaceConfig | None = None, plan: str | None = None, seed: int = 0) -> None:
        super().__init__(net, seed)
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.optimizer_factory = optimizer
        self.plan: PrecisionPlan | None = None
        if plan is not None:
            self.plan = PrecisionPlan.load(plan)
            space_cfg = space or SpaceConfig(name=self.plan.search_space)
            if space_cfg.name != self.plan.search_space:
                raise ValueError(f"plan {plan} is for search space {self.plan.search_space!r}, "
                                 f"the model config says {space_cfg.name!r}")
            apply_plan_(self.net, self.plan, space_cfg.build())

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = self.lm_loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        scales = {id(p) for g in search_groups(self.net) for p in g.choice.parameters()}
        weights = [p for p in self.net.parameters() if id(p) not in scales]
        groups = [{"params": weights}]
        if scales:
            groups.append({"params": [p for p in self.net.parameters() if id(p) in scales],
                           "weight_decay": 0.0})
        return self.optimizer_factory(groups)
