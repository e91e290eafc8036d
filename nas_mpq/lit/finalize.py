"""Finalize a precision plan: train the low-bit model with ADMM onto its quantization tables
(ALGORITHMS.md section 6), or with plain STE fine-tuning (QAT at the plan) for comparison.

ADMM: the network stays float; the loss adds rho/2 ||W - G + U||^2 (`w_step="proximal"`: a
closed-form proximal step applies it after each optimizer step instead) and every `admm_every`
minibatches (default: once per epoch, after its last batch) G, U and rho are updated. Validation
and test run the projected model (W := G), so val/ppl is the perplexity of what would be exported.
The ADMM state is a submodule: checkpoints hold G, U and rho.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from nas_mpq.admm import ADMMState, group_weight
from nas_mpq.plan import PrecisionPlan
from nas_mpq.quant.functional import FIT_ITERS
from nas_mpq.search import (apply_plan_, attach_input_choices_, check_plan_matches, detach_input_choices_,
                            search_groups, to_float_)

from .common import TaskModule, OptimizerFactory, SpaceConfig, check_plateau, plateau_schedule, weight_param_groups

FINALIZE_METHODS = ("admm", "ste")
W_STEPS = ("gradient", "proximal")
"""How ADMM's W-step handles rho/2 ||W - G + U||^2: its gradient added to the loss, or a closed-form
proximal step after each optimizer step on the loss alone (with the optimizer's learning rate)."""


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class FinalizeModule(TaskModule):
    """Trains `net` at `plan` (a plan.json path) with `method` "admm" or "ste"; `lr_decay` and
    `lr_patience` decay the learning rate on a val/ppl plateau, as in TrainModule. The plan
    sets the groups and their quantizers; a `space` given must yield the plan's groups, and a
    `method` or `per_channel` it sets must be the plan's.

    Example:
        >>> module = FinalizeModule(LSTMLM(vocab_size=10000), plan="runs/s/plan.json")
        >>> pl.Trainer(max_epochs=6).fit(module, datamodule=LMDataModule())
        >>> float_net = module.quantized_net()     # every quantized weight = scale x code
    """

    def __init__(self, net: nn.Module, plan: str, space: SpaceConfig | None = None,
                 method: str = "admm", optimizer: OptimizerFactory = _default_optimizer,
                 rho: float = 1e-3, rho_growth: float = 1.1, rho_schedule: str = "multiplicative",
                 admm_every: int | None = None, proj_iters: int = FIT_ITERS, tol: float = 1e-3,
                 w_step: str = "gradient", lr_decay: float | None = None, lr_patience: int = 0,
                 seed: int = 0) -> None:
        super().__init__(net, seed)
        check_plateau(lr_decay, lr_patience)
        if method not in FINALIZE_METHODS:
            raise ValueError(f"unknown finalize method {method!r}; valid: {list(FINALIZE_METHODS)}")
        if w_step not in W_STEPS:
            raise ValueError(f"unknown ADMM W-step {w_step!r}; valid: {list(W_STEPS)}")
        if admm_every is not None and admm_every < 1:
            raise ValueError(f"admm_every must be a positive number of minibatches, got {admm_every}")
        self.plan = PrecisionPlan.load(plan)
        if space is not None and space.name != self.plan.space_name:
            raise ValueError(f"plan {plan} is for search space {self.plan.space_name!r}, "
                             f"the model config says {space.name!r}")
        if space is not None:
            space.check_plan_settings(self.plan)
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.hparams.update(space=None if space is None else asdict(space))
        self.search_space = None if space is None else space.build()
        self.method, self.optimizer_factory = method, optimizer
        check_plan_matches(net, self.plan, self.search_space)
        self._stash: dict[str, torch.Tensor] = {}
        self.admm: ADMMState | None = None
        self.reinitialize()

    def reinitialize(self) -> None:
        """Build the finalize state from the current weights: G = proj(W), U = 0 and the initial
        rho (ADMM), or fresh plan quantizers (STE). Call it after loading pretrained weights."""
        h = self.hparams
        if self.method == "ste":
            apply_plan_(to_float_(self.net), self.plan, self.search_space)
        else:  # the float network trains with the plan's activation quantizers in place
            attach_input_choices_(detach_input_choices_(to_float_(self.net)),
                                  {n: [a.bits] for n, a in self.plan.activations.items()})
            self.admm = ADMMState(self.net, self.plan, h.rho, h.rho_growth, h.rho_schedule,
                                  proj_iters=h.proj_iters, tol=h.tol)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = self.task_loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True)
        if self.admm is None or self.hparams.w_step == "proximal":
            return loss
        penalty = self.admm.penalty()
        self.log("admm/penalty", penalty)
        return loss + penalty

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.admm is None:
            return
        if self.hparams.w_step == "proximal":
            self.admm.proximal_(float(self.trainer.optimizers[0].param_groups[0]["lr"]))
        every = self.hparams.admm_every
        last = batch_idx + 1 == int(self.trainer.num_training_batches)
        step = self.current_epoch * int(self.trainer.num_training_batches) + batch_idx + 1
        if (every is None and last) or (every is not None and step % every == 0):
            r = self.admm.iterate()
            self.log_dict({"admm/residual": r["residual"], "admm/rho": float(self.admm.rho)})
            if self.admm.converged():
                self.trainer.should_stop = True

    def configure_optimizers(self) -> Any:
        return plateau_schedule(self.optimizer_factory(weight_param_groups(self.net)),
                                self.hparams.lr_decay, self.hparams.lr_patience)

    # ---- evaluation on the projected model (ADMM) ------------------------------------------------
    def _swap_in_projection(self) -> None:
        if self.admm is None or self._stash:
            return
        with torch.no_grad():
            for name, g in self.admm.groups.items():
                w = group_weight(self.net, g)
                self._stash[name] = w.clone()
                w.copy_(self.admm.G(name))

    def _restore_weights(self) -> None:
        with torch.no_grad():
            for name, w in self._stash.items():
                group_weight(self.net, self.admm.groups[name]).copy_(w)
        self._stash = {}

    def on_validation_epoch_start(self) -> None:
        self._swap_in_projection()

    def on_validation_epoch_end(self) -> None:
        self._restore_weights()
        super().on_validation_epoch_end()
        if self.admm is not None:
            self.log("admm/residual", self.admm.residual())

    def on_test_epoch_start(self) -> None:
        self._swap_in_projection()

    def on_test_epoch_end(self) -> None:
        self._restore_weights()
        super().on_test_epoch_end()

    # ---- results --------------------------------------------------------------------------------
    @torch.no_grad()
    def group_codes(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(integer codes, scale) of every group of the plan, as exported."""
        out = {}
        if self.admm is None:
            for g in search_groups(self.net):
                w = group_weight(self.net, g.plan)
                out[g.name] = g.choice.quantizers[0].codes(w)
            return out
        for name, g in self.plan.groups.items():
            if name in self.admm.groups:
                out[name] = self.admm.codes(name)
            else:
                out[name] = (group_weight(self.net, g).detach().clone(), torch.ones(()))
        return out

    @torch.no_grad()
    def quantized_net(self) -> nn.Module:
        """A float copy of the network with every group set to scale x code (W := G)."""
        net = to_float_(copy.deepcopy(self.net))
        for name, (codes, scale) in self.group_codes().items():
            group_weight(net, self.plan.groups[name]).copy_(codes * scale)
        return net
