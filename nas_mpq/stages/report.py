"""The report of a `nas-mpq run`: FP32 vs the searched mixed-precision model vs the uniform
reference at the same budget, as report.json (written last: the mark of a finished run),
report.md and ppl.png, and as a wandb run's summary (what a wandb sweep reads its metric from).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nas_mpq.files import write_atomic
from nas_mpq.plan import PrecisionPlan
from nas_mpq.plots import plot_stage_ppl
from nas_mpq.tracking import WandbConfig


def _quantized(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("test_ppl", "val_ppl", "test_acc", "size_bits", "compression", "avg_bits", "method",
                              "epochs_to_best_val", "model") if k in m}


def build_report(fp32: dict | None, search: dict, mixed: dict, uniform: dict | None, plan: PrecisionPlan,
                 timings: dict[str, float]) -> dict[str, Any]:
    """`mixed` is the finalize stage's metrics, or the search's when the run does not finalize
    (then it has a validation perplexity of the supernet's plan and no test perplexity)."""
    r = plan.size()
    return {
        "fp32": {"test_ppl": fp32["test_ppl"] if fp32 else None, "val_ppl": fp32["val_ppl"] if fp32 else None,
                 **({"test_acc": fp32["test_acc"]} if fp32 and "test_acc" in fp32 else {}),
                 "size_bits": r.fp32_size_bits},
        "search": {"val_ppl_history": search["val_ppl_history"], "bits_used": search["bits_used"],
                   **({"activation_bits": search["activation_bits"]} if search.get("activation_bits") else {})},
        "mixed": {"test_ppl": None, **_quantized(mixed), "size_mb": r.size_bits / 8e6},
        "uniform": None if uniform is None else {"bits": uniform["bits"], **_quantized(uniform)},
        "budget": None if plan.budget is None else {"kind": plan.budget.kind, "value": plan.budget.value},
        "timings_s": timings,
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def write_report(root: Path, report: dict[str, Any]) -> None:
    """ppl.png, report.md (a table and the plots) and, last, report.json: the mark of a finished run."""
    fp32 = report["fp32"]
    rows = [("FP32", fp32["test_ppl"], fp32.get("test_acc"), fp32["size_bits"], 1.0, 32.0)]
    for key, label in (("mixed", "mixed precision (searched)"), ("uniform", "uniform")):
        m = report[key]
        if m:
            name = f"{label} {m['bits']} bit" if key == "uniform" else label
            rows.append((name, m["test_ppl"], m.get("test_acc"), m["size_bits"], m["compression"], m["avg_bits"]))
    tested = {name: ppl for name, ppl, *_ in rows if ppl is not None}
    accuracy = any(acc is not None for _, _, acc, *_ in rows)  # a classifier: its accuracy too
    if tested:
        plot_stage_ppl(tested, root / "ppl.png")
    budget = report["budget"]
    lines = ["# nas-mpq run report", "",
             f"Budget: {budget['kind']} = {budget['value']}" if budget else "No budget", "",
             "| model | test ppl |" + (" test acc |" if accuracy else "") + " size (MB) | compression | avg bits |",
             "|---|---:|" + ("---:|" if accuracy else "") + "---:|---:|---:|"]
    lines += [f"| {n} | {_fmt(p)} |" + (f" {_fmt(None if acc is None else 100 * acc)} % |" if accuracy else "")
              + f" {s / 8e6:.3f} | {c:.2f}x | {a:.3f} |" for n, p, acc, s, c, a in rows]
    hist = ", ".join(f"{v:.1f}" for v in report["search"]["val_ppl_history"])
    acts = report["search"].get("activation_bits")
    if acts:
        lines += ["", "Layer input bits: " + ", ".join(f"{n} {b}" for n, b in acts.items())]
    lines += ["", f"Supernet val perplexity per epoch: {hist}", "",
              "Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), "",
              "![bits per group](search/plan.png)", ""]
    lines += ["![perplexity per stage](ppl.png)", ""] if tested else []
    write_atomic(root / "report.md", "\n".join(lines))
    write_atomic(root / "report.json", json.dumps(report, indent=1) + "\n")


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as {"mixed/val_ppl": ...}: what a wandb sweep's metric names."""
    return {f"{section}/{k}": v for section in ("fp32", "mixed", "uniform") for k, v in (report[section] or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_report(report: dict[str, Any], wandb_config: WandbConfig, root: Path) -> None:
    """Log the report's numbers to a wandb run of its own when `wandb_config` (the run's, as its
    search stage reads it) sets a project or a wandb agent started this run (WANDB_SWEEP_ID): the
    run a wandb sweep reads its metric from."""
    if not wandb_config.project and "WANDB_SWEEP_ID" not in os.environ:
        return
    import wandb
    run = wandb.init(project=wandb_config.project, name=wandb_config.name or root.name, group=wandb_config.group,
                     job_type="report", dir=str(root), mode=wandb_config.resolved_mode())
    run.summary.update(flat_metrics(report))
    run.finish()
