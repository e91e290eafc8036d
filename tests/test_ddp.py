"""Data-parallel runs: the BPTT streams are sharded per process, and a 2-process CPU (gloo) search
and finalize end with the same plan structure and budget as a single process, rank 0 writing."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from nas_mpq.data import BPTTBatches, LMDataModule
from nas_mpq.plan import PrecisionPlan


def test_each_rank_reads_its_own_contiguous_streams():
    ids = torch.arange(1000)
    whole = BPTTBatches(ids, 8, 10).data
    shards = [BPTTBatches(ids, 4, 10, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([s.data for s in shards]), whole)
    assert len(shards[0]) == len(shards[1]) == len(BPTTBatches(ids, 8, 10))
    x, y, first = shards[1][1]
    assert first is False and torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(x[0], whole[4, 10:20])


def test_lightning_distributed_sampler_is_refused(corpus_dir):
    dm = LMDataModule(str(corpus_dir), max_vocab=100, batch_size=4)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.train_dataloader()


def stage(*args, ddp=False):
    more = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"] if ddp else []
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "nas_mpq.cli", *args, *more], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_two_process_search_and_finalize(config, tmp_path):
    stage("pretrain", "--config", str(config), "--run_dir", str(tmp_path / "p"))
    init = ["--init_ckpt", str(tmp_path / "p" / "model.ckpt")]
    out = stage("search", "--config", str(config), "--run_dir", str(tmp_path / "ddp"), *init, ddp=True)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout
    stage("search", "--config", str(config), "--run_dir", str(tmp_path / "one"), *init)
    ddp, one = (PrecisionPlan.load(tmp_path / d / "plan.json") for d in ("ddp", "one"))
    assert ddp.groups.keys() == one.groups.keys() and ddp.budget == one.budget
    assert ddp.meets_budget() and ddp.size().avg_bits <= 2.0
    # every rank derived the same plan (the stage checks it against rank 0's and fails otherwise);
    # rank 0 alone wrote the results
    assert len(json.loads((tmp_path / "ddp" / "metrics.json").read_text())["val_ppl_history"]) == 2
    stage("finalize", "--config", str(config), "--run_dir", str(tmp_path / "fin"), *init,
          "--plan", str(tmp_path / "ddp" / "plan.json"), ddp=True)
    metrics = json.loads((tmp_path / "fin" / "metrics.json").read_text())
    out = stage("evaluate", "--model", str(tmp_path / "fin" / "model.safetensors"))
    assert json.loads(out.stdout[out.stdout.index("{"):])["test_ppl"] == pytest.approx(metrics["test_ppl"], abs=1e-4)
