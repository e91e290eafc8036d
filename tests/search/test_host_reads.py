"""A search step reads no tensor back to the host per weight group (each read would wait for the
device): soft samples read nothing; a hard sample or an evaluation forward reads every choice's
pick at once. The one-hot cases still quantize only the picked candidate."""
import warnings
from pathlib import Path

import pytest
import torch

from conftest import OWN_CODE, host_reads, tiny_lm
from nas_mpq.plan import Budget
from nas_mpq.quant import make_quantizer
from nas_mpq.search import (BudgetRegularizer, GumbelSampler, MixedPrecisionChoice, calibrate_activations_,
                            prepare_search_, search_groups)
from nas_mpq.search import layers as search_layers
from search_spaces.cnn import ResNetCNN, cnn_space
from search_spaces.lstm_lm import lstm_lm_space
from search_spaces.transformer_lm import TransformerLM, transformer_lm_space

MODELS = {
    "lstm": lambda: (tiny_lm(vocab=40, dim=8), lstm_lm_space()),
    "lstm_buckets_lsq": lambda: (tiny_lm(vocab=40, dim=8, tie=True),
                                 lstm_lm_space(method="lsq", per_channel=True, freq_buckets=2)),
    "transformer_heads": lambda: (TransformerLM(40, 16, 2, 1, max_len=8, dropout=0.0),
                                  transformer_lm_space(grouping="head", blocks=2, activation_candidates=[4, 8, 32])),
    "cnn_blocks_prune": lambda: (ResNetCNN(10, width=8), cnn_space(grouping="block", blocks=2, prune=True,
                                                                    activation_candidates=[4, 32])),
}


def supernet(name: str, hard: bool = False):
    torch.manual_seed(0)
    net, space = MODELS[name]()
    prepare_search_(net, space, sampler=GumbelSampler(tau=1.0, hard=hard, seed=0))
    net.train()
    x = net.example_input(4)
    calibrate_activations_(net, x)  # once, before training (as the LightningModules do)
    return net, x


def loss_of(net, x) -> torch.Tensor:
    out = net(*x)
    return (out[0] if isinstance(out, tuple) else out).square().mean()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_soft_step_reads_nothing_back(name):
    net, x = supernet(name)
    reg = BudgetRegularizer(net, Budget("avg_bits", 2.0))
    mu = torch.zeros(())
    with host_reads(fail=True):
        loss = loss_of(net, x) + reg.penalty(mu, 1.0) + reg.size_weighted_entropy()
        loss.backward()
        reg.update_dual(mu, 0.05, reg.argmax_measure() / reg.capacity)
    assert all(p.grad is not None for g in search_groups(net) for p in g.choice.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hard_samples_and_evaluation_read_every_pick_at_once(name):
    net, x = supernet(name, hard=True)
    with host_reads(fail=False) as reads:
        loss_of(net, x).backward()
    assert len(reads) == 1, reads
    for g in search_groups(net):
        assert g.choice.active_candidates() == (int(g.choice.sample.detach().argmax()),)
    net.eval()
    with host_reads(fail=False) as reads, torch.no_grad():
        for forwards in (1, 2):
            loss_of(net, x)
            assert len(reads) == forwards, reads
    for g in search_groups(net):
        assert g.choice.active_candidates() == (g.choice.candidates.index(g.choice.argmax_bits()),)


@pytest.mark.parametrize("method", ["uniform", "lsq"])
def test_a_hard_sample_equals_the_sum_over_every_candidate(method):
    """Quantizing the picked candidate alone gives the values and gradients of the full sum."""
    torch.manual_seed(0)
    w = torch.randn(12, 7)
    choice = MixedPrecisionChoice([make_quantizer(b, w, method) for b in (0, 1, 2, 4, 8, 32)])
    sampler = GumbelSampler(tau=0.5, hard=True, seed=3)
    for _ in range(6):
        [(y, index)] = sampler.draw([choice.theta])
        results = []
        for pick in (index, None):
            w_leaf = w.clone().requires_grad_(True)
            y_leaf = y.detach().clone().requires_grad_(True)
            choice.set_sample(y_leaf, pick)
            out = choice.composite(w_leaf)
            out.backward(torch.ones_like(out))
            results.append((out.detach(), w_leaf.grad, y_leaf.grad))
        (out, w_grad, y_grad), (full, full_w_grad, full_y_grad) = results
        assert torch.equal(out, full) and torch.equal(w_grad, full_w_grad) and torch.equal(y_grad, full_y_grad)
        assert torch.equal(out, choice.quantizers[index](w) * y[index])


def test_the_sampler_draws_as_one_call_per_choice():
    """Drawing for several choices at once gives the samples of one call per choice, in order."""
    thetas = [torch.randn(k) for k in (5, 3, 5, 2)]
    for hard in (False, True):
        at_once = GumbelSampler(tau=0.7, hard=hard, seed=4).draw(thetas)
        one_by_one = GumbelSampler(tau=0.7, hard=hard, seed=4)
        for theta, (y, index) in zip(thetas, at_once):
            assert torch.equal(y, one_by_one.sample(theta))
            assert index == (int(y.argmax()) if hard else None)


@pytest.mark.parametrize("write", ["copy_", "data", "fused_adam"])
def test_an_evaluation_forward_sees_theta_as_it_is_then(write):
    """The argmax an evaluation forward records is forgotten after it: theta changed in place,
    through .data (no version bump) or by a fused optimizer step is seen by the next forward and
    by a direct composite call."""
    net, x = supernet("lstm")
    net.eval()
    groups = search_groups(net)
    with torch.no_grad():
        loss_of(net, x)
    at_32 = torch.tensor([0.0, 0.0, 0.0, 0.0, 9.0])
    if write == "fused_adam":
        thetas = [g.choice.theta for g in groups]
        for t in thetas:
            t.grad = -at_32.clone()
        torch.optim.Adam(thetas, lr=100.0, fused=True).step()  # every group's argmax to 32 bits
    else:
        with torch.no_grad():
            for g in groups:
                (g.choice.theta.data if write == "data" else g.choice.theta).copy_(at_32)
    for g in groups:
        assert g.choice.active_candidates() == (4,)
        assert torch.equal(g.choice.composite(g.plan.view(g.weight)), g.plan.view(g.weight))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_soft_step_on_cuda_waits_for_the_device_in_no_choice(name):
    """CUDA's synchronisation check, set to warn, finds no wait in the quantization and search
    code. (The layers' own operations may wait: a single-group embedding looks its rows up with
    torch.unique, whose result size the host must know.)"""
    net, x = supernet(name)
    net.cuda()
    x = tuple(t.cuda() for t in x)
    reg = BudgetRegularizer(net, Budget("avg_bits", 2.0))
    mu = torch.zeros((), device="cuda")

    def step() -> None:
        (loss_of(net, x) + reg.penalty(mu, 1.0)).backward()
        reg.update_dual(mu, 0.05, reg.argmax_measure() / reg.capacity)

    step()  # the first step moves the budget's constants to the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    layers = str(Path(search_layers.__file__))
    waits = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    assert [w for w in waits if w.startswith(OWN_CODE) and not w.startswith(layers)] == []
