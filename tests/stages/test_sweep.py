"""nas-mpq sweep: spec validation, storages shared by worker processes, failed and pruned trials,
and the sweep files under sweeps/ (Optuna specs and wandb sweep YAMLs)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

from nas_mpq.cli import main
from nas_mpq.lit.pruning import OptunaPruning
from nas_mpq.stages.overrides import render_args, route_overrides
from nas_mpq.stages.sweep import Sweep
from nas_mpq.stages.sweep_spec import SweepSpec, check_stage_keys

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "sweeps").glob("*.yaml"))
WANDB_SPECS = sorted((ROOT / "sweeps" / "wandb").glob("*.yaml"))


def write_spec(tmp_path, config, **fields):
    spec = {"name": "tiny", "config": str(config), "objectives": ["val_ppl", "size_mb"], "sampler": "random",
            "n_trials": 2, "overrides": {"trainer.max_epochs": 1},
            "parameters": {"search.model.budget.value": {"low": 1.5, "high": 3.0},
                           "finalize.model.rho": {"low": 0.001, "high": 0.1, "log": True}}}
    spec.update(fields)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_optuna_spec_renders_into_arguments_the_stages_accept(path):
    spec = SweepSpec.load(path)
    stages = ("search", "finalize") if spec.finalize else ("search",)
    check_stage_keys(spec.config, spec.example_args(), stages)
    check_stage_keys(spec.config, render_args(spec.overrides), ("pretrain",))
    study = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=1))
    values = {k: p.suggest(study.ask()) for k, p in spec.parameters.items()}
    check_stage_keys(spec.config, spec.trial_args(values), stages)


def wandb_sample(param: dict):
    if "value" in param:
        return param["value"]
    if "values" in param:
        return param["values"][-1]
    return param["max"]


@pytest.mark.parametrize("path", WANDB_SPECS, ids=lambda p: p.name)
def test_every_wandb_sweep_renders_into_a_command_our_cli_accepts(path, monkeypatch):
    spec = yaml.safe_load(path.read_text())
    assert {"method", "metric", "parameters", "command"} <= set(spec)
    assert spec["metric"]["name"].startswith(("mixed/", "fp32/", "uniform/"))
    args = [f"--{k}={wandb_sample(p)}" for k, p in spec["parameters"].items()]  # how an agent passes them
    cmd = [a for c in spec["command"] if c != "${env}" for a in (args if c == "${args}" else [c])]
    assert cmd[:2] == ["nas-mpq", "run"]
    from nas_mpq.stages.run import resolve_run_dir
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    rest = cmd[2:]
    config = rest[rest.index("--config") + 1]
    assert resolve_run_dir(rest[rest.index("--run_dir") + 1]).name == os.environ["WANDB_RUN_ID"]
    overrides = [a for a in rest if a.startswith("--") and "." in a.split("=")[0]]
    check_stage_keys(config, overrides, ("search", "finalize"))


def test_unknown_key_is_named_before_any_trial(tmp_path, config):
    spec = write_spec(tmp_path, config, parameters={"search.model.lamm": {"low": 1.0, "high": 2.0}})
    with pytest.raises(SystemExit, match="search stage does not accept --model.lamm"):
        main(["sweep", "--config", str(spec), "--run_dir", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("fields, message", [
    ({"objectives": ["perplexity"]}, "unknown objectives"),
    ({"sampler": "grid"}, "unknown sampler"),
    ({"pruner": "median"}, "pruning needs a single objective"),
    ({"parameters": {"search.model.lam": {"low": 2.0, "high": 1.0}}}, "needs low < high"),
    ({"budget": 2}, "unknown fields"),
])
def test_bad_spec_is_a_clear_error(tmp_path, config, fields, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec.load(write_spec(tmp_path, config, **fields))


@pytest.mark.parametrize("url", ["nosuchdb://host/x", "sqlite:////proc/no-such-dir/study.db"])
def test_storage_that_cannot_be_opened_fails_before_any_trial(tmp_path, config, url):
    spec = write_spec(tmp_path, config)
    with pytest.raises(SystemExit, match="cannot open the Optuna storage"):
        main(["sweep", "--config", str(spec), "--run_dir", str(tmp_path / "s"), "--storage", url])
    assert not (tmp_path / "s" / "pretrain").exists()


def sweep_cmd(spec, run_dir, *more):
    return [sys.executable, "-m", "nas_mpq.cli", "sweep", "--config", str(spec), "--run_dir", str(run_dir), *more]


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_workers_on_one_storage_run_each_trial_once(tmp_path, config, storage):
    spec = write_spec(tmp_path, config, n_trials=3)
    run_dir = tmp_path / "s"
    url = f"journal:{run_dir / 'journal.log'}" if storage == "journal" else f"sqlite:///{run_dir / 'study.db'}"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # two separate commands on the same storage, plus a third trial asked of whichever is free
    procs = [subprocess.Popen(sweep_cmd(spec, run_dir, "--storage", url, "--seed", str(i)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    storage_obj = (optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[8:]))
                   if storage == "journal" else url)
    trials = optuna.load_study(study_name="tiny", storage=storage_obj).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    dirs = sorted(p.name for p in run_dir.glob("trial-*"))
    assert dirs == ["trial-0000", "trial-0001", "trial-0002"]
    assert {t.user_attrs["run_dir"] for t in trials} == {str(run_dir / d) for d in dirs}
    for d in dirs:  # each trial ran once: one search, one finalize, one report
        report = json.loads((run_dir / d / "report.json").read_text())
        assert report["mixed"]["val_ppl"] > 1 and report["uniform"] is None
    assert len(list((run_dir / "pretrain").glob("checkpoints/best*.ckpt"))) == 1  # trained once, shared


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_study_goes_on_then_resumes(tmp_path, config):
    spec = SweepSpec.load(write_spec(tmp_path, config, objectives=["val_ppl"], pruner="median",
                                     parameters={"search.model.budget.value": {"choices": [0.5, 2.0]}}))
    run_dir = tmp_path / "s"
    sweep = Sweep(spec, run_dir, None, None, 2, seed=0)
    sweep.study.enqueue_trial({"search.model.budget.value": 0})  # 0.5 bits: below every candidate
    sweep.study.enqueue_trial({"search.model.budget.value": 1})
    sweep.optimize()
    failed, done = sweep.study.get_trials()
    assert failed.state == optuna.trial.TrialState.FAIL and "budget" in failed.user_attrs["error"]
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert len(done.intermediate_values) == 2  # the pruning callback reported search + finalize epochs
    summary = sweep.write_results()
    assert summary["best"]["number"] == 1 and (run_dir / "best.json").exists()
    # the same study with a larger total continues it
    more = Sweep(spec, run_dir, None, None, 3, seed=1)
    more.optimize()
    assert [t.number for t in more.study.get_trials()] == [0, 1, 2]


def test_pruning_callback_reports_each_validation_and_prunes():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=100.0))
    trial = study.ask()
    cb = OptunaPruning(trial)
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"),
                              callback_metrics={"val/ppl": torch.tensor(50.0)})
    cb.on_validation_end(trainer, None)
    trainer.callback_metrics["val/ppl"] = torch.tensor(150.0)
    with pytest.raises(optuna.TrialPruned, match="validation 1"):
        cb.on_validation_end(trainer, None)
    assert study.trials[0].intermediate_values == {0: 50.0, 1: 150.0}
    with pytest.raises(KeyError, match="val/loss"):
        OptunaPruning(trial, monitor="val/loss").on_validation_end(trainer, None)


@pytest.mark.slow
def test_pareto_outputs(tmp_path, config):
    spec = write_spec(tmp_path, config, n_trials=2)
    run_dir = tmp_path / "s"
    assert main(["sweep", "--config", str(spec), "--run_dir", str(run_dir)]) == 0
    rows = (run_dir / "pareto.csv").read_text().splitlines()
    assert rows[0].split(",") == ["number", "state", "val_ppl", "size_mb", "finalize.model.rho",
                                  "search.model.budget.value", "run_dir", "error"]
    assert (run_dir / "pareto.png").stat().st_size > 0 and (run_dir / "study.db").exists()
    plans = sorted((run_dir / "pareto_plans").glob("*.json"))
    assert len(plans) == len(rows) - 1 >= 1
    assert len((run_dir / "trials.csv").read_text().splitlines()) == 3


def test_route_of_rendered_values():
    args = render_args({"search.model.space.candidates": [1, 2, 4], "search.model.lam": 2.5, "trainer.fast": True})
    routed = route_overrides(args)
    assert routed["search"] == ["--model.space.candidates", "[1, 2, 4]", "--model.lam", "2.5",
                                "--trainer.fast", "true"]
    assert routed["finalize"] == ["--trainer.fast", "true"]


@pytest.mark.parametrize("where, key, message", [
    ("parameters", "search.model.budget.valeu", "model.budget has no key 'valeu'; valid keys: ['kind', 'value']"),
    ("overrides", "search.model.space.candidatez", "model.space has no key 'candidatez'; valid keys: ['name',"),
])
def test_unknown_space_or_budget_key_is_named_before_any_trial(tmp_path, config, where, key, message):
    from nas_mpq.stages.sweep import run
    value = {"low": 1.0, "high": 2.0} if where == "parameters" else [2]
    spec = write_spec(tmp_path, config, **({where: {key: value}} if where == "parameters"
                                           else {where: {"trainer.max_epochs": 1, key: value}}))
    with pytest.raises(SystemExit, match=re.escape(message)):
        run(["--config", str(spec), "--run_dir", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()


def test_a_sweep_whose_every_trial_failed_exits_with_an_error(tmp_path, config, capsys):
    from nas_mpq.stages.sweep import run
    fp32 = tmp_path / "fp32.ckpt"
    fp32.write_bytes(b"")  # never read: every trial's budget is refused first
    spec = write_spec(tmp_path, config, objectives=["val_ppl"], init_ckpt=str(fp32),
                      parameters={"search.model.budget.value": {"choices": [0.25]}})
    with pytest.raises(SystemExit, match=r"all 2 trials of the study failed .*trial 0: ValueError: infeasible budget"):
        run(["--config", str(spec), "--run_dir", str(tmp_path / "s")])
    assert (tmp_path / "s" / "trials.csv").exists()


def test_storage_error_never_shows_the_password(tmp_path, config):
    spec = write_spec(tmp_path, config)
    from nas_mpq.stages.sweep import run
    with pytest.raises(SystemExit, match=r"cannot open the Optuna storage 'nosuchdb://me:\*\*\*@db.example/optuna'") as e:
        run(["--config", str(spec), "--run_dir", str(tmp_path / "s"), "--storage", "nosuchdb://me:hunter2@db.example/optuna"])
    assert "hunter2" not in str(e.value)
