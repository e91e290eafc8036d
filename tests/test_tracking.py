"""wandb from a stage config: offline runs with the plan table, the bits chart and the results."""
import json
import os
import subprocess
import sys

import pytest

from nas_mpq.plan import PrecisionPlan
from nas_mpq.tracking import WandbConfig


def test_mode_defaults_to_offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert WandbConfig(project="p").resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbConfig(project="p").resolved_mode() == "disabled"
    assert WandbConfig(project="p", mode="online").resolved_mode() == "online"
    assert WandbConfig().logger(None, "search") is None
    with pytest.raises(ValueError, match="unknown wandb mode 'cloud'"):
        WandbConfig(mode="cloud")


@pytest.mark.slow
def test_search_logs_plan_and_results_to_an_offline_run(config, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # the default: offline
    run = tmp_path / "s"
    out = subprocess.run([sys.executable, "-m", "nas_mpq.cli", "search", "--config", str(config), "--run_dir",
                          str(run), "--wandb.project", "nas-mpq-test"], env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (offline,) = (run / "wandb").glob("offline-run-*")
    (table,) = offline.glob("files/media/table/plan/table_*.table.json")
    data = json.loads(table.read_text())
    plan = PrecisionPlan.load(run / "plan.json")
    assert data["columns"] == ["group", "param", "numel", "bits"]
    assert {row[0]: row[3] for row in data["data"]} == plan.bits
    log = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"result/val_ppl" in log and b"plan/bits_per_group" in log
