"""benchmarks/pipeline_wall.py: the stages it times, in order, and the ratio it reports (the
`nas-mpq` stages faked: each writes its metrics and takes a set number of seconds)."""
import json
import sys
from pathlib import Path

import pytest

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SECONDS = {"pretrain": 100.0, "sensitivity": 10.0, "search": 30.0, "finalize": 20.0}


@pytest.fixture
def wall(monkeypatch):
    module = load_benchmark("pipeline_wall")
    calls = []

    def fake_timed(args):
        run_dir = Path(args[args.index("--run_dir") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"epochs": 3, "test_ppl": 90.0, "val_ppl_history": [1, 2]}))
        calls.append(args)
        return SECONDS[args[0]]

    monkeypatch.setattr(module, "timed", fake_timed)
    return module, calls


def run(module, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["pipeline_wall", "--configs", str(ROOT / "configs/shakespeare_lstm"), *argv])
    module.main()


def test_the_search_starts_from_the_timed_sensitivity_and_every_stage_after_pretrain_is_counted(
        wall, tmp_path, monkeypatch, capsys):
    module, calls = wall
    run(module, monkeypatch, "--pretrain", "pretrain_averaged", "--search", "search_short", "--init", "hessian",
        "--run_dir", str(tmp_path / "w"))
    out = json.loads(capsys.readouterr().out)
    assert [a[0] for a in calls] == ["pretrain", "sensitivity", "search", "finalize"]
    assert calls[0][2].endswith("pretrain_averaged.yaml") and calls[2][2].endswith("search_short.yaml")
    assert calls[1] == ["sensitivity", "--config", str(ROOT / "configs/shakespeare_lstm/search.yaml"),
                        "--ckpt", str(tmp_path / "w" / "fp32" / "model.ckpt"), "--method", "hessian",
                        "--num_batches", "2", "--run_dir", str(tmp_path / "w" / "sensitivity")]
    search = calls[2]
    assert search[search.index("--model.init_sensitivity") + 1] == str(tmp_path / "w" / "sensitivity" / "sensitivity.json")
    assert out["seconds"] == SECONDS
    assert out["after_pretrain_over_pretrain"] == 0.6


def test_without_init_the_search_starts_from_its_prior(wall, tmp_path, monkeypatch, capsys):
    module, calls = wall
    run(module, monkeypatch, "--run_dir", str(tmp_path / "w"))
    out = json.loads(capsys.readouterr().out)
    assert [a[0] for a in calls] == ["pretrain", "search", "finalize"]
    assert "--model.init_sensitivity" not in calls[1]
    assert out["after_pretrain_over_pretrain"] == 0.5


def test_an_unknown_config_or_a_used_run_dir_is_refused_before_anything_runs(wall, tmp_path, monkeypatch, capsys):
    module, calls = wall
    with pytest.raises(SystemExit):
        run(module, monkeypatch, "--search", "search_nope", "--run_dir", str(tmp_path / "w"))
    assert "search_nope" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "fp32").mkdir()
    with pytest.raises(SystemExit, match="not empty"):
        run(module, monkeypatch, "--run_dir", str(tmp_path / "used"))
    configs = tmp_path / "configs"  # --init needs search.yaml for its sensitivity stage
    configs.mkdir()
    for name in ("pretrain", "search_short", "finalize"):
        (configs / f"{name}.yaml").write_text("{}\n")
    run(module, monkeypatch, "--configs", str(configs), "--search", "search_short", "--run_dir", str(tmp_path / "a"))
    calls.clear()
    with pytest.raises(SystemExit):
        run(module, monkeypatch, "--configs", str(configs), "--search", "search_short", "--init", "kl",
            "--run_dir", str(tmp_path / "b"))
    assert "search.yaml" in capsys.readouterr().err
    assert calls == []
