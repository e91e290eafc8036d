"""`nas-mpq sensitivity`: per-group sensitivity of a trained FP32 model and a plan at the budget.

    nas-mpq sensitivity --config configs/shakespeare_lstm/search.yaml --ckpt runs/fp32/model.ckpt \
                        --method hessian --run_dir runs/hessian

The model, search space, budget and data come from the config's search section (the same keys as
`nas-mpq search`). Methods: hessian (Hutchinson trace, HAWQ-V2 Omega), kl (KL of next-token
distributions (class distributions for a classifier) with one group quantized), and the baselines
uniform (every group at --bits, by default the largest candidate meeting the budget) and random
(seeded). Writes sensitivity.json (hessian and kl), plan.json and sensitivity.png. The measurement
runs on the trainer's device, as training does: Lightning's accelerator "auto" takes the first
GPU where there is one; `--trainer.accelerator cpu` keeps it on the CPU.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pytorch_lightning.utilities import move_data_to_device
from torch.nn import functional as F

from nas_mpq.files import write_atomic
from nas_mpq.lit import SupernetModule, load_net_weights
from nas_mpq.metrics import batch_logits
from nas_mpq.plan import PrecisionPlan
from nas_mpq.plots import plot_plan, plot_sensitivity
from nas_mpq.search import to_float_, uniform_plan
from nas_mpq.sensitivity import (allocate, hawq_omega, hutchinson_traces, kl_sensitivity, random_plan,
                                 sensitivity_report, uniform_bits_for, uniform_plan_for)

from .base import StageCLI

METHODS = ("hessian", "kl", "uniform", "random")


class SensitivityCLI(StageCLI):
    stage, model_class, result_file, section = "sensitivity", SupernetModule, "plan.json", "search"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt", type=str, required=True, help="the trained FP32 checkpoint")
        parser.add_argument("--method", type=Literal[METHODS], default="hessian")
        parser.add_argument("--bits", type=int | None, default=None, help="uniform: the bit-width")
        parser.add_argument("--num_batches", type=int, default=4, help="batches to average over")
        parser.add_argument("--max_samples", type=int, default=100, help="hessian: Hutchinson samples per batch")
        parser.add_argument("--tol", type=float, default=1e-3, help="hessian: relative tolerance")


def _loss(model: Any, batch: tuple) -> Any:
    logits, y, _ = batch_logits(model, batch, None)
    return F.cross_entropy(logits, y)


def _take(loader: Any, n: int, device: Any) -> list:
    """The loader's first n batches, on the device."""
    out = []
    for batch in loader:
        if len(out) == n:
            break
        out.append(move_data_to_device(batch, device))
    return out


def _measure(cfg: Any, net: Any, module: SupernetModule, template: PrecisionPlan,
             dm: Any) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """Omega per group and bit-width by the method `cfg` names (hessian or kl), and the content of
    sensitivity.json."""
    search_space = module.search_space
    candidates, method, per_channel = search_space.candidates, search_space.method, search_space.per_channel
    device = next(net.parameters()).device
    if cfg.method == "hessian":
        est = hutchinson_traces(net, _loss, _take(dm.train_dataloader(), cfg.num_batches, device), template.groups,
                                max_samples=cfg.max_samples, tol=cfg.tol, seed=cfg.seed_everything)
        omega = hawq_omega(net, template.groups, est.traces, candidates, method, per_channel)
        return omega, sensitivity_report(cfg.method, module.budget, template.groups, omega, est.traces, est.samples)
    omega = kl_sensitivity(net, template.groups, candidates, _take(dm.search_dataloader(), cfg.num_batches, device),
                           lambda m, b: batch_logits(m, b, None)[0], method, per_channel)
    return omega, sensitivity_report(cfg.method, module.budget, template.groups, omega)


def run(argv: list[str]) -> int:
    cli = SensitivityCLI(argv)
    cfg, module = cli.config, cli.model
    cli.run_dir.mkdir(parents=True, exist_ok=True)
    net = to_float_(module.net).eval()
    load_net_weights(net, cfg.ckpt)  # a checkpoint that does not fit fails here, before any work
    search_space, budget = module.search_space, module.budget
    template = uniform_plan(net, search_space, 32)
    template = PrecisionPlan(template.space_name, search_space.candidates, template.groups,
                             template.fixed_numel, budget)
    if cfg.method in ("hessian", "kl"):
        net.to(cli.trainer.strategy.root_device)  # the trainer's device: "auto" takes a GPU where there is one
        omega, report = _measure(cfg, net, module, template, cli.datamodule)
        plan = allocate(template, omega, budget)
        write_atomic(cli.run_dir / "sensitivity.json", json.dumps(report, indent=1) + "\n")
        plot_sensitivity(omega, cli.run_dir / "sensitivity.png", cfg.method)
    elif cfg.method == "uniform":
        bits = cfg.bits if cfg.bits is not None else uniform_bits_for(template)
        if bits is None:
            raise SystemExit(f"error: no uniform bit-width among {search_space.candidates} meets the budget")
        plan = uniform_plan_for(template, bits, budget)
    else:
        plan = random_plan(template, budget, seed=cfg.seed_everything)
    plan.extra["allocator"] = cfg.method
    plan.save(cli.run_dir / cli.result_file, overwrite=cfg.overwrite)
    plot_plan(plan, cli.run_dir / "plan.png")
    r = plan.size()
    cli.finish({"stage": "sensitivity", "method": cfg.method, "plan": str(cli.run_dir / cli.result_file),
                "avg_bits": r.avg_bits, "compression": r.compression, "size_bits": r.size_bits}, plan)
    return 0
