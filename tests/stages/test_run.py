"""finalize, evaluate and `nas-mpq run` end to end on the small corpus (tiny limits)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import check_exported_model
from nas_mpq.cli import main
from nas_mpq.plan import PrecisionPlan


@pytest.mark.slow
def test_run_pipeline_report_export_and_evaluate(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--run_dir", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert set(report) >= {"fp32", "mixed", "uniform", "budget", "timings_s"}
    assert report["mixed"]["avg_bits"] <= 2.0 and report["uniform"]["bits"] == 2
    assert report["fp32"]["size_bits"] / report["mixed"]["size_bits"] == pytest.approx(report["mixed"]["compression"])
    md = (run / "report.md").read_text()
    assert "| FP32 |" in md and "search/plan.png" in md and (run / "ppl.png").is_file()
    for stage in ("pretrain", "search", "finalize", "uniform"):
        assert report["timings_s"][stage] > 0
    model = run / "finalize" / "model.safetensors"
    metrics = json.loads((run / "finalize" / "metrics.json").read_text())
    plan, result = check_exported_model(model, capsys, metrics["test_ppl"])
    assert plan.bits == PrecisionPlan.load(run / "search" / "plan.json").bits
    assert abs(metrics["data_bytes"] - plan.size().size_bits / 8) <= 0.02 * plan.size().size_bits / 8
    assert result["size_bits"] == plan.size().size_bits
    # --data.* overrides the data the model file names (a smaller evaluation batch: other streams)
    assert main(["evaluate", "--model", str(model), "--data.eval_batch_size", "2"]) == 0
    smaller = json.loads(capsys.readouterr().out)
    assert smaller["size_bits"] == result["size_bits"] and smaller["test_ppl"] != result["test_ppl"]
    with pytest.raises(SystemExit, match="finished run.*refusing to overwrite"):
        main(["run", "--config", str(config), "--run_dir", str(run)])


def test_ste_finalize_and_stage_overrides(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--run_dir", str(run), "--finalize.model.method", "ste",
                 "--search.trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]) == 0
    metrics = json.loads((run / "finalize" / "metrics.json").read_text())
    assert metrics["method"] == "ste" and len(metrics["val_ppl_history"]) == 2
    assert len(json.loads((run / "search" / "metrics.json").read_text())["val_ppl_history"]) == 1
    check_exported_model(run / "finalize" / "model.safetensors", capsys, metrics["test_ppl"])


def test_interrupted_admm_finalize_resumes_exactly(config, tmp_path):
    from nas_mpq.search import uniform_plan
    from conftest import tiny_lm
    from search_spaces.lstm_lm import lstm_lm_space
    plan = tmp_path / "plan.json"
    uniform_plan(tiny_lm(vocab=200, dim=16), lstm_lm_space(), 2).save(plan)
    common = ["finalize", "--config", str(config), "--plan", str(plan)]
    assert main([*common, "--run_dir", str(tmp_path / "straight")]) == 0
    assert main([*common, "--run_dir", str(tmp_path / "first"), "--trainer.max_epochs", "1"]) == 0
    assert main([*common, "--run_dir", str(tmp_path / "resumed"),
                 "--resume", str(tmp_path / "first" / "checkpoints" / "last.ckpt")]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("admm.") and k.endswith("_U") for k in a) and "admm.rho" in a
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert float(a["admm.rho"]) == pytest.approx(0.01 * 1.5 ** 5)  # 10 steps, one ADMM iteration every 2


def test_finalize_bad_input(config, tmp_path):
    with pytest.raises(ValueError, match="unknown finalize method 'sgd'"):
        main(["finalize", "--config", str(config), "--run_dir", str(tmp_path / "r"), "--plan",
              str(tmp_path / "p.json"), "--model.method", "sgd"])
    with pytest.raises(FileNotFoundError, match="p.json does not exist"):
        main(["finalize", "--config", str(config), "--run_dir", str(tmp_path / "r"), "--plan", str(tmp_path / "p.json")])


@pytest.mark.parametrize("method", [pytest.param("hessian", marks=pytest.mark.slow), "kl", "uniform", "random"])
def test_sensitivity_stage(config, tmp_path, method):
    fp32 = tmp_path / "fp32"
    assert main(["pretrain", "--config", str(config), "--run_dir", str(fp32), "--trainer.max_epochs", "1"]) == 0
    run = tmp_path / method
    assert main(["sensitivity", "--config", str(config), "--ckpt", str(fp32 / "model.ckpt"), "--method", method,
                 "--run_dir", str(run), "--num_batches", "2", "--max_samples", "20"]) == 0
    plan = PrecisionPlan.load(run / "plan.json")
    assert plan.meets_budget() and plan.extra["allocator"] == method
    if method == "uniform":  # the largest width that fits avg 2 bits: 2 everywhere
        assert set(plan.bits.values()) == {2}
    if method == "random":  # a random plan that fills the budget (>= 99 %) with mixed widths
        assert plan.size().avg_bits >= 0.99 * 2.0 and len(set(plan.bits.values())) >= 2
    if method in ("hessian", "kl"):
        report = json.loads((run / "sensitivity.json").read_text())
        assert report["method"] == method and set(report["groups"]) == set(plan.groups)
        assert (run / "sensitivity.png").is_file()
        assert all(g["omega"]["32"] == 0.0 for g in report["groups"].values())
        if method == "hessian":
            assert all("trace" in g for g in report["groups"].values())
        # the supernet can start from it, and the plan loads into the QAT model
        search = tmp_path / f"search-{method}"
        assert main(["search", "--config", str(config), "--run_dir", str(search), "--trainer.max_epochs", "1",
                     "--model.init_sensitivity", str(run / "sensitivity.json")]) == 0
        assert main(["pretrain", "--config", str(config), "--run_dir", str(tmp_path / "qat"),
                     "--trainer.max_epochs", "1", "--model.plan", str(run / "plan.json")]) == 0


def test_sensitivity_bad_input(config, tmp_path, capsys):
    fp32 = tmp_path / "fp32"
    main(["pretrain", "--config", str(config), "--run_dir", str(fp32), "--trainer.max_epochs", "1"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # not a method: the parser lists the valid ones
        main(["sensitivity", "--config", str(config), "--ckpt", str(fp32 / "model.ckpt"), "--method", "fisher",
              "--run_dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert "fisher" in err and all(m in err for m in ("hessian", "kl", "uniform")), err
    with pytest.raises(ValueError, match="does not match the model"):
        main(["sensitivity", "--config", str(config), "--ckpt", str(fp32 / "model.ckpt"),
              "--run_dir", str(tmp_path / "s"), "--model.net.init_args.hidden_dim", "32"])
    assert not (tmp_path / "s" / "plan.json").exists()


@pytest.mark.slow
def test_run_from_a_trained_model_search_only_in_an_env_named_dir(config, tmp_path, monkeypatch):
    assert main(["pretrain", "--config", str(config), "--run_dir", str(tmp_path / "fp32")]) == 0
    monkeypatch.setenv("WANDB_RUN_ID", "t7")
    assert main(["run", "--config", str(config), "--run_dir", str(tmp_path / "{WANDB_RUN_ID}"),
                 "--init_ckpt", str(tmp_path / "fp32" / "model.ckpt"), "--finalize", "false"]) == 0
    run = tmp_path / "t7"
    report = json.loads((run / "report.json").read_text())
    assert not (run / "pretrain").exists() and not (run / "finalize").exists()
    assert report["mixed"]["test_ppl"] is None and report["uniform"] is None
    assert report["mixed"]["val_ppl"] > 1 and report["mixed"]["avg_bits"] <= 2.0
    assert report["fp32"]["test_ppl"] == json.loads((tmp_path / "fp32" / "metrics.json").read_text())["test_ppl"]
    with pytest.raises(SystemExit, match="NO_SUCH_VAR"):
        main(["run", "--config", str(config), "--run_dir", str(tmp_path / "{NO_SUCH_VAR}")])


def test_run_dir_expands_only_plain_known_fields(monkeypatch):
    from nas_mpq.stages.run import resolve_run_dir
    monkeypatch.setenv("WANDB_RUN_ID", "abc1")
    monkeypatch.setenv("SLURM_JOB_ID", "../up")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert resolve_run_dir("runs/{{x}}/{WANDB_RUN_ID}") == Path("runs/{x}/abc1")
    valid = "valid fields: {WANDB_RUN_ID}, {WANDB_SWEEP_ID}, {SLURM_JOB_ID}"
    for template, why in (("runs/{WANDB_RUN_ID.__class__}", "{WANDB_RUN_ID.__class__} is not a valid field"),
                          ("runs/{WANDB_RUN_ID[0]}", "{WANDB_RUN_ID[0]} is not a valid field"),
                          ("runs/{WANDB_RUN_ID!r:>9}", "{WANDB_RUN_ID!r:>9} is not a valid field"),
                          ("runs/{HOME}", "{HOME} is not a valid field"),
                          ("runs/{}", "{} is not a valid field"),
                          ("runs/{", "Single '{' encountered"),
                          ("runs/{WANDB_SWEEP_ID}", "names the environment variable WANDB_SWEEP_ID, which is not set"),
                          ("runs/{SLURM_JOB_ID}", "{SLURM_JOB_ID} must be one path component, but $SLURM_JOB_ID is '../up'")):
        with pytest.raises(SystemExit) as e:
            resolve_run_dir(template)
        assert why in str(e.value) and valid in str(e.value), template
