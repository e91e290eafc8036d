"""The allocator benchmark's ledger: finished runs are restored on a machine that lacks them, never
rerun; a run made with another config is refused; the FP32 model is retrained only when a stage
that needs it has to run, and must reproduce the kept figure."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_env(tmp_path, monkeypatch):
    """allocators with `nas-mpq` replaced by a fake that writes a stage's files and logs its call."""
    alloc = load_benchmark("allocators")
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("pretrain", "pretrain_continued", "pretrain_averaged", "search", "search_frozen", "search_at_plan",
                 "search_short", "finalize"):
        (configs / f"{name}.yaml").write_text(f"# {name}\n")
    calls = []
    val = {"ppl": 100.0}

    def fake_run(cmd, check):
        args = cmd[3:]
        run_dir = Path(args[args.index("--run_dir") + 1])
        run_dir.mkdir(parents=True, exist_ok=True)
        calls.append((args[0], run_dir.name, args[args.index("--run_dir") + 2:]))
        if args[0] == "pretrain":
            (run_dir / "model.ckpt").write_text("weights")
        if args[0] in ("search", "sensitivity"):
            (run_dir / "plan.json").write_text(json.dumps({"groups": [run_dir.name]}))
        (run_dir / "metrics.json").write_text(json.dumps({"val_ppl": val["ppl"], "test_ppl": 90.0, "avg_bits": 2.0}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(alloc.subprocess, "run", fake_run)
    return alloc, configs, calls, val, tmp_path


def test_finished_runs_are_restored_from_the_ledger_not_rerun(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    ledger = tmp / "ledger.json"
    bench = alloc.Bench(configs, tmp / "runs", ledger)
    bench.fp32()
    plan = bench.search(tmp / "runs" / "avg2" / "nas-s0", 2.0, 0)
    first = bench.finalize(tmp / "runs" / "avg2" / "fin-nas-s0", plan, 0)
    assert [c[0] for c in calls] == ["pretrain", "search", "finalize"]
    kept = json.loads(ledger.read_text())
    assert set(kept) == {"fp32", "avg2/nas-s0", "avg2/fin-nas-s0"}
    assert kept["avg2/nas-s0"]["files"]["plan.json"] == plan.read_text()

    fresh = alloc.Bench(configs, tmp / "elsewhere", ledger)  # another machine: no run directories
    fresh.fp32()
    plan2 = fresh.search(tmp / "elsewhere" / "avg2" / "nas-s0", 2.0, 0)
    again = fresh.finalize(tmp / "elsewhere" / "avg2" / "fin-nas-s0", plan2, 0)
    assert len(calls) == 3 and again == first  # nothing ran
    assert plan2.read_text() == plan.read_text()
    assert json.loads((tmp / "elsewhere" / "avg2" / "nas-s0" / "bench_run.json").read_text())["restored_from"] == str(ledger)


def test_a_run_made_with_another_config_is_refused(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    ledger = tmp / "ledger.json"
    alloc.Bench(configs, tmp / "runs", ledger).fp32()
    (configs / "pretrain.yaml").write_text("# pretrain, a comment edited\n")
    alloc.Bench(configs, tmp / "runs", ledger).fp32()  # the same settings: kept
    (configs / "pretrain.yaml").write_text("# pretrain\nseed_everything: 1\n")
    with pytest.raises(SystemExit, match="another version of .*pretrain.yaml"):
        alloc.Bench(configs, tmp / "runs", ledger).fp32()  # the run directory's record
    with pytest.raises(SystemExit, match="another version of .*pretrain.yaml"):
        alloc.Bench(configs, tmp / "elsewhere", ledger).fp32()  # the ledger's
    with pytest.raises(SystemExit, match="other arguments"):
        alloc.stage(["pretrain", "--config", str(configs / "pretrain.yaml"), "--max_epochs", "3"],
                    tmp / "runs" / "fp32", alloc.Bench(configs, tmp / "runs"))


def test_fp32_is_retrained_only_when_a_stage_must_run_and_must_match(bench_env):
    alloc, configs, calls, val, tmp = bench_env
    ledger = tmp / "ledger.json"
    bench = alloc.Bench(configs, tmp / "runs", ledger)
    bench.fp32()
    bench.uniform_plan(tmp / "runs" / "avg2" / "uniform2", 2.0, 2)
    calls.clear()
    fresh = alloc.Bench(configs, tmp / "b", ledger)
    fresh.fp32()
    fresh.uniform_plan(tmp / "b" / "avg2" / "uniform2", 2.0, 2)
    assert calls == []  # restored: the checkpoint is not needed
    fresh.finalize(tmp / "b" / "avg2" / "fin-uniform-s0", tmp / "b" / "avg2" / "uniform2" / "plan.json", 0)
    assert [c[0] for c in calls] == ["pretrain", "finalize"] and (tmp / "b" / "fp32" / "model.ckpt").exists()

    val["ppl"] = 101.0  # a retrained model that does not reproduce the kept one
    other = alloc.Bench(configs, tmp / "c", ledger)
    other.fp32()
    plan = other.uniform_plan(tmp / "c" / "avg2" / "uniform2", 2.0, 2)
    with pytest.raises(SystemExit, match="validation perplexity 101.000, the ledger's 100.000"):
        other.finalize(tmp / "c" / "avg2" / "fin-uniform-s1", plan, 1)  # not in the ledger: must run
    kept = json.loads(json.loads(ledger.read_text())["fp32"]["files"]["metrics.json"])
    assert kept["val_ppl"] == 100.0  # the ledger keeps the FP32 run every arm relates to


def test_a_retrain_that_does_not_reproduce_names_how_the_environment_differs(bench_env, monkeypatch):
    alloc, configs, calls, val, tmp = bench_env
    ledger = tmp / "ledger.json"
    monkeypatch.setattr(alloc.torch, "get_num_threads", lambda: 2)
    alloc.Bench(configs, tmp / "runs", ledger).fp32()
    assert json.loads(ledger.read_text())["fp32"]["environment"]["threads"] == 2
    monkeypatch.setattr(alloc.torch, "get_num_threads", lambda: 1)
    val["ppl"] = 101.0
    other = alloc.Bench(configs, tmp / "c", ledger)
    other.fp32()
    with pytest.raises(SystemExit, match=r"the environment differs: threads 2 then, 1 now \(set OMP_NUM_THREADS=2\)"):
        other.uniform_plan(tmp / "c" / "avg2" / "uniform2", 2.0, 2)  # not in the ledger: needs the model
    monkeypatch.setattr(alloc.torch, "get_num_threads", lambda: 2)
    same = alloc.Bench(configs, tmp / "d", ledger)
    same.fp32()
    with pytest.raises(SystemExit, match="made in the same environment .*: the code differs, or it is not deterministic"):
        same.uniform_plan(tmp / "d" / "avg2" / "uniform2", 2.0, 2)


def test_an_interrupted_run_continues_from_its_last_checkpoint(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs")
    bench.fp32()
    folder = tmp / "runs" / "avg2" / "nas-s0"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_text("state")  # killed mid-search: no metrics.json
    bench.search(folder, 2.0, 0)
    assert calls[-1][0] == "search" and calls[-1][2] == ["--overwrite", "true", "--resume", "last"]


def test_the_frozen_arm_searches_from_kl_with_the_weights_frozen(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json")
    bench.fp32()
    for arm in ("nas_kl", "nas_kl_frozen"):
        alloc.run_arm(bench, arm, 2.0, [0], [1, 2, 4, 8, 32])
    searches = {name: json.loads((tmp / "runs" / "avg2" / name / "bench_run.json").read_text())["args"]
                for name in ("nas-kl-s0", "nas-kl-frozen-s0")}
    kl = str(tmp / "runs" / "avg2" / "sens-kl" / "sensitivity.json")
    assert searches["nas-kl-frozen-s0"] == [*searches["nas-kl-s0"], "--model.optimizer.lr", "0.0"]
    assert searches["nas-kl-s0"][-2:] == ["--model.init_sensitivity", kl]
    assert [c[:2] for c in calls].count(("sensitivity", "sens-kl")) == 1  # one KL run serves both arms
    assert ("finalize", "fin-nas_kl_frozen-s0") in [c[:2] for c in calls]


def test_the_post_training_arms_search_with_their_config_and_start(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json")
    bench.fp32()
    for arm in ("nas_frozen", "nas_hessian_frozen"):
        alloc.run_arm(bench, arm, 2.0, [0, 1], [1, 2, 4, 8, 32])
    args = {name: json.loads((tmp / "runs" / "avg2" / name / "bench_run.json").read_text())["args"]
            for name in ("nas-frozen-s1", "nas-hessian-frozen-s1")}
    frozen_config = str(configs / "search_frozen.yaml")
    assert args["nas-frozen-s1"][:3] == ["search", "--config", frozen_config]
    assert "--model.init_sensitivity" not in args["nas-frozen-s1"] and "--model.optimizer.lr" not in args["nas-frozen-s1"]
    hessian = str(tmp / "runs" / "avg2" / "sens-hessian" / "sensitivity.json")
    assert args["nas-hessian-frozen-s1"] == [*args["nas-frozen-s1"], "--model.init_sensitivity", hessian]
    # every finalize is found by the plan it finalized
    found = alloc.finalized_runs(tmp / "runs" / "avg2")
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "nas-frozen-s0": ["fin-nas_frozen-s0"], "nas-frozen-s1": ["fin-nas_frozen-s1"],
        "nas-hessian-frozen-s0": ["fin-nas_hessian_frozen-s0"],
        "nas-hessian-frozen-s1": ["fin-nas_hessian_frozen-s1"]}


def test_the_at_plan_arm_searches_with_its_config_from_hessian(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json")
    bench.fp32()
    alloc.run_arm(bench, "nas_hessian_at_plan", 2.0, [0], [1, 2, 4, 8, 32])
    args = json.loads((tmp / "runs" / "avg2" / "nas-hessian-at-plan-s0" / "bench_run.json").read_text())["args"]
    assert args[:3] == ["search", "--config", str(configs / "search_at_plan.yaml")]
    assert args[-2:] == ["--model.init_sensitivity", str(tmp / "runs" / "avg2" / "sens-hessian" / "sensitivity.json")]
    found = alloc.finalized_runs(tmp / "runs" / "avg2")
    assert [p.name for p in found["nas-hessian-at-plan-s0"]] == ["fin-nas_hessian_at_plan-s0"]


def test_the_override_arms_search_with_the_short_config_and_their_settings_on_top(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json")
    bench.fp32()
    for arm in ("nas_hessian_short", "nas_hessian_kp", "nas_hessian_fast"):
        alloc.run_arm(bench, arm, 1.5, [0], [1, 2, 4, 8, 32])
    args = {kind: json.loads((tmp / "runs" / "avg1.5" / f"nas-hessian-{kind}-s0" / "bench_run.json").read_text())["args"]
            for kind in ("short", "kp", "fast")}
    assert args["short"][:3] == ["search", "--config", str(configs / "search_short.yaml")]
    assert args["short"][-2:] == ["--model.init_sensitivity", str(tmp / "runs" / "avg1.5" / "sens-hessian" / "sensitivity.json")]
    assert args["kp"] == [*args["short"], "--model.dual_kp", "5"]
    assert args["fast"] == [*args["short"], "--model.arch_every", "4", "--model.refit_every", "8"]
    found = alloc.finalized_runs(tmp / "runs" / "avg1.5")
    assert [p.name for p in found["nas-hessian-fast-s0"]] == ["fin-nas_hessian_fast-s0"]


def test_a_killed_benchmark_takes_its_running_stage_with_it(tmp_path):
    """SIGTERM to the benchmark ends the stage subprocess it waits on (no orphan left to write
    into a run that a restarted benchmark resumes)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file, child_script, parent_script = tmp_path / "child.pid", tmp_path / "stage.py", tmp_path / "bench.py"
    child_script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    parent_script.write_text(
        "import importlib.util, subprocess, sys\n"
        f"spec = importlib.util.spec_from_file_location('allocators', {str(ROOT / 'benchmarks' / 'allocators.py')!r})\n"
        "alloc = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(alloc)\n"
        "alloc.stop_stages_on_sigterm()\n"
        f"subprocess.run([sys.executable, {str(child_script)!r}])\n")
    parent = subprocess.Popen([sys.executable, str(parent_script)])
    deadline = time.monotonic() + 300  # importing torch under load can take minutes
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # gone (killed and reaped by subprocess.run)


def test_an_arm_whose_config_is_missing_is_reported_as_not_run_or_refused(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    (configs / "search_at_plan.yaml").unlink()
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json")
    bench.fp32()
    bench.sensitivity(tmp / "runs" / "avg2" / "sens-hessian", "hessian", 2.0)  # what the arm needs first
    report = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json", run=False)
    assert alloc.run_arm(report, "nas_hessian_at_plan", 2.0, [0], [1, 2, 4, 8, 32]) == []
    with pytest.raises(SystemExit, match=r"search_at_plan.yaml does not exist; .*nas-hessian-at-plan-s0 needs it"):
        alloc.run_arm(bench, "nas_hessian_at_plan", 2.0, [0], [1, 2, 4, 8, 32])


def test_the_fp32_baselines_continue_the_fp32_model_or_train_afresh(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json")
    bench.fp32()
    for arm in alloc.BASELINES:
        bench.baseline(arm)
    args = {name: json.loads((tmp / "runs" / name / "bench_run.json").read_text())["args"]
            for name in ("fp32-continued", "fp32-averaged")}
    assert args["fp32-continued"] == ["pretrain", "--config", str(configs / "pretrain_continued.yaml"),
                                      "--init_ckpt", str(tmp / "runs" / "fp32" / "model.ckpt")]
    assert args["fp32-averaged"] == ["pretrain", "--config", str(configs / "pretrain_averaged.yaml")]


def test_arms_can_start_from_the_averaged_fp32_which_is_then_not_a_second_baseline(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    bench = alloc.Bench(configs, tmp / "runs", tmp / "ledger.json", pretrain="pretrain_averaged")
    bench.fp32()
    plan = bench.sensitivity(tmp / "runs" / "avg2" / "sens-kl", "kl", 2.0)
    bench.finalize(tmp / "runs" / "avg2" / "fin-kl-s0", plan, 0)
    fp32_args = json.loads((tmp / "runs" / "fp32" / "bench_run.json").read_text())["args"]
    assert fp32_args == ["pretrain", "--config", str(configs / "pretrain_averaged.yaml")]
    fin_args = json.loads((tmp / "runs" / "avg2" / "fin-kl-s0" / "bench_run.json").read_text())["args"]
    assert fin_args[fin_args.index("--init_ckpt") + 1] == str(tmp / "runs" / "fp32" / "model.ckpt")
    assert bench.baselines() == ("fp32_continued",)
    assert alloc.Bench(configs, tmp / "runs").baselines() == alloc.BASELINES


def run_main(alloc, monkeypatch, configs, root, *argv):
    monkeypatch.setattr(sys, "argv", ["allocators", "--configs", str(configs), "--run_dir", str(root),
                                      "--budgets", "2.0", "--seeds", "0", "--arms", "kl", *argv])
    alloc.main()
    return json.loads((root / "allocators.json").read_text())


def test_the_benchmark_from_the_averaged_fp32_trains_it_once_and_reports_it_as_the_fp32(bench_env, monkeypatch):
    alloc, configs, calls, _, tmp = bench_env
    out = run_main(alloc, monkeypatch, configs, tmp / "runs", "--pretrain", "pretrain_averaged")
    assert [(c[0], c[1]) for c in calls] == [("pretrain", "fp32"), ("sensitivity", "sens-kl"), ("finalize", "fin-kl-s0")]
    assert not (tmp / "runs" / "fp32-averaged").exists()
    assert out["pretrain"] == "pretrain_averaged" and "fp32_averaged" not in out
    assert out["fp32_averaged_best_val"] is out["fp32_best_val"] is True  # val 100 against the arm's 100


def test_without_an_averaged_run_the_benchmark_does_not_claim_its_validation(bench_env, monkeypatch):
    alloc, configs, calls, _, tmp = bench_env
    out = run_main(alloc, monkeypatch, configs, tmp / "runs")
    assert out["fp32_averaged"] == {"test_ppl": None, "val_ppl": None, "epochs": None}
    assert out["fp32_best_val"] is True and out["fp32_averaged_best_val"] is False


def test_fp32_ckpt_leaves_the_checkpoint_a_restored_run_lacks_and_checks_it(bench_env, monkeypatch, capsys):
    alloc, configs, calls, val, tmp = bench_env
    ledger = tmp / "ledger.json"
    run_main(alloc, monkeypatch, configs, tmp / "runs", "--ledger", str(ledger))
    calls.clear()
    run_main(alloc, monkeypatch, configs, tmp / "b", "--ledger", str(ledger))
    assert calls == [] and not (tmp / "b" / "fp32" / "model.ckpt").exists()  # every run restored
    run_main(alloc, monkeypatch, configs, tmp / "b", "--ledger", str(ledger), "--fp32_ckpt")
    assert [(c[0], c[1]) for c in calls] == [("pretrain", "fp32")] and (tmp / "b" / "fp32" / "model.ckpt").exists()
    run_main(alloc, monkeypatch, configs, tmp / "b", "--ledger", str(ledger), "--fp32_ckpt")
    assert len(calls) == 1  # there already: not retrained
    val["ppl"] = 101.0
    for _ in range(2):  # the model that does not reproduce is never handed on as the kept one
        with pytest.raises(SystemExit, match="validation perplexity 101.000, the ledger's 100.000"):
            run_main(alloc, monkeypatch, configs, tmp / "c", "--ledger", str(ledger), "--fp32_ckpt")
        assert not (tmp / "c" / "fp32" / "model.ckpt").exists() and (tmp / "c" / "fp32" / "model.unreproduced.ckpt").exists()
    with pytest.raises(SystemExit):
        run_main(alloc, monkeypatch, configs, tmp / "b", "--fp32_ckpt", "--report_only")
    assert "--report_only runs nothing" in capsys.readouterr().err


def test_a_config_that_is_no_fp32_start_is_refused(bench_env, monkeypatch, capsys):
    alloc, configs, calls, _, tmp = bench_env
    for bad in ("pretrain_continued", "pretrain_nope"):
        with pytest.raises(SystemExit):
            run_main(alloc, monkeypatch, configs, tmp / "runs", "--pretrain", bad)
        assert "valid: ['pretrain', 'pretrain_averaged']" in capsys.readouterr().err
    assert calls == []


def test_a_run_recorded_with_the_file_digest_is_kept_and_recorded_with_the_settings_digest(bench_env):
    alloc, configs, calls, _, tmp = bench_env
    ledger = tmp / "ledger.json"
    alloc.Bench(configs, tmp / "runs", ledger).fp32()
    args = ["pretrain", "--config", str(configs / "pretrain.yaml")]
    old = json.loads(ledger.read_text())  # as an earlier version recorded it: the file's bytes
    old["fp32"]["config_sha256"] = alloc.file_digest(args)
    ledger.write_text(json.dumps(old))
    alloc.Bench(configs, tmp / "elsewhere", ledger).fp32()  # restored, not rerun
    assert len(calls) == 1
    assert json.loads(ledger.read_text())["fp32"]["config_sha256"] == alloc.config_digest(args)
    record = json.loads((tmp / "elsewhere" / "fp32" / "bench_run.json").read_text())
    assert record["config_sha256"] == alloc.config_digest(args) != alloc.file_digest(args)
    (configs / "pretrain.yaml").write_text("# pretrain, a comment edited\n")
    alloc.Bench(configs, tmp / "elsewhere", ledger).fp32()  # its settings are unchanged: kept
    assert len(calls) == 1


@pytest.mark.parametrize("model", ["shakespeare_lstm", "shakespeare_transformer"])
def test_the_fast_config_is_the_short_config_with_the_fast_arms_settings(model):
    """configs/<model>/search_fast.yaml is what the nas_hessian_fast arm ran (search_short.yaml
    with ARM_OVERRIDES on top): the benchmark's figures are the config's."""
    import yaml
    alloc = load_benchmark("allocators")
    folder = ROOT / "configs" / model
    short = yaml.safe_load((folder / "search_short.yaml").read_text())
    overrides = alloc.ARM_OVERRIDES["nas_hessian_fast"]
    for flag, value in zip(overrides[::2], overrides[1::2]):
        short["model"][flag.removeprefix("--model.")] = yaml.safe_load(value)
    assert yaml.safe_load((folder / "search_fast.yaml").read_text()) == short


CURRENT_LEDGERS = ("allocators-lstm.json", "allocators-lstm-v3.json", "allocators-lstm-v4.json",
                   "allocators-transformer-v3.json", "allocators-transformer-v4.json")
"""The ledgers BENCHMARKS.md says reproduce with the current configs (the others: at their commit)."""


@pytest.mark.parametrize("name", CURRENT_LEDGERS)
def test_the_current_ledgers_hold_runs_of_the_current_config_settings(name):
    alloc = load_benchmark("allocators")
    kept = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    stale = {}
    for run, entry in kept.items():
        args = [str(ROOT / a) if a.endswith(".yaml") else a for a in entry["args"]]
        if entry["config_sha256"] not in (alloc.config_digest(args), alloc.file_digest(args)):
            stale[run] = entry["args"][entry["args"].index("--config") + 1]
    assert kept and not stale, f"runs made with settings these configs no longer have (the benchmark refuses them): {stale}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_bench_restores_every_allocator_run_from_the_current_ledgers(tmp_path, monkeypatch):
    """Each allocators.py line of `make bench` names a current ledger that holds every run it asks
    for: on a machine without run directories it restores them all and trains nothing."""
    recipe = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = [line.split("allocators.py")[1].split() for line in recipe.splitlines() if "allocators.py" in line]
    assert lines
    alloc = load_benchmark("allocators")
    calls = []
    monkeypatch.setattr(alloc.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.chdir(ROOT)  # the configs as the Makefile names them
    for argv in lines:
        ledger = Path(argv[argv.index("--ledger") + 1])
        assert ledger.name in CURRENT_LEDGERS, ledger
        copy = tmp_path / ledger.name  # restoring may re-record an entry: never into the committed file
        if not copy.exists():
            copy.write_text(ledger.read_text())
        argv[argv.index("--ledger") + 1] = str(copy)
        argv[argv.index("--run_dir") + 1] = str(tmp_path / "runs" / Path(argv[argv.index("--run_dir") + 1]).name)
        monkeypatch.setattr(sys, "argv", ["allocators", *argv])
        alloc.main()
    assert calls == []
