"""benchmarks/stages_on_gpu.py, run for real on the tiny config (on the CPU where there is no GPU):
every stage's command runs, the packed model evaluates to the finalize's figure, and a failing
command is named."""
import json
import sys

import pytest
import torch

from conftest import load_benchmark


@pytest.mark.slow
def test_every_stage_runs_and_the_packed_model_evaluates_as_finalized(config, tmp_path, monkeypatch, capfd):
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(sys, "argv", ["stages_on_gpu.py", "--configs", str(config), "--run_dir", str(tmp_path),
                                      "--accelerator", accelerator])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    load_benchmark("stages_on_gpu").main()
    result = json.loads(capfd.readouterr().out)  # stdout holds the JSON alone
    checked = result["configs"][str(config)]
    assert set(checked["seconds"]) == {"run", "sensitivity_hessian", "sensitivity_kl", "evaluate"}
    assert all(s > 0 for s in checked["seconds"].values())
    assert checked["evaluate"]["test_ppl"] == pytest.approx(checked["report"]["mixed"]["test_ppl"], rel=1e-5)
    assert all(bits <= 2.0 for bits in checked["sensitivity_plan_avg_bits"].values())


def test_a_failing_command_is_named(monkeypatch):
    module = load_benchmark("stages_on_gpu")
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 3})())
    with pytest.raises(SystemExit, match=r"`nas-mpq run --config c.yaml` failed with exit status 3"):
        module.timed(["run", "--config", "c.yaml"])
