"""A plan's quality after a short recovery: the network's starting weights made a QAT model of the
plan, trained for a few steps at it and validated. The search's `plan_from: probe` compares its
candidate plans this way, each from the same weights, on the same batches and dropout masks, so
that none is favoured by having been trained longer than another (what a plan reaches after such
training predicts its finalized quality better than its validation on untrained weights)."""
from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from nas_mpq.plan import PrecisionPlan

from .common import OptimizerFactory
from .train import TrainModule


def probe_plan(net: nn.Module, start: dict[str, torch.Tensor], plan: PrecisionPlan, datamodule: pl.LightningDataModule,
               optimizer: OptimizerFactory, steps: int, grad_clip: float | None, seed: int,
               **trainer_kwargs: Any) -> float:
    """The validation perplexity of `plan` on a copy of `net` (a float or supernet network) with
    the weights `start` (its state dict), after `steps` steps of STE training at the plan on
    `datamodule`'s training batches (`optimizer`, gradient norm clipped at `grad_clip`, dropout
    masks drawn from `seed` and the step, as in every stage). `net` itself is left as it is;
    `trainer_kwargs` go to both Trainers (device, precision, validation batches, progress bar)."""
    probe_net = copy.deepcopy(net)
    probe_net.load_state_dict(start)
    module = TrainModule(probe_net, optimizer, seed=seed)
    module.plan = plan
    module.reinitialize()  # the plan's quantizers, fitted to the starting weights
    probe_net.requires_grad_(True)  # a copy of a search whose weights were frozen trains too
    quiet = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
    if steps:
        pl.Trainer(max_steps=steps, num_sanity_val_steps=0, gradient_clip_val=grad_clip,
                   **{**quiet, "limit_val_batches": 0}).fit(module, datamodule=datamodule)
    return pl.Trainer(**quiet).validate(module, datamodule=datamodule, verbose=False)[0]["val/ppl"]


def probe_all(net: nn.Module, start: dict[str, torch.Tensor], candidates: list[dict[str, Any]],
              datamodule: pl.LightningDataModule, optimizer: OptimizerFactory, steps: int, grad_clip: float | None,
              seed: int, **trainer_kwargs: Any) -> list[dict[str, Any]]:
    """Each candidate ({"plan": a plan dict, ...}) with its `probe_val_ppl` (probe_plan, every one
    from `start`, with the same batches and dropout masks); the global random state is left as it
    was."""
    with torch.random.fork_rng():
        return [{**c, "probe_val_ppl": probe_plan(net, start, PrecisionPlan.from_dict(c["plan"]), datamodule,
                                                  optimizer, steps, grad_clip, seed, **trainer_kwargs)}
                for c in candidates]


class PlanProbe:
    """What the search's `plan_from: probe` keeps: the plan it started from, the weights it started
    from (copied once, at its first fit's set-up: before a resume restores trained weights), the
    trainer settings the probes run with, each competing epoch's validated plan
    ({"epoch", "val_ppl", "plan"}, kept in checkpoints) and, once run, the probes (`results`: the
    candidates with their `probe_val_ppl`)."""

    def __init__(self, start_plan: PrecisionPlan, steps: int, top: int) -> None:
        self.start_plan, self.steps, self.top = start_plan, steps, top
        self.start_weights: dict[str, torch.Tensor] | None = None
        self.settings: dict[str, Any] = {}
        self.validated: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] | None = None

    def record_start(self, net: nn.Module, trainer: pl.Trainer) -> None:
        """At a fit's set-up: the starting weights (the first time only) and `trainer`'s settings."""
        if self.start_weights is None:
            self.start_weights = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        self.settings, self.results = trainer_settings(trainer), None

    def run(self, search: pl.LightningModule) -> list[dict[str, Any]]:
        """Probe the start plan and the `top` best-validated distinct plans (once; kept in
        `results`) with `search`'s network, weight optimiser, gradient clip and seed, on its fitted
        trainer's datamodule."""
        if self.results is None:
            if self.start_weights is None:
                raise RuntimeError("plan_from='probe' compares plans from the weights the search started from, "
                                   "which a fit of this module records; run trainer.fit first")
            self.results = probe_all(search.net, self.start_weights,
                                     probe_candidates(self.start_plan, self.validated, self.top),
                                     search.trainer.datamodule, search.weight_factory, self.steps,
                                     search.hparams.grad_clip, search.seed, **self.settings)
        return self.results


def probe_candidates(start: PrecisionPlan, validated: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The start plan (as {"epoch": None, "val_ppl": None, "plan": its dict}) followed by the
    `top` best-validated of `validated` ({"epoch", "val_ppl", "plan"}), each distinct plan once
    (at its best validation, the earlier epoch on a tie)."""
    out = [{"epoch": None, "val_ppl": None, "plan": start.to_dict()}]
    for c in sorted(validated, key=lambda c: (c["val_ppl"], c["epoch"])):
        if len(out) > top:
            break
        if all(_bits(c["plan"]) != _bits(o["plan"]) for o in out):
            out.append(c)
    return out


def trainer_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """The settings of `trainer` a probe runs with: its device (one), precision, validation
    batches and progress bar."""
    device = trainer.strategy.root_device
    where = ({"accelerator": "gpu", "devices": [device.index or 0]} if device.type == "cuda"
             else {"accelerator": device.type, "devices": 1})
    return {**where, "precision": trainer.precision, "limit_val_batches": trainer.limit_val_batches,
            "enable_progress_bar": trainer.progress_bar_callback is not None}


def _bits(plan: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """A plan dict's bits per weight group and per quantized layer input."""
    return ({n: g["bits"] for n, g in plan["groups"].items()},
            {n: a["bits"] for n, a in plan.get("activations", {}).items()})
