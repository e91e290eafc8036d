"""Sweep specs: which pipeline config a sweep runs, what it optimises, and the search space of
outer hyperparameters as dotted config keys of the stage configs (the same keys as the stages'
--model.* / --data.* / --trainer.* options, prefixed with a stage name to reach one stage:
`search.model.lam`, `finalize.model.rho`; unprefixed keys reach every stage).

    name: shakespeare_lstm_pareto
    config: configs/shakespeare_lstm/quick.yaml     # a pipeline config (nas-mpq run)
    objectives: [val_ppl, size_mb]                  # one objective: single-objective with pruning
    sampler: nsga2                                  # tpe | nsga2 | random
    n_trials: 24
    finalize: true                                  # false: search only, objectives from the search
    overrides: {finalize.trainer.max_epochs: 2}     # fixed for every trial
    parameters:
      search.model.budget.value: {low: 1.0, high: 4.0}
      search.model.dual_lr: {low: 0.01, high: 0.3, log: true}
      search.model.space.candidates: {choices: [[1, 2, 4, 8], [1, 2, 4, 8, 32]]}

Every key is checked against the stage parsers before any trial runs (`check_stage_keys`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .overrides import render_args, route_overrides
from .parser import PIPELINE_STAGES
from .run import PIPELINE_CLIS

# objective -> (direction, how to read it from a run's report.json)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "val_ppl": ("minimize", "validation perplexity of the searched (finalized) model"),
    "test_ppl": ("minimize", "test perplexity (finalize only; prefer val_ppl for selection)"),
    "size_mb": ("minimize", "model size in MB, everything counted"),
    "avg_bits": ("minimize", "average bits over the searched weights"),
    "compression": ("maximize", "FP32 size / model size"),
}
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("none", "median")


def objective_value(report: dict[str, Any], name: str) -> float:
    value = report["mixed"].get(name)
    if value is None:
        raise ValueError(f"objective {name!r} is not in this run's report (a search-only run has no test_ppl)")
    return float(value)


@dataclass
class ParamSpec:
    """A float or int range (`low`, `high`, optional `log`/`step`) or categorical `choices`."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    type: str | None = None
    choices: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError(f"parameter {self.key}: give either non-empty `choices` or `low`/`high`")
            self.type = "categorical"
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"parameter {self.key}: needs low < high (got low={self.low}, high={self.high}) "
                             "or a list of `choices`")
        if self.log and self.low <= 0:
            raise ValueError(f"parameter {self.key}: a log range needs low > 0, got {self.low}")
        both_int = isinstance(self.low, int) and isinstance(self.high, int)
        self.type = self.type or ("int" if both_int else "float")
        if self.type not in ("int", "float"):
            raise ValueError(f"parameter {self.key}: unknown type {self.type!r}; valid: int, float")

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            index = trial.suggest_categorical(self.key, list(range(len(self.choices))))
            return self.choices[index]  # by index: Optuna stores only scalars, choices may be lists
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def example(self) -> Any:
        """A value of the space (its lower end or first choice), for validating the keys."""
        return self.choices[0] if self.type == "categorical" else (
            int(self.low) if self.type == "int" else float(self.low))


@dataclass
class SweepSpec:
    name: str
    config: str
    objectives: list[str]
    parameters: dict[str, ParamSpec]
    sampler: str = "tpe"
    seed: int = 0
    n_trials: int = 10
    finalize: bool = True
    pruner: str = "none"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_ckpt: str | None = None

    def __post_init__(self) -> None:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or unknown:
            raise ValueError(f"unknown objectives {unknown or '(none given)'}; valid: {list(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid: {list(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"unknown pruner {self.pruner!r}; valid: {list(PRUNERS)}")
        if self.pruner != "none" and len(self.objectives) > 1:
            raise ValueError("pruning needs a single objective (Optuna cannot prune multi-objective studies)")
        if "test_ppl" in self.objectives and not self.finalize:
            raise ValueError("objective test_ppl needs finalize: true")
        if self.n_trials < 1:
            raise ValueError(f"n_trials must be positive, got {self.n_trials}")
        if not Path(self.config).is_file():
            raise ValueError(f"sweep config {self.config} does not exist")
        if self.init_ckpt is not None and not Path(self.init_ckpt).is_file():
            raise ValueError(f"init_ckpt {self.init_ckpt} does not exist")
        clash = sorted(set(self.parameters) & set(self.overrides))
        if clash:
            raise ValueError(f"keys both swept and fixed: {clash}")

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"sweep spec {path} does not exist")
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"sweep spec {path} is not a YAML mapping")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(raw) - known)
        if extra:
            raise ValueError(f"sweep spec {path}: unknown fields {extra}; valid: {sorted(known)}")
        params = raw.get("parameters") or {}
        if not isinstance(params, dict) or not params:
            raise ValueError(f"sweep spec {path}: `parameters` must map config keys to ranges or choices")
        try:
            specs = {k: ParamSpec(k, **v) for k, v in params.items()}
        except TypeError as e:
            raise ValueError(f"sweep spec {path}: bad parameter ({e}); a parameter has low, high, log, "
                             "step, type or choices") from None
        objectives = raw.get("objectives", ["val_ppl", "size_mb"])
        return cls(**{**raw, "parameters": specs, "objectives": list(objectives),
                      "name": raw.get("name", path.stem), "overrides": raw.get("overrides") or {}})

    def trial_args(self, values: dict[str, Any]) -> list[str]:
        """nas-mpq run's overrides for one trial: the fixed overrides, then the sampled values."""
        return render_args(self.overrides) + render_args(values)

    def example_args(self) -> list[str]:
        return self.trial_args({k: p.example() for k, p in self.parameters.items()})


def _stage_refusal(stage: str, config: str, args: list[str]) -> str | None:
    """None if the stage's parser accepts `args` on `config`, else its message."""
    required = ["--plan", "plan.json"] if stage == "finalize" else []  # what the pipeline passes it
    return PIPELINE_CLIS[stage].refusal(["--config", config, *required, *args])


def check_stage_keys(config: str, args: list[str], stages: tuple[str, ...] = PIPELINE_STAGES) -> None:
    """ValueError naming the first override in `args` (nas-mpq run's `--[stage.]key value` list)
    that a stage's parser rejects, before anything runs."""
    routed = route_overrides(args)
    for stage in stages:
        flags = routed[stage]
        refusal = _stage_refusal(stage, config, flags)
        if refusal is None:
            continue
        for pair in (flags[i:i + 2] for i in range(0, len(flags), 2)):  # find the key to blame
            msg = _stage_refusal(stage, config, pair)
            if msg is not None:
                raise ValueError(f"the {stage} stage does not accept {pair[0]} = {pair[1]!r}: {msg}")
        raise ValueError(f"the {stage} stage rejects the overrides {flags}: {refusal}")
