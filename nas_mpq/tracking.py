"""wandb for every stage: a WandbLogger that is offline unless told otherwise (no account needed;
`wandb sync` uploads later), and the results a stage logs to it: the final metrics as the run's
summary, the plan as a table and the bits per group as a bar chart.

In a stage config (or a pipeline config's top level, shared by its stages):

    wandb: {project: nas-mpq, mode: offline}

The mode is `mode`, else the WANDB_MODE environment variable, else "offline".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .plan import PrecisionPlan

WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    """`project` None keeps wandb off; `name` defaults to the run directory's name and `group`
    gathers the stages (or sweep trials) that belong together."""

    project: str | None = None
    mode: str | None = None
    name: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ValueError(f"unknown wandb mode {self.mode!r}; valid: {list(WANDB_MODES)}")

    def resolved_mode(self) -> str:
        mode = self.mode or os.environ.get("WANDB_MODE") or "offline"
        return "offline" if mode == "dryrun" else mode

    def logger(self, run_dir: Path, stage: str) -> Any:
        """A WandbLogger writing under run_dir/wandb, or None when no project is set."""
        if self.project is None:
            return None
        from pytorch_lightning.loggers import WandbLogger
        return WandbLogger(project=self.project, name=self.name or f"{run_dir.name}-{stage}",
                           group=self.group, job_type=stage, save_dir=str(run_dir),
                           mode=self.resolved_mode())


def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    from pytorch_lightning.loggers import WandbLogger
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def plan_rows(plan: PrecisionPlan) -> list[list[Any]]:
    """[group, parameter, elements, bits] per group, in plan order."""
    return [[name, g.param, g.numel, g.bits] for name, g in plan.groups.items()]


def log_stage_results(loggers: Iterable[Any], metrics: dict[str, Any], plan: PrecisionPlan | None) -> None:
    """Log the stage's final numbers (and plan) to every WandbLogger, then finish its run so the
    next stage of a pipeline starts a run of its own."""
    targets = wandb_loggers(loggers)
    if not targets:
        return
    import wandb
    summary = {f"result/{k}": v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for lg in targets:
        run = lg.experiment
        run.summary.update(summary)
        if plan is not None:
            table = wandb.Table(columns=["group", "param", "numel", "bits"], data=plan_rows(plan))
            run.log({"plan/table": table,
                     "plan/bits_per_group": wandb.plot.bar(table, "group", "bits", title="bits per group")})
        run.finish()
