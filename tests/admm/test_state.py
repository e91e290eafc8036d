import pytest
import torch

from conftest import tiny_lm
from nas_mpq.admm import ADMMState, group_weight, on_table, project
from nas_mpq.search import uniform_plan
from search_spaces.lstm_lm import lstm_lm_space


def make(bits=2, **kw):
    net = tiny_lm()
    plan = uniform_plan(net, lstm_lm_space(), bits)
    plan = plan.with_bits({n: (32 if n == "decoder.weight" else bits) for n in plan.groups})
    return net, plan, ADMMState(net, plan, **kw)


def test_init_state():
    net, plan, admm = make()
    assert set(admm.groups) == set(plan.groups) - {"decoder.weight"}  # 32 bits: unconstrained
    for name, g in admm.groups.items():  # G starts at each group's weights projected on its table
        assert torch.equal(admm.U(name), torch.zeros_like(admm.U(name)))
        codes, scale = project(g.view(net.get_parameter(g.param)).detach(), 2)
        assert torch.equal(admm.codes(name)[0], codes) and torch.equal(admm.codes(name)[1], scale)
        assert on_table(admm.G(name), 2, scale)
    assert float(admm.rho) == pytest.approx(1e-3)
    assert admm.residual() > 0


def test_penalty_gradient_is_rho_times_w_minus_g_plus_u():
    net, plan, admm = make(rho=0.5)
    admm.penalty().backward()
    name = "rnn.weight_hh_l1:g"
    g = plan.groups[name]
    grad = net.get_parameter(g.param).grad[g.rows[0]:g.rows[1]]
    expected = 0.5 * (group_weight(net, g) - admm.G(name) + admm.U(name))
    assert torch.allclose(grad, expected)


def test_proximal_step_is_the_exact_minimiser_and_stable_for_any_rho():
    """W := argmin ||V - W||^2 / (2 eta) + rho/2 ||V - G + U||^2; a gradient step on the penalty
    alone overshoots once eta x rho > 2, the proximal step never does."""
    for rho in (0.5, 100.0):
        net, plan, admm = make(rho=rho)
        with torch.no_grad():
            for n in admm.groups:
                admm.U(n).normal_(0, 0.01)
        before = {n: group_weight(net, g).detach().clone() for n, g in admm.groups.items()}
        eta = 0.1
        admm.proximal_(eta)
        for n, g in admm.groups.items():
            target = admm.G(n) - admm.U(n)
            expected = (before[n] + eta * rho * target) / (1 + eta * rho)
            after = group_weight(net, g).detach()
            assert torch.allclose(after, expected, atol=1e-6)
            # closer to G - U than before, by the factor 1 / (1 + eta rho)
            gap_before = (before[n] - target).norm()
            assert float((after - target).norm()) == pytest.approx(float(gap_before) / (1 + eta * rho), rel=1e-4)


def test_iteration_updates_u_and_rho_and_converges_when_w_follows_g():
    net, plan, admm = make(rho=1e-2, rho_growth=1.5)
    for _ in range(4):
        r = admm.iterate()
        with torch.no_grad():  # an idealised W-step: move W onto G - U
            for name, g in admm.groups.items():
                group_weight(net, g).copy_(admm.G(name) - admm.U(name))
    assert float(admm.rho) == pytest.approx(1e-2 * 1.5 ** 4)
    assert r["residual"] >= 0
    assert admm.residual() < 0.2
    admm.finish_()
    assert admm.residual() == 0.0
    for name, g in admm.groups.items():
        assert on_table(group_weight(net, g), 2, admm.codes(name)[1])


def test_u_step_is_running_sum_of_residuals():
    net, plan, admm = make(rho=1.0, rho_growth=1.0)
    name = "encoder.weight"
    w = group_weight(net, plan.groups[name]).detach().clone()
    admm.iterate()
    assert torch.allclose(admm.U(name), w - admm.G(name), atol=1e-7)


def test_residual_balancing_rescales_u():
    net, plan, admm = make(rho=1e-3, schedule="balance")
    admm.iterate()
    name = "encoder.weight"
    u, rho = admm.U(name).clone(), float(admm.rho)
    with torch.no_grad():  # a large primal residual: rho goes up 10x, the scaled dual U down 10x
        net.encoder.weight.mul_(3.0)
    w = net.encoder.weight.detach().clone()
    admm.iterate()
    assert float(admm.rho) == pytest.approx(rho * 10)
    assert torch.allclose(admm.U(name), 0.1 * (u + w - admm.G(name)), atol=1e-7)


def test_state_dict_round_trip_resumes_exactly():
    net, plan, admm = make()
    admm.iterate()
    other = make()[2]
    other.load_state_dict(admm.state_dict())
    for name in admm.groups:
        assert torch.equal(other.G(name), admm.G(name)) and torch.equal(other.U(name), admm.U(name))
    assert float(other.rho) == float(admm.rho) and int(other.iteration) == 1


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown rho schedule 'cosine'"):
        make(schedule="cosine")
    with pytest.raises(ValueError, match="rho > 0"):
        make(rho=0.0)
