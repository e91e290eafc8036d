"""The supernet search (ALGORITHMS.md sections 2-4) as a LightningModule with manual optimisation.

Per training batch, after a warm-up with frozen choices:
1. a batch of the held-out search split: L_val + lambda R; backward; clip theta grads; arch step;
2. zero all grads;
3. the training batch: L_train; backward; clip; weight step (weights and quantizer scales).
`single_level=True` instead adds lambda R to the training loss and steps both optimisers on it.
Temperature anneals geometrically tau_start -> tau_end over the run; lambda ramps linearly from 0
after the warm-up. Validation runs the argmax plan (no noise).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from nas_mpq.plan import Budget, PrecisionPlan
from nas_mpq.search import (BudgetRegularizer, activation_groups, derive_plan, get_sampler, prepare_search_,
                            search_groups)

from .common import LMModule, OptimizerFactory, SpaceConfig, weight_param_groups


def _default_weight_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-3)


def _default_arch_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2, betas=(0.5, 0.999))


class SupernetModule(LMModule):
    """Mixed-precision search over `space` for `net` under `budget`.

    Example:
        >>> module = SupernetModule(LSTMLM(vocab_size=10000), budget=Budget("avg_bits", 2.0))
        >>> pl.Trainer(max_epochs=5).fit(module, datamodule=LMDataModule())
        >>> plan = module.derive_plan()          # meets the budget exactly
    """

    def __init__(self, net: nn.Module, space: SpaceConfig | Mapping[str, Any] = SpaceConfig(),
                 budget: Budget | Mapping[str, Any] = Budget("avg_bits", 2.0),
                 optimizer: OptimizerFactory = _default_weight_optimizer,
                 arch_optimizer: OptimizerFactory = _default_arch_optimizer,
                 lam: float = 5.0, penalty: str = "one_sided", warmup_fraction: float = 0.15,
                 ramp_fraction: float = 0.25, tau_start: float = 5.0, tau_end: float = 0.5,
                 hard_below: float | None = None, grad_clip: float = 1.0, arch_grad_clip: float = 5.0,
                 single_level: bool = False, min_fill: float | None = 0.99,
                 init_sensitivity: str | None = None, init_temperature: float = 1.0, seed: int = 0) -> None:
        super().__init__(net, seed)
        space = space if isinstance(space, SpaceConfig) else SpaceConfig(**space)
        budget = budget if isinstance(budget, Budget) else Budget(**budget)
        self.save_hyperparameters(ignore=["net", "optimizer", "arch_optimizer"])
        # plain values in checkpoints, so they load with torch.load(weights_only=True)
        self.hparams.update(space=asdict(space), budget=asdict(budget))
        if min_fill is not None and not 0.0 < min_fill <= 1.0:
            raise ValueError(f"min_fill must be in (0, 1] or None, got {min_fill}")
        for name, v in (("warmup_fraction", warmup_fraction), ("ramp_fraction", ramp_fraction)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError(f"temperatures must be positive, got tau_start={tau_start}, tau_end={tau_end}")
        if lam < 0:
            raise ValueError(f"lam must be non-negative, got {lam}")
        self.automatic_optimization = False
        self.space = space.build()
        self.budget = budget
        self.weight_factory, self.arch_factory = optimizer, arch_optimizer
        prepare_search_(self.net, self.space)
        self.sampler = get_sampler(self.net)
        self.sampler.generator.manual_seed(seed)
        self.regularizer = BudgetRegularizer(self.net, budget, penalty)
        self.check_budget()
        if init_sensitivity is not None:
            self.init_choices_from(init_sensitivity, init_temperature)
        self._search_iter: Iterator | None = None

    # ---- set-up ---------------------------------------------------------------------------------
    def check_budget(self) -> None:
        """ValueError, before any training, if no plan of this supernet meets the budget."""
        plan = derive_plan(self.net, self.space)
        self.budget.check_feasible(plan.groups, plan.fixed_numel,
                                   {g.name: g.choice.candidates for g in search_groups(self.net)},
                                   {a.name: a.choice.candidates for a in activation_groups(self.net)})

    @torch.no_grad()
    def init_choices_from(self, sensitivity_json: str, temperature: float = 1.0) -> None:
        """theta_gk = -Omega_g(b_k) / (T * mean Omega): the search starts from the sensitivity
        ranking (ALGORITHMS.md section 5) instead of uniform choices."""
        from nas_mpq.sensitivity_stage import load_sensitivity
        if temperature <= 0:
            raise ValueError(f"init_temperature must be positive, got {temperature}")
        omega = load_sensitivity(sensitivity_json)
        groups = [g for g in search_groups(self.net) if g.choice.theta is not None]
        missing = sorted(g.name for g in groups if g.name not in omega
                         or any(b not in omega[g.name] for b in g.choice.candidates))
        if missing:
            raise ValueError(f"{sensitivity_json} has no sensitivity for groups (or bit-widths of) {missing}")
        values = [omega[g.name][b] for g in groups for b in g.choice.candidates]
        scale = temperature * max(sum(values) / len(values), 1e-30)
        for g in groups:
            g.choice.theta.copy_(torch.tensor([-omega[g.name][b] / scale for b in g.choice.candidates]))

    def arch_parameters(self) -> list[nn.Parameter]:
        choices = [g.choice for g in search_groups(self.net)] + [a.choice for a in activation_groups(self.net)]
        return [c.theta for c in choices if c.theta is not None]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        arch = self.arch_parameters()
        return [self.weight_factory(weight_param_groups(self.net, exclude=arch)), self.arch_factory(arch)]

    # ---- schedules ------------------------------------------------------------------------------
    def progress(self, batch_idx: int) -> float:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        step = self.current_epoch * int(self.trainer.num_training_batches) + batch_idx
        return min(step / total, 1.0)

    def schedule(self, p: float) -> tuple[float, float, bool]:
        """(tau, lambda, arch_active) at progress p in [0, 1]."""
        h = self.hparams
        tau = h.tau_start * (h.tau_end / h.tau_start) ** p
        active = p >= h.warmup_fraction
        ramp = 1.0 if h.ramp_fraction == 0 else min(max((p - h.warmup_fraction) / h.ramp_fraction, 0.0), 1.0)
        return tau, h.lam * ramp if active else 0.0, active

    # ---- steps ----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._search_iter = None

    def _search_batch(self) -> tuple:
        if self._search_iter is None:
            self._search_iter = iter(self.trainer.datamodule.search_dataloader())
        try:
            return next(self._search_iter)
        except StopIteration:
            self._search_iter = iter(self.trainer.datamodule.search_dataloader())
            return next(self._search_iter)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        w_opt, a_opt = self.optimizers()
        tau, lam, active = self.schedule(self.progress(batch_idx))
        self.sampler.tau = tau
        self.sampler.hard = self.hparams.hard_below is not None and tau < self.hparams.hard_below
        if active and not self.hparams.single_level:
            arch_loss = self.lm_loss(self._search_batch(), "search") + lam * self.regularizer.penalty()
            self.manual_backward(arch_loss)
            self.clip_gradients(a_opt, gradient_clip_val=self.hparams.arch_grad_clip,
                                gradient_clip_algorithm="norm")
            a_opt.step()
            self.log("search/loss", arch_loss)
        w_opt.zero_grad()
        a_opt.zero_grad()
        loss = self.lm_loss(batch, "train")
        total = loss + lam * self.regularizer.penalty() if active and self.hparams.single_level else loss
        self.manual_backward(total)
        self.clip_gradients(w_opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        w_opt.step()
        if active and self.hparams.single_level:
            a_opt.step()
        w_opt.zero_grad()
        a_opt.zero_grad()
        with torch.no_grad():
            self.log_dict({"train/loss": loss, "arch/expected_bits": self.regularizer.expected_avg_bits(),
                           "arch/entropy": self.regularizer.mean_entropy(), "arch/tau": tau,
                           "arch/lambda": lam}, prog_bar=False)
        return loss

    # ---- results and checkpoints ----------------------------------------------------------------
    def derive_plan(self) -> PrecisionPlan:
        """The argmax plan, repaired to meet the budget exactly."""
        return derive_plan(self.net, self.space, self.budget, self.hparams.min_fill)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["nas_mpq"]["sampler"] = self.sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("nas_mpq")
        if state is None or "sampler" not in state:
            raise ValueError("checkpoint has no search state (choices' sampler); it was not written "
                             "by a supernet search")
        self.sampler.load_state_dict(state["sampler"])
        super().on_load_checkpoint(checkpoint)
