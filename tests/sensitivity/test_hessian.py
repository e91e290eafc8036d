import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from conftest import tiny_lm
from nas_mpq.sensitivity import hawq_omega, hutchinson_traces
from nas_mpq.search import uniform_plan
from search_spaces.lstm_lm import lstm_lm_space


def task_loss(model, batch):
    x, y = batch
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def setup(tie=False):
    net = tiny_lm(vocab=12, dim=4, layers=1, tie=tie).eval()
    groups = uniform_plan(net, lstm_lm_space(), 2).groups
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 12, (3, 5), generator=g), torch.randint(0, 12, (3, 5), generator=g))
    return net, groups, batch


def exact_traces(net, groups, batch):
    names = list(dict.fromkeys(g.param for g in groups.values()))
    shapes = [net.get_parameter(n).shape for n in names]
    sizes = [s.numel() for s in shapes]
    flat = torch.cat([net.get_parameter(n).detach().reshape(-1) for n in names])

    def loss(vec):
        parts = dict(zip(names, (p.reshape(s) for p, s in zip(vec.split(sizes), shapes))))
        return task_loss(lambda x: functional_call(net, parts, (x,)), batch)

    diag = torch.autograd.functional.hessian(loss, flat).diagonal()
    offsets = dict(zip(names, torch.tensor([0, *sizes]).cumsum(0).tolist()))
    out = {}
    for name, g in groups.items():
        d = diag[offsets[g.param]: offsets[g.param] + net.get_parameter(g.param).numel()]
        d = d.reshape(net.get_parameter(g.param).shape)
        out[name] = float(d if g.rows is None else d[g.rows[0]:g.rows[1]].sum()) if g.rows else float(d.sum())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_hutchinson_matches_exact_traces(tie):
    net, groups, batch = setup(tie)
    exact = exact_traces(net, groups, batch)
    est = hutchinson_traces(net, task_loss, [batch], groups, max_samples=4000, min_samples=4000, seed=0)
    assert est.samples == [4000]
    for name in groups:
        assert est.traces[name] == pytest.approx(exact[name], rel=0.05, abs=2e-3), name


def test_tolerance_stops_early_and_seed_reproduces():
    net, groups, batch = setup()
    a = hutchinson_traces(net, task_loss, [batch, batch], groups, max_samples=500, tol=1e-2, seed=3)
    b = hutchinson_traces(net, task_loss, [batch, batch], groups, max_samples=500, tol=1e-2, seed=3)
    assert a.traces == b.traces and all(10 <= k < 500 for k in a.samples)


def test_hawq_omega_orders_bits():
    net, groups, batch = setup()
    est = hutchinson_traces(net, task_loss, [batch], groups, max_samples=50)
    omega = hawq_omega(net, groups, est.traces, [1, 2, 4, 8, 32])
    assert any(est.traces[name] > 0 for name in omega)
    for name, per in omega.items():
        assert per[32] == 0.0, name
        if est.traces[name] > 0:  # fewer bits, a larger perturbation: strictly more sensitive
            assert per[2] > per[4] > per[8] > 0.0 and per[1] > per[4], name
        else:  # a negative trace is clamped: the group is scored insensitive at every width
            assert all(v == 0.0 for v in per.values()), name


def test_hutchinson_runs_through_fused_attention():
    """The Transformer's scaled-dot-product attention picks a fused kernel without a double
    backward; the traces are taken with the math kernel instead."""
    from search_spaces.transformer_lm import TransformerLM, transformer_lm_space
    torch.manual_seed(0)
    net = TransformerLM(12, d_model=8, num_heads=2, num_layers=1, max_len=8, dropout=0.0).eval()
    groups = uniform_plan(net, transformer_lm_space(), 2).groups
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 12, (3, 6), generator=g), torch.randint(0, 12, (3, 6), generator=g))
    est = hutchinson_traces(net, task_loss, [batch], groups, max_samples=20)
    assert set(est.traces) == set(groups) and all(t == t for t in est.traces.values())
    assert any(abs(t) > 0 for t in est.traces.values())
