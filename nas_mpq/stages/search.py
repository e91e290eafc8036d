"""`nas-mpq search`: the supernet search; writes the plan that meets the budget (plan.json,
plan.png) and a checkpoint per epoch.

    nas-mpq search --config configs/shakespeare_lstm/search.yaml --run_dir runs/search \
                   --init_ckpt runs/fp32/model.ckpt
"""
from __future__ import annotations

from typing import Any

from nas_mpq.lit import SupernetModule, load_net_weights
from nas_mpq.plots import plot_plan
from nas_mpq.search import coverage_summary

from .base import StageCLI


class SearchCLI(StageCLI):
    stage, model_class, result_file = "search", SupernetModule, "plan.json"
    checkpoint_every_epoch = True


def run(argv: list[str], callbacks: list[Any] = ()) -> int:
    cli = SearchCLI(argv, callbacks)
    module: SupernetModule = cli.model
    if cli.config.init_ckpt:
        load_net_weights(module.net, cli.config.init_ckpt)
    cli.trainer.fit(module, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    plan = module.derive_plan()
    probes = module.plan_probe.results if module.plan_probe is not None else None
    rank0_bits = cli.trainer.strategy.broadcast(plan.bits)
    if rank0_bits != plan.bits:  # identical choices on every rank are what data parallelism relies on
        differ = sorted(n for n in plan.bits if plan.bits[n] != rank0_bits.get(n))
        raise RuntimeError(f"rank {cli.trainer.global_rank} derived a plan that differs from rank 0's "
                           f"in groups {differ}")
    if not cli.trainer.is_global_zero:
        return 0
    plan.save(cli.run_dir / cli.result_file, overwrite=cli.config.overwrite)
    plot_plan(plan, cli.run_dir / "plan.png")
    r = plan.size()
    metrics = {"stage": "search", "val_ppl_history": module.val_history,
               "val_ppl": module.val_history[-1] if module.val_history else None,
               "expected_bits": float(module.regularizer.expected_avg_bits().detach()),
               "budget": {"kind": module.budget.kind, "value": module.budget.value},
               "size_bits": r.size_bits, "fp32_size_bits": r.fp32_size_bits,
               "compression": r.compression, "avg_bits": r.avg_bits,
               "bits_used": sorted(set(plan.bits.values())), "repair": plan.extra.get("repair"),
               "search_epoch": plan.extra.get("search_epoch"),
               **({"probes": [{k: c[k] for k in ("epoch", "val_ppl", "probe_val_ppl")} for c in probes]}
                  if probes else {}),
               **({"activation_bits": plan.activation_bits} if plan.activations else {})}
    print(plan.summary_table())
    print(coverage_summary(plan.extra["coverage"]))
    repair = plan.extra.get("repair") or {}
    print(f"repair: {repair.get('groups_changed', 0)} groups changed, {repair.get('bits_moved', 0)} bits moved "
          f"(argmax plan avg {repair.get('argmax_avg_bits', r.avg_bits):.3f} bits -> {r.avg_bits:.3f}): "
          f"{repair.get('changed', {})}")
    for c in probes or []:
        print(f"probe: {'start plan' if c['epoch'] is None else 'epoch %d' % c['epoch']}: "
              f"val ppl {c['probe_val_ppl']:.2f} after {module.hparams.probe_steps} steps")
    cli.finish(metrics, plan)
    return 0
