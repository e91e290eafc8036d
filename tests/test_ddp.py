"""Data-parallel runs: the BPTT streams are sharded per process, and a 2-process CPU (gloo) search
ends where one process reading the same streams ends, rank 0 writing."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

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


def thetas(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith(".theta")}


@pytest.mark.slow
def test_two_processes_search_as_one_process_on_the_same_streams(config, tmp_path):
    """2 processes x 8 streams read the same text as 1 process x 16 streams, carry the same hidden
    states and average the same gradients, and the choices' noise is the same on every rank: with
    dropout off (its masks depend on the rank) the searches end with the same choices, plan and
    validation perplexities. The finalized model, written by rank 0, evaluates in one process to
    the test perplexity the stage reported."""
    cfg = yaml.safe_load(config.read_text())
    for section in ("pretrain", "search", "finalize"):
        cfg[section]["model"]["net"]["init_args"]["dropout"] = 0.0
    config.write_text(yaml.safe_dump(cfg))
    stage("pretrain", "--config", str(config), "--run_dir", str(tmp_path / "p"))
    init = ["--init_ckpt", str(tmp_path / "p" / "model.ckpt")]
    out = stage("search", "--config", str(config), "--run_dir", str(tmp_path / "ddp"), *init, ddp=True)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout
    stage("search", "--config", str(config), "--run_dir", str(tmp_path / "one"), *init,
          "--data.batch_size", "16", "--data.eval_batch_size", "8")
    ddp, one = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ddp", "one"))
    assert len(ddp["val_ppl_history"]) == 2
    assert ddp["val_ppl_history"] == pytest.approx(one["val_ppl_history"], rel=1e-4)
    ddp_theta, one_theta = thetas(tmp_path / "ddp"), thetas(tmp_path / "one")
    assert ddp_theta.keys() == one_theta.keys()
    assert all(torch.allclose(ddp_theta[k], one_theta[k], atol=1e-4) for k in ddp_theta)
    assert len({tuple(v.tolist()) for v in one_theta.values()}) > 1  # trained apart from their common prior
    ddp_plan, one_plan = (PrecisionPlan.load(tmp_path / d / "plan.json") for d in ("ddp", "one"))
    assert ddp_plan.bits == one_plan.bits
    stage("finalize", "--config", str(config), "--run_dir", str(tmp_path / "fin"), *init,
          "--plan", str(tmp_path / "ddp" / "plan.json"), ddp=True)
    metrics = json.loads((tmp_path / "fin" / "metrics.json").read_text())
    out = stage("evaluate", "--model", str(tmp_path / "fin" / "model.safetensors"))
    assert json.loads(out.stdout[out.stdout.index("{"):])["test_ppl"] == pytest.approx(metrics["test_ppl"], abs=1e-4)
