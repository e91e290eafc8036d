"""`nas-mpq run`: the main job. pretrain -> search -> finalize (+ export) -> report, and for
reference a uniform-precision model at the same budget through the same finalize.

    nas-mpq run --config configs/shakespeare_lstm/quick.yaml --run_dir runs/q

The config is a pipeline config with `pretrain:`, `search:` and `finalize:` sections. Extra
arguments go to every stage (`--trainer.max_epochs 1`, `--data.batch_size 16`) or, prefixed with a
section name, to one (`--search.model.lam 2`). A stage whose result exists in the run directory is
reused (an interrupted run continues); a finished run (report.json) is never overwritten unless
--overwrite true is given.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

from .plan import PrecisionPlan
from .plots import plot_stage_ppl

PIPELINE_STAGES = ("pretrain", "search", "finalize")


def route_overrides(extra: list[str]) -> dict[str, list[str]]:
    """Split `--key value` overrides into per-stage lists (a `--<stage>.` prefix selects one)."""
    routed: dict[str, list[str]] = {s: [] for s in PIPELINE_STAGES}
    i = 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith("--"):
            raise SystemExit(f"error: unexpected argument {flag!r}; overrides look like --trainer.max_epochs 2")
        key, has_value, value = flag[2:].partition("=")
        values = [value] if has_value else []
        i += 1
        if not has_value and i < len(extra) and not extra[i].startswith("--"):
            values, i = [extra[i]], i + 1
        head, _, rest = key.partition(".")
        targets = [head] if head in PIPELINE_STAGES and rest else list(PIPELINE_STAGES)
        key = rest if head in PIPELINE_STAGES and rest else key
        for t in targets:
            routed[t] += [f"--{key}", *values]
    return routed


def uniform_bits_for(plan: PrecisionPlan) -> int | None:
    """The largest candidate below 32 bits at which every group together meets the plan's budget."""
    for bits in sorted((b for b in plan.candidates if 0 < b < 32), reverse=True):
        if plan.with_bits({n: bits for n in plan.groups}).meets_budget():
            return bits
    return None


def run(argv: list[str]) -> int:
    from .cli import run_finalize, run_pretrain, run_search

    ap = argparse.ArgumentParser(prog="nas-mpq run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="pipeline config with pretrain/search/finalize sections")
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--overwrite", default="false", choices=["true", "false"])
    args, extra = ap.parse_known_args(argv)
    overwrite = args.overwrite == "true"
    root = Path(args.run_dir)
    if (root / "report.json").exists() and not overwrite:
        raise SystemExit(f"error: {root} holds a finished run (report.json); refusing to overwrite it "
                         "(pass --overwrite true, or choose another --run_dir)")
    routed = route_overrides(extra)
    timings: dict[str, float] = {}

    def stage(name: str, runner: Callable[[list[str]], int], section: str, result: str, *more: str) -> dict:
        folder = root / name
        if not (folder / result).exists() or overwrite:
            start = time.perf_counter()
            runner(["--config", args.config, "--run_dir", str(folder), *more, *routed[section],
                    *(["--overwrite", "true"] if overwrite else [])])
            timings[name] = round(time.perf_counter() - start, 1)
        else:
            print(f"reusing {folder / result}")
        return json.loads((folder / "metrics.json").read_text())

    fp32 = stage("pretrain", run_pretrain, "pretrain", "model.ckpt")
    init = ("--init_ckpt", str(root / "pretrain" / "model.ckpt"))
    search = stage("search", run_search, "search", "plan.json", *init)
    mixed = stage("finalize", run_finalize, "finalize", "model.safetensors", *init,
                  "--plan", str(root / "search" / "plan.json"))
    plan = PrecisionPlan.load(root / "search" / "plan.json")
    bits = uniform_bits_for(plan)
    uniform = None
    if bits is not None:
        uniform_plan = root / "uniform" / "plan.json"
        if not uniform_plan.exists():
            plan.with_bits({n: bits for n in plan.groups}).save(uniform_plan)
        uniform = stage("uniform", run_finalize, "finalize", "model.safetensors", *init, "--plan", str(uniform_plan))
        uniform["bits"] = bits
    report = build_report(fp32, search, mixed, uniform, plan, timings)
    write_report(root, report)
    print(json.dumps(report, indent=1))
    return 0


def _quantized(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("test_ppl", "val_ppl", "size_bits", "compression", "avg_bits", "method",
                              "epochs_to_best_val", "model") if k in m}


def build_report(fp32: dict, search: dict, mixed: dict, uniform: dict | None, plan: PrecisionPlan,
                 timings: dict[str, float]) -> dict[str, Any]:
    r = plan.size()
    return {
        "fp32": {"test_ppl": fp32["test_ppl"], "val_ppl": fp32["val_ppl"], "size_bits": r.fp32_size_bits},
        "search": {"val_ppl_history": search["val_ppl_history"], "bits_used": search["bits_used"]},
        "mixed": _quantized(mixed),
        "uniform": None if uniform is None else {"bits": uniform["bits"], **_quantized(uniform)},
        "budget": None if plan.budget is None else {"kind": plan.budget.kind, "value": plan.budget.value},
        "timings_s": timings,
    }


def write_report(root: Path, report: dict[str, Any]) -> None:
    """report.json, report.md (a table and the plots) and ppl.png."""
    (root / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = [("FP32", report["fp32"]["test_ppl"], report["fp32"]["size_bits"], 1.0, 32.0)]
    for key, label in (("mixed", "mixed precision (searched)"), ("uniform", "uniform")):
        m = report[key]
        if m:
            name = f"{label} {m['bits']} bit" if key == "uniform" else label
            rows.append((name, m["test_ppl"], m["size_bits"], m["compression"], m["avg_bits"]))
    plot_stage_ppl({name: ppl for name, ppl, *_ in rows}, root / "ppl.png")
    budget = report["budget"]
    lines = ["# nas-mpq run report", "",
             f"Budget: {budget['kind']} = {budget['value']}" if budget else "No budget", "",
             "| model | test ppl | size (MB) | compression | avg bits |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {p:.2f} | {s / 8e6:.3f} | {c:.2f}x | {a:.3f} |" for n, p, s, c, a in rows]
    hist = ", ".join(f"{v:.1f}" for v in report["search"]["val_ppl_history"])
    lines += ["", f"Supernet val perplexity per epoch: {hist}", "",
              "Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), "",
              "![bits per group](search/plan.png)", "", "![perplexity per stage](ppl.png)", ""]
    (root / "report.md").write_text("\n".join(lines))
