"""The `nas-mpq` stages end to end on a small real corpus (tiny limits), and every shipped config."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from nas_mpq.cli import main

REPO = Path(__file__).resolve().parents[1]
def test_pretrain_search_qat_pipeline(config, tmp_path, capsys):
    fp32, run = tmp_path / "fp32", tmp_path / "search"
    assert main(["pretrain", "--config", str(config), "--run_dir", str(fp32)]) == 0
    metrics = json.loads((fp32 / "metrics.json").read_text())
    assert metrics["test_ppl"] > 1 and (fp32 / "model.ckpt").is_file()
    assert main(["search", "--config", str(config), "--run_dir", str(run),
                 "--init_ckpt", str(fp32 / "model.ckpt")]) == 0
    log = capsys.readouterr().out
    assert "groups changed" in log and "% of the weights searched (6 tensors" in log  # the coverage report
    plan = json.loads((run / "plan.json").read_text())
    assert plan["format"] == "nas-mpq.plan/4" and plan["avg_bits"] <= 2.0
    assert plan["coverage"]["unsearched"]["decoder.bias"]["kind"] == "float"
    assert (run / "plan.png").stat().st_size > 1000
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["val_ppl_history"]) == 2 and m["size_bits"] == plan["size_bits"]
    # how far the repair moved the search's plan: in plan.json, metrics.json and the log
    assert m["repair"] == plan["repair"] and plan["repair"]["avg_bits"] == pytest.approx(plan["avg_bits"])
    assert sorted((run / "checkpoints").iterdir())[0].name == "epoch=0.ckpt"
    assert (run / "logs").is_dir()
    qat = tmp_path / "qat"
    assert main(["pretrain", "--config", str(config), "--run_dir", str(qat), "--init_ckpt",
                 str(fp32 / "model.ckpt"), "--model.plan", str(run / "plan.json")]) == 0
    q = json.loads((qat / "metrics.json").read_text())
    assert q["size_bits"] == plan["size_bits"] and q["test_ppl"] > 1


def test_resumed_search_ends_with_the_same_plan(config, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["search", "--config", str(config), "--run_dir", str(straight)]) == 0
    epoch0 = straight / "checkpoints" / "epoch=0.ckpt"
    assert main(["search", "--config", str(config), "--run_dir", str(resumed), "--resume", str(epoch0)]) == 0
    assert (straight / "plan.json").read_text() == (resumed / "plan.json").read_text()
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert torch.equal(a["nas_mpq"]["sampler"]["generator"], b["nas_mpq"]["sampler"]["generator"])
    assert json.loads((straight / "metrics.json").read_text())["val_ppl_history"] == \
        json.loads((resumed / "metrics.json").read_text())["val_ppl_history"]


def test_a_probing_search_reports_its_probes_and_resumes_to_the_same_plan(config, tmp_path, capsys):
    """plan_from probe through the CLI: the probes in metrics.json and the log, the plan the best
    probed one; a search resumed from its first epoch probes from the same starting weights and
    returns the same plan with the same figures."""
    probe = ["--model.plan_from", "probe", "--model.probe_steps", "2", "--model.probe_top", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["search", "--config", str(config), "--run_dir", str(straight), *probe]) == 0
    assert "probe: start plan: val ppl" in capsys.readouterr().out
    m = json.loads((straight / "metrics.json").read_text())
    assert [c["epoch"] for c in m["probes"]][0] is None and 1 <= len(m["probes"]) <= 2
    # the other candidate (unless its plan is the start plan) is the best validated epoch's
    assert m["probes"][-1]["val_ppl"] in (None, min(m["val_ppl_history"]))
    best = min(m["probes"], key=lambda c: c["probe_val_ppl"])
    assert m["search_epoch"] == best
    epoch0 = straight / "checkpoints" / "epoch=0.ckpt"
    assert main(["search", "--config", str(config), "--run_dir", str(resumed), "--resume", str(epoch0), *probe]) == 0
    assert json.loads((resumed / "metrics.json").read_text())["probes"] == m["probes"]
    assert (straight / "plan.json").read_text() == (resumed / "plan.json").read_text()


def test_refuses_to_overwrite_results(config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"plan.json exists from a previous run; refusing to overwrite.*--overwrite"):
        main(["search", "--config", str(config), "--run_dir", str(run)])
    assert (run / "plan.json").read_text() == "{}"
    assert not (run / "checkpoints").exists()  # refused before any training
    assert main(["search", "--config", str(config), "--run_dir", str(run), "--overwrite", "true",
                 "--trainer.max_epochs", "1"]) == 0
    assert json.loads((run / "plan.json").read_text())["format"] == "nas-mpq.plan/4"
    with pytest.raises(SystemExit, match="checkpoints of an unfinished run"):
        (run / "plan.json").unlink()
        main(["search", "--config", str(config), "--run_dir", str(run)])


def test_bad_bit_width_and_budget_fail_before_training(config, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown bit-width 5"):
        main(["search", "--config", str(config), "--run_dir", str(run), "--model.space.candidates", "[1, 5]"])
    with pytest.raises(ValueError, match="infeasible budget"):
        main(["search", "--config", str(config), "--run_dir", str(run), "--model.budget.value", "0.25"])
    assert not (run / "checkpoints").exists()


def test_plan_that_does_not_match_the_model(config, tmp_path):
    run = tmp_path / "search"
    main(["search", "--config", str(config), "--run_dir", str(run), "--trainer.max_epochs", "1"])
    with pytest.raises(ValueError, match=r"the plan does not match the model: .*rnn.weight_ih_l0:i"):
        main(["pretrain", "--config", str(config), "--run_dir", str(tmp_path / "qat"),
              "--model.plan", str(run / "plan.json"), "--model.net.init_args.hidden_dim", "32"])


def shipped_configs():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        # a pipeline config has a section per stage; a stage config is named after its stage
        stages = [s for s in ("pretrain", "search", "finalize") if s in cfg] or [path.stem.split("_")[0]]
        for stage in stages:
            yield pytest.param(path, stage, id=f"{path.parent.name}/{path.name}:{stage}")


def _config_network(cfg: dict, stage: str) -> tuple:
    """The stage's network and data module, built from a config's class paths as the CLI would."""
    import importlib

    from nas_mpq.data import LMDataModule

    def build(spec: dict, **extra):
        module, _, name = spec["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}), **extra)

    data = cfg["data"]
    dm = build(data) if "class_path" in data else LMDataModule(**data)
    net = cfg.get(stage, cfg)["model"]["net"]
    return build(net, **({"vocab_size": dm.vocab_size} if hasattr(dm, "vocab_size") else {})), dm


@pytest.mark.parametrize("path,stage", shipped_configs())
def test_shipped_configs_instantiate(path, stage, tmp_path, monkeypatch, capsys):
    from nas_mpq.lit import AtomicCheckpointIO, SpaceConfig
    from nas_mpq.search import uniform_plan
    from nas_mpq.stages.run import PIPELINE_CLIS
    monkeypatch.chdir(REPO)
    stage_cli = PIPELINE_CLIS[stage]
    cfg = yaml.safe_load(path.read_text())
    net, dm = _config_network(cfg, stage)
    extra = []
    if stage == "finalize":  # a plan that fits the config's network
        space = SpaceConfig(**cfg.get(stage, cfg)["model"]["space"]).build()
        uniform_plan(net, space, 2).save(tmp_path / "plan.json")
        extra = ["--plan", str(tmp_path / "plan.json")]
    cli = stage_cli(["--config", str(path), "--run_dir", str(tmp_path), *extra])
    assert isinstance(cli.model, stage_cli.model_class) and type(cli.datamodule) is type(dm)
    assert type(cli.model.net) is type(net)
    weights = {k: v.shape for k, v in cli.model.net.state_dict().items() if ".choices." not in k}
    assert weights == {k: v.shape for k, v in net.state_dict().items()}
    # callbacks the config names (early stopping) reach the trainer beside the stage's checkpointing
    named = {c["class_path"].rsplit(".", 1)[1] for c in cfg.get(stage, cfg).get("trainer", {}).get("callbacks", [])}
    assert named | {"ModelCheckpoint"} <= {type(c).__name__ for c in cli.trainer.callbacks}
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # whole or absent
    with pytest.raises(SystemExit):
        main([stage, "--config", str(path), "--print_config", *extra])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["net"]["class_path"] == cfg.get(stage, cfg)["model"]["net"]["class_path"]


@pytest.mark.slow
def test_quick_config_search_learns(tmp_path, monkeypatch):
    """The quick config at avg 2 bits: the plan mixes bit-widths and val/ppl improves."""
    monkeypatch.chdir(REPO)
    quick = "configs/shakespeare_lstm/quick.yaml"
    assert main(["pretrain", "--config", quick, "--run_dir", str(tmp_path / "fp32"),
                 "--trainer.enable_progress_bar", "false"]) == 0
    assert main(["search", "--config", quick, "--run_dir", str(tmp_path / "search"),
                 "--init_ckpt", str(tmp_path / "fp32" / "model.ckpt"), "--trainer.enable_progress_bar", "false"]) == 0
    m = json.loads((tmp_path / "search" / "metrics.json").read_text())
    plan = json.loads((tmp_path / "search" / "plan.json").read_text())
    assert len(set(g["bits"] for g in plan["groups"].values())) >= 2
    assert plan["avg_bits"] <= 2.0
    history = m["val_ppl_history"]
    assert history[-1] < history[0], history
