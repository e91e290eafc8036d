"""`nas-mpq run`: the main job. pretrain -> search -> finalize (+ export) -> report, and for
reference a uniform-precision model at the same budget through the same finalize.

    nas-mpq run --config configs/shakespeare_lstm/quick.yaml --run_dir runs/q

The config is a pipeline config with `pretrain:`, `search:` and `finalize:` sections. Extra
arguments go to every stage (`--trainer.max_epochs 1`, `--data.batch_size 16`) or, prefixed with a
section name, to one (`--search.model.lam 2`). Every stage writes its metrics.json last, as its
completion marker: a stage with one is reused; a stage without one was interrupted and is resumed
from its checkpoints/last.ckpt (or started again when it has none), so rerunning the same command
finishes an interrupted run; `--<stage>.resume CKPT` resumes that one stage from a checkpoint of
your choice. A finished run (report.json, written last) is never overwritten unless
--overwrite true is given. `--init_ckpt FP32.ckpt` starts from a trained model instead of
pretraining, `--finalize false` stops after the search, `--uniform false` skips the reference; a
sweep trial is such a run. `--run_dir runs/sweep/{WANDB_RUN_ID}` names an environment variable
(RUN_DIR_FIELDS).
"""
from __future__ import annotations

import argparse
import json
import os
import string
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import yaml

from .files import write_atomic
from .plan import PrecisionPlan
from .plots import plot_stage_ppl
from .tracking import WandbConfig

PIPELINE_STAGES = ("pretrain", "search", "finalize")
RUN_DIR_FIELDS = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
"""The environment variables `--run_dir` may name as {NAME}: the ids a sweep agent or a job
scheduler gives a run (no other variable, so a secret in the environment never lands in a path)."""
# the uniform reference is finalized with the finalize section's config and overrides
ROUTES = (*PIPELINE_STAGES, "uniform")
MARKER = "metrics.json"  # written last by every stage: the stage is complete


def route_overrides(extra: list[str]) -> dict[str, list[str]]:
    """Split `--key value` overrides into per-stage lists, keyed by ROUTES. A `--<stage>.` prefix
    selects one stage (`--finalize.` the uniform reference too, which is finalized the same way),
    except `--<stage>.resume CKPT`, which goes to that stage alone: a checkpoint is one stage's."""
    routed: dict[str, list[str]] = {s: [] for s in ROUTES}
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
        if head in ROUTES and rest:
            targets, key = [head, *(["uniform"] if head == "finalize" and rest != "resume" else [])], rest
        elif key == "resume":
            raise SystemExit("error: --resume needs a stage: a run resumes every interrupted stage by "
                             "itself; to resume one stage from a checkpoint of your choice write "
                             f"--<stage>.resume CKPT (stages: {list(ROUTES)})")
        else:
            targets = list(ROUTES)
        for t in targets:
            routed[t] += [f"--{key}", *values]
    return routed


def uniform_bits_for(plan: PrecisionPlan) -> int | None:
    """The largest candidate below 32 bits at which every group together meets the plan's budget."""
    for bits in sorted((b for b in plan.candidates if 0 < b < 32), reverse=True):
        if plan.with_bits({n: bits for n in plan.groups}).meets_budget():
            return bits
    return None


def resolve_run_dir(template: str) -> Path:
    """`--run_dir` with every {NAME} replaced by the environment variable NAME, one of
    RUN_DIR_FIELDS (a wandb agent's {WANDB_RUN_ID}); {{ and }} are braces. Only plain names: an
    attribute, index, conversion or format spec is an error naming the valid fields, and so is a
    variable that is unset or whose value is not one path component."""
    def refuse(why: str) -> NoReturn:
        valid = ", ".join(f"{{{name}}}" for name in RUN_DIR_FIELDS)
        raise SystemExit(f"error: --run_dir {template!r}: {why}; valid fields: {valid} "
                         "(write {{ and }} for braces)")

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        refuse(str(e))
    out = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in RUN_DIR_FIELDS or spec or conversion:
            field = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            refuse(f"{{{field}}} is not a valid field")
        value = os.environ.get(name, "")
        if not value:
            refuse(f"{{{name}}} names the environment variable {name}, which is not set")
        if "/" in value or value in (".", ".."):
            refuse(f"{{{name}}} must be one path component, but ${name} is {value!r}")
        out.append(value)
    return Path("".join(out))


def restart_flags(folder: Path, overrides: list[str], overwrite: bool = False) -> list[str] | None:
    """How `nas-mpq run` runs the stage in `folder`: None when it is complete (its MARKER exists)
    and is reused; otherwise the flags that run it again. What an unfinished stage wrote is not a
    result, so it is replaced (`--overwrite true`), and a stage interrupted after a checkpoint
    continues from it (`--resume last`) unless `overrides` name a checkpoint or `overwrite` asks
    for a fresh start."""
    if (folder / MARKER).is_file() and not overwrite:
        return None
    resume = not overwrite and "--resume" not in overrides and (folder / "checkpoints" / "last.ckpt").is_file()
    return ["--overwrite", "true", *(["--resume", "last"] if resume else [])]


