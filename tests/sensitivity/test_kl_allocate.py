import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_lm
from nas_mpq.plan import Budget
from nas_mpq.search import uniform_plan
from nas_mpq.sensitivity import allocate, kl_sensitivity, random_plan, uniform_plan_for
from search_spaces.lstm_lm import lstm_lm_space

CANDS = [1, 2, 4, 8, 32]


def trained_lm():
    """A small LM fitted for a few hundred steps to a repeating token pattern."""
    net = tiny_lm(vocab=16, dim=16, layers=1)
    data = torch.arange(16).repeat(40).reshape(8, -1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = net(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 16), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), [data[:, :30]]


def test_kl_is_zero_at_32_bits_and_grows_as_bits_fall():
    net, batches = trained_lm()
    groups = uniform_plan(net, lstm_lm_space(), 2).groups
    before = {k: v.clone() for k, v in net.state_dict().items()}
    omega = kl_sensitivity(net, groups, CANDS, batches, lambda m, x: m(x)[0])
    for name, per in omega.items():
        assert per[32] == 0.0, name
        assert min(per[1], per[2]) >= per[4] >= per[8] >= per[32], (name, per)
    total = [sum(per[b] for per in omega.values()) for b in CANDS]
    assert total == sorted(total, reverse=True) and total[0] > 0  # grows as the bits fall
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # left unchanged


def test_allocation_and_baselines_meet_the_budget():
    net = tiny_lm(vocab=40, dim=8)
    template = uniform_plan(net, lstm_lm_space(), 32)
    budget = Budget("avg_bits", 2.0)
    # a made-up sensitivity: the embedding hurts most when quantized
    omega = {n: {b: (10.0 if n == "encoder.weight" else 1.0) / b for b in CANDS} for n in template.groups}
    plan = allocate(template, omega, budget)
    assert plan.meets_budget() and plan.size().avg_bits >= 0.99 * 2.0
    assert plan.bits["encoder.weight"] >= max(b for n, b in plan.bits.items() if n != "encoder.weight")
    a, b = random_plan(template, budget, seed=1), random_plan(template, budget, seed=1)
    assert a.bits == b.bits and a.meets_budget() and random_plan(template, budget, seed=2).bits != a.bits
    assert set(uniform_plan_for(template, 2, budget).bits.values()) == {2}
    with pytest.raises(ValueError, match="uniform 4-bit plan .* does not meet the budget avg_bits=2.0"):
        uniform_plan_for(template, 4, budget)
    with pytest.raises(ValueError, match="no sensitivity for groups"):
        allocate(template, {}, budget)
