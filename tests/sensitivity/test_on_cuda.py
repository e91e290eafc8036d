"""Sensitivity on a GPU gives the CPU's figures, and the stage measures on the trainer's device."""
import pytest
import torch

import nas_mpq.stages.sensitivity as sensitivity_stage
from nas_mpq.cli import main
from nas_mpq.search import uniform_plan
from nas_mpq.sensitivity import hutchinson_traces, kl_sensitivity
from search_spaces.lstm_lm import lstm_lm_space
from test_hessian import setup, task_loss
from test_kl_allocate import CANDS, trained_lm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_cuda(net, batches):
    return net.cuda(), [tuple(t.cuda() for t in b) if isinstance(b, tuple) else b.cuda() for b in batches]


def test_hutchinson_traces_on_cuda_match_the_cpu():
    net, groups, batch = setup()
    cpu = hutchinson_traces(net, task_loss, [batch], groups, max_samples=30, min_samples=30, seed=2)
    net, batches = on_cuda(net, [batch])
    gpu = hutchinson_traces(net, task_loss, batches, groups, max_samples=30, min_samples=30, seed=2)
    assert gpu.samples == cpu.samples == [30]
    for name in groups:  # the same Rademacher draws: the same estimate up to float rounding
        assert gpu.traces[name] == pytest.approx(cpu.traces[name], rel=1e-3, abs=1e-6), name


def test_kl_sensitivity_on_cuda_matches_the_cpu():
    net, batches = trained_lm()
    groups = uniform_plan(net, lstm_lm_space(), 2).groups
    cpu = kl_sensitivity(net, groups, CANDS, batches, lambda m, x: m(x)[0])
    net, batches = on_cuda(net, batches)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's LSTM may use TF32: full float32 here
        gpu = kl_sensitivity(net, groups, CANDS, batches, lambda m, x: m(x)[0])
    for name, per in cpu.items():
        assert gpu[name][32] == 0.0
        for b in CANDS:
            assert gpu[name][b] == pytest.approx(per[b], rel=1e-3, abs=1e-6), (name, b)


@pytest.mark.parametrize("method", ["kl", "hessian"])
def test_the_stage_measures_on_the_trainers_gpu(config, tmp_path, monkeypatch, method):
    fp32 = tmp_path / "fp32"
    assert main(["pretrain", "--config", str(config), "--run_dir", str(fp32), "--trainer.max_epochs", "1"]) == 0
    seen = []
    measure = getattr(sensitivity_stage, "kl_sensitivity" if method == "kl" else "hutchinson_traces")

    def recording(model, *args, **kwargs):
        batches = args[2] if method == "kl" else args[1]
        seen.append((next(model.parameters()).device.type, {t.device.type for b in batches for t in b if isinstance(t, torch.Tensor)}))
        return measure(model, *args, **kwargs)

    monkeypatch.setattr(sensitivity_stage, measure.__name__, recording)
    assert main(["sensitivity", "--config", str(config), "--ckpt", str(fp32 / "model.ckpt"), "--method", method,
                 "--run_dir", str(tmp_path / method), "--num_batches", "2", "--max_samples", "10",
                 "--trainer.accelerator", "gpu", "--trainer.devices", "1"]) == 0
    assert seen == [("cuda", {"cuda"})]