def run_pipeline(config: str, run_dir: str | Path, overrides: list[str] = (), overwrite: bool = False,
                 init_ckpt: str | None = None, finalize: bool = True, uniform: bool = True,
                 callbacks: list[Any] = ()) -> dict[str, Any]:
    """pretrain (unless `init_ckpt` gives the FP32 model) -> search -> finalize (unless `finalize`
    is False) -> the uniform reference (unless `uniform` is False) -> report.json/report.md.
    `callbacks` join every stage's trainer (a sweep's pruning callback). Returns the report."""
    from .cli import run_finalize, run_pretrain, run_search

    root = Path(run_dir)
    if (root / "report.json").exists() and not overwrite:
        raise SystemExit(f"error: {root} holds a finished run (report.json); refusing to overwrite it "
                         "(pass --overwrite true, or choose another --run_dir)")
    if init_ckpt is not None and not Path(init_ckpt).is_file():
        raise SystemExit(f"error: --init_ckpt {init_ckpt} does not exist")
    routed = route_overrides(list(overrides))
    timings: dict[str, float] = {}

    def stage(name: str, runner: Callable[..., int], *more: str) -> dict:
        folder = root / name
        flags = restart_flags(folder, routed[name], overwrite)
        if flags is None:
            print(f"reusing {folder} (complete: {MARKER})")
        else:
            start = time.perf_counter()
            runner(["--config", config, "--run_dir", str(folder), *more, *routed[name], *flags], callbacks)
            timings[name] = round(time.perf_counter() - start, 1)
        return json.loads((folder / MARKER).read_text())

    if init_ckpt is None:
        fp32 = stage("pretrain", run_pretrain)
        init_ckpt = str(root / "pretrain" / "model.ckpt")
    else:
        fp32_metrics = Path(init_ckpt).parent / "metrics.json"
        fp32 = json.loads(fp32_metrics.read_text()) if fp32_metrics.is_file() else None
    init = ("--init_ckpt", init_ckpt)
    search = stage("search", run_search, *init)
    plan = PrecisionPlan.load(root / "search" / "plan.json")
    mixed = search
    if finalize:
        mixed = stage("finalize", run_finalize, *init, "--plan", str(root / "search" / "plan.json"))
    bits = uniform_bits_for(plan) if finalize and uniform else None
    uniform_metrics = None
    if bits is not None:
        uniform_plan = root / "uniform" / "plan.json"
        if restart_flags(root / "uniform", routed["uniform"], overwrite) is not None:
            plan.with_bits({n: bits for n in plan.groups}).save(uniform_plan, overwrite=True)
        uniform_metrics = stage("uniform", run_finalize, *init, "--plan", str(uniform_plan))
        uniform_metrics["bits"] = bits
    report = build_report(fp32, search, mixed, uniform_metrics, plan, timings)
    write_report(root, report)
    return report


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nas-mpq run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="pipeline config with pretrain/search/finalize sections")
    ap.add_argument("--run_dir", required=True, help="where the run writes; {NAME} expands $NAME for NAME in " + ", ".join(RUN_DIR_FIELDS))
    ap.add_argument("--overwrite", default="false", choices=["true", "false"])
    ap.add_argument("--init_ckpt", default=None, help="an FP32 checkpoint to start from instead of pretraining")
    ap.add_argument("--finalize", default="true", choices=["true", "false"], help="finalize the searched plan")
    ap.add_argument("--uniform", default="true", choices=["true", "false"],
                    help="also finalize the uniform plan at the same budget, for reference")
    args, extra = ap.parse_known_args(argv)
    run_dir = resolve_run_dir(args.run_dir)
    report = run_pipeline(args.config, run_dir, extra, args.overwrite == "true",
                          args.init_ckpt, args.finalize == "true", args.uniform == "true")
    log_report(report, args.config, run_dir, extra)
    print(json.dumps(report, indent=1))
    return 0


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


def log_report(report: dict[str, Any], config: str, root: Path, overrides: list[str] = ()) -> None:
    """Log the report's numbers to a wandb run of its own when the config (or a --wandb.project
    override) sets a project or a wandb agent started this run (WANDB_SWEEP_ID): the run a wandb
    sweep reads its metric from."""
    shared = dict(yaml.safe_load(Path(config).read_text()).get("wandb") or {})
    flags = route_overrides(list(overrides))["search"]
    shared.update({k[len("--wandb."):]: v for k, v in zip(flags, flags[1:]) if k.startswith("--wandb.")})
    if not shared.get("project") and "WANDB_SWEEP_ID" not in os.environ:
        return
    import wandb
    cfg = WandbConfig(**shared)
    run = wandb.init(project=cfg.project, name=cfg.name or root.name, group=cfg.group, job_type="report",
                     dir=str(root), mode=cfg.resolved_mode())
    run.summary.update(flat_metrics(report))
    run.finish()
