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

from nas_mpq.plan import PrecisionPlan
from nas_mpq.sensitivity import uniform_bits_for, uniform_plan_for

from .base import StageCLI
from .finalize import FinalizeCLI
from .finalize import run as run_finalize
from .overrides import route_overrides
from .pretrain import PretrainCLI
from .pretrain import run as run_pretrain
from .report import build_report, log_report, write_report
from .search import SearchCLI
from .search import run as run_search

PIPELINE_CLIS: dict[str, type[StageCLI]] = {"pretrain": PretrainCLI, "search": SearchCLI, "finalize": FinalizeCLI}
RUN_DIR_FIELDS = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
"""The environment variables `--run_dir` may name as {NAME}: the ids a sweep agent or a job
scheduler gives a run (no other variable, so a secret in the environment never lands in a path)."""
MARKER = "metrics.json"  # written last by every stage: the stage is complete


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
            uniform_plan_for(plan, bits).save(uniform_plan, overwrite=True)
        uniform_metrics = stage("uniform", run_finalize, *init, "--plan", str(uniform_plan))
        uniform_metrics["bits"] = bits
    report = build_report(fp32, search, mixed, uniform_metrics, plan, timings)
    write_report(root, report)
    return report


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nas-mpq run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="pipeline config with pretrain/search/finalize sections")
    ap.add_argument("--run_dir", required=True,
                    help="where the run writes; {NAME} expands $NAME for NAME in " + ", ".join(RUN_DIR_FIELDS))
    ap.add_argument("--overwrite", default="false", choices=["true", "false"])
    ap.add_argument("--init_ckpt", default=None, help="an FP32 checkpoint to start from instead of pretraining")
    ap.add_argument("--finalize", default="true", choices=["true", "false"], help="finalize the searched plan")
    ap.add_argument("--uniform", default="true", choices=["true", "false"],
                    help="also finalize the uniform plan at the same budget, for reference")
    args, extra = ap.parse_known_args(argv)
    run_dir = resolve_run_dir(args.run_dir)
    report = run_pipeline(args.config, run_dir, extra, args.overwrite == "true",
                          args.init_ckpt, args.finalize == "true", args.uniform == "true")
    search_config = SearchCLI(["--config", args.config, *route_overrides(extra)["search"]], check_only=True)
    log_report(report, search_config.wandb_config(), run_dir)
    print(json.dumps(report, indent=1))
    return 0
