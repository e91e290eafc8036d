"""`nas-mpq sweep`: an Optuna study over the outer hyperparameters of a search.

    nas-mpq sweep --config sweeps/shakespeare_lstm_pareto.yaml --run_dir runs/pareto [--n_trials 30]
                  [--storage URL] [--study NAME] [--workers N]

Each trial is one pipeline run (`nas-mpq run --init_ckpt <shared FP32> --uniform false` plus the
sampled keys) in RUN_DIR/trial-NNNN; the FP32 model is trained once for the study, in
RUN_DIR/pretrain (or given as the spec's init_ckpt). Two objectives (e.g. val_ppl and size_mb)
give a multi-objective study whose Pareto front is written as pareto.csv, pareto.png and
pareto_plans/; one objective gives a single-objective study with optional pruning on val/ppl per
epoch and best.json. Every trial is listed in trials.csv.

Storage (--storage): sqlite:///RUN_DIR/study.db by default; `journal:PATH` for a journal file
(several local workers, no database); any SQLAlchemy URL (postgresql://...) for many machines.
--n_trials is the study's total: the same command with a larger number continues the study, and
workers sharing a local storage stop together at exactly that many trials. A trial that raises is
recorded as failed (user attribute `error`) and the study goes on; a study whose every trial
failed exits with an error naming the first trial's. An error about the storage never shows its
password.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna
import torch
from filelock import FileLock
from optuna.trial import TrialState

from nas_mpq.files import atomic_output, write_atomic
from nas_mpq.lit.pruning import OptunaPruning
from nas_mpq.plots import plot_pareto
from nas_mpq.redact import mask_credentials

from .overrides import render_args, route_overrides
from .parser import PIPELINE_STAGES
from .pretrain import run as run_pretrain
from .run import run_pipeline
from .sweep_spec import SweepSpec, check_stage_keys, objective_value

COUNTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # WAITING: enqueued, not begun


def open_storage(url: str | None, run_dir: Path) -> tuple[Any, Path | None]:
    """(Optuna storage, lock file for local storages or None). Fails clearly if it cannot open."""
    run_dir.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{run_dir / 'study.db'}"
    journal = url.startswith("journal:")
    local = Path(url[len("journal:"):]) if journal else (
        Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") and url != "sqlite:///:memory:" else None)
    lock = local.with_name(local.name + ".nas-mpq.lock") if local is not None else None
    try:
        if journal:
            local.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)) if lock else nullcontext():  # workers starting together create it once
            if journal:
                from optuna.storages import JournalStorage
                from optuna.storages.journal import JournalFileBackend
                return JournalStorage(JournalFileBackend(str(local))), lock
            return optuna.storages.RDBStorage(url), lock
    except Exception as e:  # noqa: BLE001 - every backend has its own exception types
        raise SystemExit(mask_credentials(f"error: cannot open the Optuna storage {url!r}: {type(e).__name__}: {e}\n"
                                          "valid: sqlite:///PATH, journal:PATH, or a SQLAlchemy database URL")) from None


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.n_trials // 2)))
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, spec.n_trials))


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a worker on this host that no longer exists are marked failed, so a
    resumed study does not wait for them (and counts them, like any failed trial)."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", {})
        if worker.get("host") == host and not _pid_alive(int(worker.get("pid", -1))):
            optuna.trial.Trial(study, t._trial_id).set_user_attr(
                "error", f"worker {worker['pid']} on {host} ended without finishing the trial")
            study.tell(t.number, state=TrialState.FAIL)


class Sweep:
    """One worker of a sweep: runs trials until the study holds `n_trials`."""

    def __init__(self, spec: SweepSpec, run_dir: Path, storage: str | None, study_name: str | None,
                 n_trials: int | None, seed: int | None) -> None:
        self.spec, self.run_dir = spec, run_dir
        self.n_trials = n_trials or spec.n_trials
        storage_obj, self.count_lock = open_storage(storage, run_dir)
        with FileLock(str(self.count_lock)) if self.count_lock else nullcontext():
            self.study = optuna.create_study(
                storage=storage_obj, study_name=study_name or spec.name, load_if_exists=True,
                directions=spec.directions, sampler=make_sampler(spec, spec.seed if seed is None else seed),
                pruner=make_pruner(spec))
        with warnings.catch_warnings():  # experimental in Optuna, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(spec.objectives)

    # ---- set-up ---------------------------------------------------------------------------------
    def fp32_checkpoint(self) -> str:
        """The spec's init_ckpt, or the study's FP32 model (trained once, by whichever worker
        gets there first; the others wait for it)."""
        if self.spec.init_ckpt:
            return self.spec.init_ckpt
        folder = self.run_dir / "pretrain"
        with FileLock(str(self.run_dir / "pretrain.lock")):
            if not (folder / "model.ckpt").exists():
                fixed = route_overrides(render_args(self.spec.overrides))["pretrain"]
                run_pretrain(["--config", self.spec.config, "--run_dir", str(folder), *fixed])
        return str(folder / "model.ckpt")

    # ---- trials ---------------------------------------------------------------------------------
    def _ask(self) -> optuna.trial.Trial | None:
        """A new trial, or None once the study holds n_trials (count and ask are atomic across the
        workers of a local storage)."""
        with FileLock(str(self.count_lock)) if self.count_lock else nullcontext():
            if len(self.study.get_trials(deepcopy=False, states=COUNTED)) >= self.n_trials:
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
            return trial

    def run_trial(self, trial: optuna.trial.Trial, init_ckpt: str) -> None:
        values = {k: p.suggest(trial) for k, p in self.spec.parameters.items()}
        trial_dir = self.run_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(trial_dir))
        trial.set_user_attr("args", self.spec.trial_args(values))
        callbacks = [OptunaPruning(trial)] if self.spec.pruner != "none" else []
        try:
            report = run_pipeline(self.spec.config, trial_dir, self.spec.trial_args(values), init_ckpt=init_ckpt,
                                  finalize=self.spec.finalize, uniform=False, callbacks=callbacks)
            result = [objective_value(report, o) for o in self.spec.objectives]
        except optuna.TrialPruned as e:
            trial.set_user_attr("pruned", str(e))
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failed trial must not end the study
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            traceback.print_exc()
            self.study.tell(trial, state=TrialState.FAIL)
            return
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        self.study.tell(trial, result)

    def optimize(self) -> None:
        fail_orphaned_trials(self.study)
        init_ckpt = self.fp32_checkpoint()
        while (trial := self._ask()) is not None:
            self.run_trial(trial, init_ckpt)

    # ---- results --------------------------------------------------------------------------------
    def write_results(self) -> dict[str, Any]:
        trials = self.study.get_trials(deepcopy=False)
        rows = [self._row(t) for t in trials]
        _write_csv(self.run_dir / "trials.csv", rows)
        summary: dict[str, Any] = {"study": self.study.study_name, "objectives": self.spec.objectives,
                                   "trials": len(trials),
                                   "states": {s.name: sum(t.state == s for t in trials) for s in TrialState}}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            return summary
        best = self.study.best_trials
        if len(self.spec.objectives) > 1:
            _write_csv(self.run_dir / "pareto.csv", [self._row(t) for t in best])
            plans = self.run_dir / "pareto_plans"
            plans.mkdir(exist_ok=True)
            for t in best:
                plan = Path(t.user_attrs["run_dir"]) / "search" / "plan.json"
                shutil.copyfile(plan, plans / f"trial-{t.number:04d}.json")
            plot_pareto([t.values for t in complete], [t.values for t in best], self.spec.objectives,
                        self.run_dir / "pareto.png")
            summary["pareto"] = [self._row(t) for t in best]
        else:
            summary["best"] = self._row(best[0])
            write_atomic(self.run_dir / "best.json", json.dumps(summary["best"], indent=1) + "\n")
        return summary

    def _row(self, t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        values = dict(zip(self.spec.objectives, t.values or [None] * len(self.spec.objectives)))
        params = {k: p.choices[t.params[k]] if p.type == "categorical" and k in t.params else t.params.get(k)
                  for k, p in self.spec.parameters.items()}
        return {"number": t.number, "state": t.state.name, **values, **params,
                "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error")}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()}
                         for r in rows)


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nas-mpq sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a sweep spec (sweeps/*.yaml)")
    ap.add_argument("--run_dir", default=None, help="default: runs/sweep-<study name>")
    ap.add_argument("--storage", default=None, help="sqlite:///PATH (default RUN_DIR/study.db), journal:PATH, or a DB URL")
    ap.add_argument("--study", default=None, help="study name (default: the spec's name)")
    ap.add_argument("--n_trials", type=int, default=None, help="total trials of the study (default: the spec's)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    ap.add_argument("--seed", type=int, default=None, help="sampler seed (default: the spec's; worker i adds i)")
    ap.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)  # a worker started by --workers
    args = ap.parse_args(argv)
    try:
        spec = SweepSpec.load(args.config)
        stages = tuple(s for s in PIPELINE_STAGES if s != "finalize" or spec.finalize)
        check_stage_keys(spec.config, spec.example_args(), stages[1:])
        if not spec.init_ckpt:
            check_stage_keys(spec.config, render_args(spec.overrides), ("pretrain",))
    except ValueError as e:
        raise SystemExit(f"error: {args.config}: {e}") from None
    if args.n_trials is not None and args.n_trials < 1:
        raise SystemExit(f"error: --n_trials must be positive, got {args.n_trials}")
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be positive, got {args.workers}")
    run_dir = Path(args.run_dir or f"runs/sweep-{spec.name}")
    seed = spec.seed if args.seed is None else args.seed
    sweep = Sweep(spec, run_dir, args.storage, args.study, args.n_trials, seed)  # fails early on a bad storage
    helpers = []
    if args.workers > 1:  # share the cores: several processes each spinning on all of them crawl
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.workers))
        torch.set_num_threads(int(threads))
        for i in range(1, args.workers):
            cmd = [sys.executable, "-m", "nas_mpq.cli", "sweep", "--config", args.config, "--run_dir", str(run_dir),
                   "--study", sweep.study.study_name, "--n_trials", str(sweep.n_trials), "--seed", str(seed + i),
                   "--helper", *(["--storage", args.storage] if args.storage else [])]
            helpers.append(subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": threads}))
    sweep.optimize()
    if args.helper:
        return 0
    failed = [p.wait() for p in helpers]
    summary = sweep.write_results()
    print(json.dumps(summary, indent=1, default=str))
    if any(failed):
        raise SystemExit(f"error: {sum(1 for c in failed if c)} worker process(es) failed")
    trials = sweep.study.get_trials(deepcopy=False)
    if trials and all(t.state == TrialState.FAIL for t in trials):
        raise SystemExit(f"error: all {len(trials)} trials of the study failed (trials.csv lists their errors); "
                         f"trial {trials[0].number}: {trials[0].user_attrs.get('error', 'no error recorded')}")
    return 0
