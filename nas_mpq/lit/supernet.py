"""The supernet search (ALGORITHMS.md sections 2-4) as a LightningModule with manual optimisation.

The algorithm as built (defaults in brackets):
- theta starts inside the budget: theta_gk = -beta b_k with beta solved so that E[size] equals the
  budget (`init_prior`), or from a sensitivity file (`init_sensitivity`: -Omega_gk / T minus
  beta times the group's cost, again with E[size] on the budget);
- per training batch, after a warm-up with frozen choices [10 % of the steps]:
  1. on every `arch_every`-th training batch [1: each], a batch of the held-out search split:
     L_val + mu (E[S]/S_T - 1) [+ an entropy term late in the search]; backward; clip theta
     grads; arch step;
  2. zero all grads;
  3. the training batch: L_train; backward; clip; weight step (weights and quantizer scales);
  4. after each arch step, the multiplier's dual ascent `mu <- mu + dual_lr (r - 1)`, r the
     larger of E[S]/S_T and the argmax plan's S/S_T (from `sharpen_from` on, the argmax plan's
     alone): it pushes bits down while the plan is over budget and (below 0) up while it stays
     under [`penalty: lagrange`, dual_lr 0.05]; once per step on theta, so `arch_every` does not
     change its step size (the schedules follow the progress through the search); the term's
     weight is mu plus `dual_kp` (r - 1) with r measured at that step [dual_kp 0]: a
     proportional part that answers the gap at once, where mu answers it only as it accumulates
     (and overshoots: the argmax plan crosses the budget while mu is still far from its end value);
- the temperature anneals geometrically tau_start -> tau_end [1.0 -> 0.2], with hard
  (straight-through one-hot) samples once tau < hard_below [0.5]; from `sharpen_from` [60 %] of
  the steps an entropy term (size-weighted: sum_g n_g H(pi_g) / sum_g n_g) ramping to
  `entropy_weight` [0.02] drives pi towards one-hot, so the
  expectation that the budget term sees and the argmax plan agree at the end.
`train_weights=False` searches the choices alone on the network's weights as they are (a
post-training search: the training batch only keeps time, no weight step, no weight gradients,
each weight's scales fitted once); set `warmup_fraction: 0` with it.
`weights_until=w` stops the weight steps at that fraction of the steps (from then on the choices
alone move, on the weights as trained); `hard_warmup=True` draws hard samples during the warm-up, so
each warm-up step trains the weights on one whole plan drawn from the initial choices. Together,
with `weights_until = warmup_fraction`, they make a one-shot search: the weights first learn to
recover from the quantization of every plan the prior holds (none favoured, since the choices do
not move), then the choices are searched on those weights, which judge a plan by what it costs
after such training rather than on the FP32 weights. Neither runs under DDP (the weights freeze
mid-run).
`weights_at="plan"` trains the weights (step 3) at the plan the search would return now (the
argmax, repaired to the budget; one candidate per group, no noise) instead of at a Gumbel sample:
the weights then track the current plan, as the finalize's training would, and the choices step
on weights adapted to it (the search batches still sample). With `plan_from: best_val` each
epoch's validation is then the plan after that much training at it. The plan is derived again
after every step on theta (the repair prices bits by the probabilities): a knapsack per step
(about 40 ms on the flagship LSTM). Not under DDP (the choices are not in the weight step's
graph), nor with `hard_warmup`.
`refit_every=k` fits the quantizer scales (ALGORITHMS.md section 1) once per k training batches of
an epoch and keeps them while the weights move in between [1: every batch, each step's scales
those of its weights]: they are forgotten at every k-th batch and fitted, for every candidate
width at once, where a weight is next quantized that way (soft blocks, a pinned group), so hard
samples and a changing plan fit nothing more. The fit is about half of a CPU supernet step's
overhead on the flagship LSTM. Validation and the derived plan's stages fit on the weights as
they are. A run resumed in the middle of an epoch fits at its first batch, so its scales differ
from an uninterrupted run's until the next refit (from an epoch's end, as checkpoints are
written, it resumes exactly).
`fuse_candidates=True` quantizes and mixes a soft sample's candidates of each weight in one
`torch.compile`d pass, and computes their gradients in another (search/choice.py `fuse_candidates`,
quant/fused.py), the same numbers to float rounding [False]: the first steps compile a few graphs
(seconds to a minute on a CPU), then a soft step costs less (BENCHMARKS.md, "One pass over a
group's candidates"); the weight step at a pinned plan and hard samples are not soft.
Where compilation is unavailable it warns once and runs the same expressions uncompiled.
`single_level=True` instead adds the budget term to the training loss and steps both optimisers
on it. `penalty: one_sided | two_sided` uses the squared penalty `lam max(0, E/S_T - 1)^2` (or
two-sided), lambda ramped linearly after the warm-up.
Which plan the search returns (`plan_from`: last, best_val, probe): plan_selection.py.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterator

import torch
from torch import nn

from nas_mpq.plan import Budget, PrecisionPlan
from nas_mpq.search import (BudgetRegularizer, activation_groups, derive_plan, get_sampler, hold_fitted_scales,
                            prepare_search_, search_groups, training_at_plan)
from nas_mpq.search import fuse_candidates as set_fuse_candidates
from nas_mpq.sensitivity import load_sensitivity

from .common import TaskModule, OptimizerFactory, SpaceConfig, weight_param_groups
from .data_contract import SearchData, check_datamodule
from .plan_selection import PlanSelection
from .probe import PlanProbe
from .search_settings import PLAN_FROM, WEIGHTS_AT, check_search_settings


def _default_weight_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-3)


def _default_arch_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2, betas=(0.5, 0.999))


class SupernetModule(PlanSelection, TaskModule):
    """Mixed-precision search over `space` for `net` under `budget`.

    The datamodule must be a `SearchData` (data_contract.py): it serves a held-out search split
    besides the training split; `WithSearchSplit(datamodule)` makes any LightningDataModule one.
    Search batches take the same way to the device as training batches (the transfer hooks).

    Example:
        >>> module = SupernetModule(LSTMLM(vocab_size=10000), budget=Budget("avg_bits", 2.0))
        >>> pl.Trainer(max_epochs=5).fit(module, datamodule=LMDataModule())
        >>> plan = module.derive_plan()          # meets the budget exactly
    """

    def __init__(self, net: nn.Module, space: SpaceConfig = SpaceConfig(),
                 budget: Budget = Budget("avg_bits", 2.0),
                 optimizer: OptimizerFactory = _default_weight_optimizer,
                 arch_optimizer: OptimizerFactory = _default_arch_optimizer,
                 penalty: str = "lagrange", dual_lr: float = 0.05, dual_kp: float = 0.0, lam: float = 5.0,
                 warmup_fraction: float = 0.1, ramp_fraction: float = 0.25, tau_start: float = 1.0,
                 tau_end: float = 0.2, hard_below: float | None = 0.5, entropy_weight: float = 0.02,
                 sharpen_from: float = 0.6, grad_clip: float = 1.0, arch_grad_clip: float = 5.0,
                 single_level: bool = False, arch_every: int = 1, refit_every: int = 1,
                 min_fill: float | None = None,
                 train_weights: bool = True, weights_until: float = 1.0, hard_warmup: bool = False,
                 weights_at: str = "sample",
                 plan_from: str = "last", probe_steps: int = 300, probe_top: int = 3,
                 init_prior: bool = True, init_sensitivity: str | None = None, init_temperature: float = 1.0,
                 fuse_candidates: bool = False, seed: int = 0) -> None:
        super().__init__(net, seed)
        self.save_hyperparameters(ignore=["net", "optimizer", "arch_optimizer"])
        # plain values in checkpoints, so they load with torch.load(weights_only=True)
        self.hparams.update(space=asdict(space), budget=asdict(budget))
        check_search_settings(**self.hparams)
        self.automatic_optimization = False
        self.search_space = space.build()
        self.budget = budget
        self.weight_factory, self.arch_factory = optimizer, arch_optimizer
        prepare_search_(self.net, self.search_space)
        set_fuse_candidates(self.net, fuse_candidates)
        self.sampler = get_sampler(self.net)
        self.sampler.generator.manual_seed(seed)
        self.regularizer = BudgetRegularizer(self.net, budget, penalty)
        self.check_budget()
        self.register_buffer("dual", torch.zeros(()))  # the budget's Lagrange multiplier mu
        if init_sensitivity is not None:
            self.init_choices_from(init_sensitivity, init_temperature)
        elif init_prior:
            self.regularizer.init_prior_()
        self._search_iter: Iterator | None = None
        self._weights_frozen = False
        self._progress = 0.0  # of the last training batch: which validations follow the warm-up
        self.best_plan: dict[str, Any] | None = None  # {"epoch", "val_ppl", "plan": the plan's dict}
        # plan_from probe: the plan of the initial choices (before a resume restores theta), and the rest
        self.plan_probe = (PlanProbe(derive_plan(self.net, self.search_space, budget, min_fill), probe_steps, probe_top)
                           if plan_from == "probe" else None)
        self._validated_plan: PrecisionPlan | None = None
        self._current_plan: tuple[tuple[int, ...], PrecisionPlan] | None = None  # keyed by theta's versions
        if not train_weights:
            for p in self.net.parameters():
                p.requires_grad_(False)
            for theta in self.arch_parameters():
                theta.requires_grad_(True)

    # ---- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_datamodule(self.trainer.datamodule, SearchData, "SupernetModule")
            if self.hparams.weights_until < 1.0 and self.trainer.world_size > 1:
                raise ValueError(f"weights_until={self.hparams.weights_until} freezes the weights mid-run, which "
                                 f"DistributedDataParallel does not allow; run it on one device (world size "
                                 f"{self.trainer.world_size} here)")
            if self.hparams.weights_at == "plan" and self.trainer.world_size > 1:
                raise ValueError(f"weights_at='plan' leaves the choices out of the weight step's graph, which "
                                 f"DistributedDataParallel does not allow; run it on one device (world size "
                                 f"{self.trainer.world_size} here)")
            if self.hparams.plan_from == "probe" and self.trainer.world_size > 1:
                raise ValueError(f"plan_from='probe' trains its candidate plans on one device after the search; "
                                 f"run it on one device (world size {self.trainer.world_size} here)")
        super().setup(stage)
        if stage == "fit" and self.plan_probe is not None:  # after activation calibration
            self.plan_probe.record_start(self.net, self.trainer)

    def check_budget(self) -> None:
        """ValueError, before any training, if no plan of this supernet meets the budget, or if
        every plan does (a budget at or above the largest plan's size constrains nothing)."""
        plan = derive_plan(self.net, self.search_space)
        self.budget.check_binds(plan.groups, plan.fixed_numel,
                                {g.name: g.choice.candidates for g in search_groups(self.net)},
                                {a.name: a.choice.candidates for a in activation_groups(self.net)})

    @torch.no_grad()
    def init_choices_from(self, sensitivity_json: str, temperature: float = 1.0) -> None:
        """theta_gk = -Omega_g(b_k) / (T * mean Omega) - beta cost_gk, beta solved so that E[size]
        equals the budget: the search starts at the soft version of the sensitivity's own plan at
        this budget (ALGORITHMS.md section 5) instead of at a plan-blind prior."""
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
        self.regularizer.init_prior_(base=[torch.tensor([-omega[g.name][b] / scale for b in g.choice.candidates])
                                           for g in groups])

    def arch_parameters(self) -> list[nn.Parameter]:
        return [c.theta for c in self._choices() if c.theta is not None]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        arch = self.arch_parameters()
        if not self.hparams.train_weights:
            return [self.arch_factory(arch)]
        return [self.weight_factory(weight_param_groups(self.net, exclude=arch)), self.arch_factory(arch)]

    # ---- schedules ------------------------------------------------------------------------------
    def progress(self, batch_idx: int) -> float:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return min(self.training_batch_index(batch_idx) / total, 1.0)

    def schedule(self, p: float) -> tuple[float, float | torch.Tensor, bool, float]:
        """(tau, budget weight, arch_active, entropy weight) at progress p in [0, 1]. The budget
        weight is the multiplier mu (lagrange; a copy of its buffer, on its device; the arch step
        adds `dual_kp` (r - 1)) or lambda ramped linearly after the warm-up."""
        h = self.hparams
        tau = h.tau_start * (h.tau_end / h.tau_start) ** p
        active = p >= h.warmup_fraction
        if h.penalty == "lagrange":
            weight = self.dual.clone()
        else:
            ramp = 1.0 if h.ramp_fraction == 0 else min(max((p - h.warmup_fraction) / h.ramp_fraction, 0.0), 1.0)
            weight = h.lam * ramp
        sharpen = h.entropy_weight * max(0.0, (p - h.sharpen_from) / (1.0 - h.sharpen_from))
        return tau, weight if active else 0.0, active, sharpen

    # ---- steps ----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._search_iter = None

    def _search_batch(self) -> tuple:
        """The next batch of the search split (cycling), moved to the parameters' device."""
        if self._search_iter is None:
            self._search_iter = iter(self.trainer.datamodule.search_dataloader())
        try:
            batch = next(self._search_iter)
        except StopIteration:
            self._search_iter = iter(self.trainer.datamodule.search_dataloader())
            batch = next(self._search_iter)
        return self._to_device(batch)

    def _to_device(self, batch: Any) -> Any:
        """The path Lightning's training loop takes with its own batches: the precision plugin's
        input conversion, then the batch-transfer hooks (on_before_batch_transfer,
        transfer_batch_to_device, on_after_batch_transfer; the datamodule's where it defines them)."""
        batch = self.trainer.precision_plugin.convert_input(batch)
        batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
        return self.trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _arch_terms(self, weight: float | torch.Tensor, sharpen: float) -> torch.Tensor:
        """The budget term, and the entropy term once the search sharpens its choices. Under
        `lagrange` the budget term's weight is mu plus `dual_kp` (r - 1), the gap the multiplier
        integrates measured now (before this step on theta)."""
        h = self.hparams
        quadratic = h.lam if h.penalty == "lagrange" else 0.0
        if h.dual_kp > 0 and isinstance(weight, torch.Tensor):
            gap = self.regularizer.dual_gap(on_argmax=self._progress >= h.sharpen_from)
            weight = weight + h.dual_kp * gap.to(weight.dtype)
        terms = self.regularizer.penalty(weight, quadratic)
        return terms + sharpen * self.regularizer.size_weighted_entropy() if sharpen > 0 else terms

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor | None:
        w_opt, a_opt = self.optimizers() if self.hparams.train_weights else (None, self.optimizers())
        progress = self._progress = self.progress(batch_idx)
        tau, weight, active, sharpen = self.schedule(progress)
        weights_step = w_opt is not None and progress < self.hparams.weights_until
        if self.hparams.refit_every > 1:  # refit on every k-th batch of an epoch; frozen weights keep their one fit
            hold_fitted_scales(self.net, hold=True, forget=weights_step and batch_idx % self.hparams.refit_every == 0)
        if w_opt is not None and not weights_step:
            self._freeze_weights()
        self.sampler.tau = tau
        self.sampler.hard = ((self.hparams.hard_below is not None and tau < self.hparams.hard_below)
                             or (self.hparams.hard_warmup and not active))
        single = self.hparams.single_level
        arch_step = active and not single and self.training_batch_index(batch_idx) % self.hparams.arch_every == 0
        if arch_step:
            arch_loss = self.task_loss(self._search_batch(), "search") + self._arch_terms(weight, sharpen)
            self.manual_backward(arch_loss)
            self.clip_gradients(a_opt, gradient_clip_val=self.hparams.arch_grad_clip,
                                gradient_clip_algorithm="norm")
            a_opt.step()
            self.log("search/loss", arch_loss)
        a_opt.zero_grad()
        loss = None if not weights_step else self._weight_step(batch, w_opt, a_opt, weight, sharpen, active and single)
        argmax_ratio = self.regularizer.argmax_measure() / self.regularizer.capacity
        if (arch_step or (active and single)) and self.hparams.penalty == "lagrange":
            self.dual.copy_(self.regularizer.update_dual(self.dual, self.hparams.dual_lr, argmax_ratio,
                                                         on_argmax=progress >= self.hparams.sharpen_from))
        with torch.no_grad():
            self.log_dict({**({} if loss is None else {"train/loss": loss}),
                           "arch/expected_bits": self.regularizer.expected_avg_bits(),
                           "arch/argmax_ratio": argmax_ratio.float(),
                           "arch/entropy": self.regularizer.mean_entropy(), "arch/tau": tau,
                           "arch/budget_weight": weight}, prog_bar=False)
        return loss

    def _release_scales(self) -> None:
        """Back to scales fitted on the weights as they are (validation, the plan's probes): the
        held ones forgotten (a fused optimizer's step leaves the version counters as they were)."""
        hold_fitted_scales(self.net, hold=False, forget=self.hparams.refit_every > 1)

    def on_train_end(self) -> None:
        self._release_scales()

    def _freeze_weights(self) -> None:
        """From `weights_until` on the choices alone move: no weight gradients from then on (also
        after a resume, which rebuilds the module trainable)."""
        if self._weights_frozen:
            return
        arch = {id(t) for t in self.arch_parameters()}
        for p in self.net.parameters():
            if id(p) not in arch:
                p.requires_grad_(False)
                p.grad = None
        self._weights_frozen = True

    def _weight_step(self, batch: tuple, w_opt, a_opt, weight: float | torch.Tensor, sharpen: float,
                     single: bool) -> torch.Tensor:
        """The training batch's loss (plus the budget terms when single-level); the weight step (and
        the choices' when single-level)."""
        w_opt.zero_grad()
        if self.hparams.weights_at == "plan":
            with training_at_plan(self.net, self.current_plan()):
                loss = self.task_loss(batch, "train")
        else:
            loss = self.task_loss(batch, "train")
        self.manual_backward(loss + self._arch_terms(weight, sharpen) if single else loss)
        self.clip_gradients(w_opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        w_opt.step()
        if self.hparams.refit_every == 1:
            self.clear_fitted_scales()
        if single:
            a_opt.step()
        w_opt.zero_grad()
        a_opt.zero_grad()
        return loss

    # ---- results and checkpoints ----------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._release_scales()
        super().on_validation_epoch_start()

    def _choices(self) -> list:
        return [g.choice for g in search_groups(self.net) + activation_groups(self.net)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["nas_mpq"]["sampler"] = self.sampler.state_dict()
        checkpoint["nas_mpq"]["best_plan"] = self.best_plan
        if self.plan_probe is not None:
            checkpoint["nas_mpq"]["validated_plans"] = self.plan_probe.validated

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("nas_mpq")
        if state is None or "sampler" not in state:
            raise ValueError("checkpoint has no search state (choices' sampler); it was not written "
                             "by a supernet search")
        self.sampler.load_state_dict(state["sampler"])
        self.best_plan = state.get("best_plan")
        if self.plan_probe is not None:
            self.plan_probe.validated, self.plan_probe.results = list(state.get("validated_plans", [])), None
        self._current_plan = None
        checkpoint["state_dict"].setdefault("dual", torch.zeros(()))  # written before the multiplier existed
        self.clear_fitted_scales()
        super().on_load_checkpoint(checkpoint)
