"""`nas-mpq sensitivity`: per-group sensitivity of a trained FP32 model and a plan at the budget.

    nas-mpq sensitivity --config configs/shakespeare_lstm/search.yaml --ckpt runs/fp32/model.ckpt \
                        --method hessian --run_dir runs/hessian

The model, search space, budget and data come from the config's search section (the same keys as
`nas-mpq search`). Methods: hessian (Hutchinson trace, HAWQ-V2 Omega), kl (KL of next-token
distributions (class distributions for a classifier) with one group quantized), and the baselines uniform (every group at --bits, by
default the largest candidate meeting the budget) and random (seeded). Writes sensitivity.json
(hessian and kl), plan.json and sensitivity.png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.nn import functional as F

from .files import write_atomic
from .lit import SupernetModule, batch_logits, load_net_weights
from .plan import PrecisionPlan
from .plots import plot_plan, plot_sensitivity
from .search import to_float_, uniform_plan
from .sensitivity import (allocate, hawq_omega, hutchinson_traces, kl_sensitivity, random_plan,
                          uniform_plan_for)

METHODS = ("hessian", "kl", "uniform", "random")


def _loss(model: Any, batch: tuple) -> Any:
    logits, y, _ = batch_logits(model, batch, None)
    return F.cross_entropy(logits, y)


def _take(loader: Any, n: int) -> list:
    out = []
    for batch in loader:
        if len(out) == n:
            break
        out.append(batch)
    return out


def run(argv: list[str]) -> int:
    from .cli import StageCLI, stage_args

    cli = StageCLI("sensitivity", SupernetModule, stage_args("search", argv))
    cfg, module = cli.config, cli.model
    cli.run_dir.mkdir(parents=True, exist_ok=True)
    net = to_float_(module.net).eval()
    load_net_weights(net, cfg.ckpt)  # a checkpoint that does not fit fails here, before any work
    space, budget = module.space, module.budget
    template = uniform_plan(net, space, 32)
    template = PrecisionPlan(template.search_space, space.candidates, template.groups,
                             template.fixed_numel, budget)
    dm = cli.datamodule
    report: dict[str, Any] = {"method": cfg.method, "budget": {"kind": budget.kind, "value": budget.value}}
    if cfg.method in ("hessian", "kl"):
        if cfg.method == "hessian":
            est = hutchinson_traces(net, _loss, _take(dm.train_dataloader(), cfg.num_batches), template.groups,
                                    max_samples=cfg.max_samples, tol=cfg.tol, seed=cfg.seed_everything)
            omega = hawq_omega(net, template.groups, est.traces, space.candidates, space.method, space.per_channel)
            report["samples"] = est.samples
        else:
            omega = kl_sensitivity(net, template.groups, space.candidates, _take(dm.search_dataloader(), cfg.num_batches),
                                   lambda m, b: batch_logits(m, b, None)[0], space.method, space.per_channel)
        report["groups"] = {n: {"numel": g.numel, **({"trace": est.traces[n]} if cfg.method == "hessian" else {}),
                                "omega": {str(b): v for b, v in omega[n].items()}}
                            for n, g in template.groups.items()}
        plan = allocate(template, omega, budget)
        write_atomic(cli.run_dir / "sensitivity.json", json.dumps(report, indent=1) + "\n")
        plot_sensitivity(omega, cli.run_dir / "sensitivity.png", cfg.method)
    elif cfg.method == "uniform":
        from .pipeline import uniform_bits_for
        bits = cfg.bits if cfg.bits is not None else uniform_bits_for(template)
        if bits is None:
            raise SystemExit(f"error: no uniform bit-width among {space.candidates} meets the budget")
        plan = uniform_plan_for(template, bits, budget)
    else:
        plan = random_plan(template, budget, seed=cfg.seed_everything)
    plan.extra["allocator"] = cfg.method
    plan.save(cli.run_dir / "plan.json", overwrite=cfg.overwrite)
    plot_plan(plan, cli.run_dir / "plan.png")
    r = plan.size()
    cli.finish({"stage": "sensitivity", "method": cfg.method, "plan": str(cli.run_dir / "plan.json"),
                "avg_bits": r.avg_bits, "compression": r.compression, "size_bits": r.size_bits}, plan)
    return 0


def load_sensitivity(path: str | Path) -> dict[str, dict[int, float]]:
    """Omega per group and bit-width from a sensitivity.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return {n: {int(b): float(v) for b, v in g["omega"].items()} for n, g in data["groups"].items()}
    except FileNotFoundError:
        raise FileNotFoundError(f"sensitivity file {path} does not exist") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a sensitivity.json written by nas-mpq sensitivity ({e})") from None
