"""Activation bit-width search: input choices on Linear/Conv2d layers, their plan entries, the
joint weight x activation knapsack under BitOps, and the expected BitOps of the regulariser."""
import itertools
import json

import pytest
import torch

from conftest import tiny_lm
from nas_mpq.plan import ActivationPlan, Budget, GroupPlan, PrecisionPlan
from nas_mpq.search import (BudgetRegularizer, activation_groups, apply_plan_, calibrate_activations_,
                            derive_plan, fixed_numel, prepare_search_, search_groups, solve_knapsack)
from search_spaces.cnn import ResNetCNN, cnn_space
from search_spaces.lstm_lm import lstm_lm_space


def test_input_choices_on_every_linear_and_conv():
    lm = prepare_search_(tiny_lm(), lstm_lm_space(activation_candidates=[4, 8, 32]))
    assert [g.name for g in activation_groups(lm)] == ["decoder"]  # the LSTM and the embedding take none
    cnn = ResNetCNN(width=4)
    before = fixed_numel(prepare_search_(ResNetCNN(width=4), cnn_space()))
    prepare_search_(cnn, cnn_space(activation_candidates=[2, 8]))
    names = [g.name for g in activation_groups(cnn)]
    assert "stem_conv" in names and "classifier" in names and "stages.1.shortcut.0" in names
    assert all(g.choice.candidates == [2, 8] for g in activation_groups(cnn))
    assert fixed_numel(cnn) == before  # clipping values and theta are not model weights
    with pytest.raises(ValueError, match="activation bit-width 1 is not supported"):
        cnn_space(activation_candidates=[1, 8])


def test_plan_holds_activation_bits_and_apply_plan_installs_them(tmp_path):
    space = cnn_space(activation_candidates=[2, 4, 8])
    net = prepare_search_(ResNetCNN(width=4), space)
    with torch.no_grad():
        for g in activation_groups(net):
            g.choice.theta.copy_(torch.tensor([0.0, 3.0, 0.0]))
    plan = derive_plan(net, space)
    assert set(plan.activation_bits.values()) == {4} and len(plan.activations) == len(activation_groups(net))
    data = json.loads(plan.save(tmp_path / "p.json").read_text())
    assert data["activations"]["classifier"]["bits"] == 4
    back = PrecisionPlan.load(tmp_path / "p.json")
    assert back.activation_bits == plan.activation_bits
    qat = apply_plan_(ResNetCNN(width=4), back, cnn_space())  # the plan decides, not the space
    assert {g.name: g.choice.candidates for g in activation_groups(qat)} == {n: [4] for n in plan.activations}
    assert all(g.choice.theta is None for g in activation_groups(qat))
    bad = plan.with_bits(plan.bits)
    bad.activations["stem_bn"] = ActivationPlan(8)
    with pytest.raises(ValueError, match=r"activation layers that are not Linear/Conv2d layers of the model: \['stem_bn'\]"):
        apply_plan_(ResNetCNN(width=4), bad, cnn_space())


def test_joint_knapsack_is_the_brute_force_optimum():
    groups = {"a": GroupPlan("l1.weight", None, 10, 32, macs=100, layer="l1"),
              "b": GroupPlan("l2.weight", None, 20, 32, macs=50, layer="l2"),
              "c": GroupPlan("emb.weight", None, 30, 32, macs=0, layer=None)}
    cands = {"a": [2, 4, 8], "b": [1, 4], "c": [2, 8]}
    acts = {"l1": [4, 8, 32], "l2": [2, 8]}
    g = torch.Generator().manual_seed(0)
    costs = {n: torch.rand(len(c), generator=g).tolist() for n, c in cands.items()}
    act_costs = {n: torch.rand(len(c), generator=g).tolist() for n, c in acts.items()}
    for value in (4000.0, 9000.0, 30000.0):
        plan = PrecisionPlan("x", [1, 2, 4, 8, 32], groups, 0, Budget("bitops", value),
                             activations={n: ActivationPlan(32) for n in acts})
        bits, act_bits = solve_knapsack(plan, cands, costs, None, acts, act_costs)
        best = None
        for combo in itertools.product(*cands.values(), *acts.values()):
            w, a = dict(zip(cands, combo[:3])), dict(zip(acts, combo[3:]))
            ops = 100 * w["a"] * a["l1"] + 50 * w["b"] * a["l2"]
            cost = sum(costs[n][cands[n].index(b)] for n, b in w.items())
            cost += sum(act_costs[n][acts[n].index(b)] for n, b in a.items())
            if ops <= value and (best is None or cost < best[0] - 1e-12):
                best = (cost, w, a)
        assert (bits, act_bits) == (best[1], best[2]), value
        assert plan.with_bits(bits, act_bits).meets_budget()
    with pytest.raises(ValueError, match="needs bitops=900;"):  # 100 x 2 x 4 + 50 x 1 x 2
        Budget("bitops", 10.0).check_feasible(groups, 0, cands, acts)


def test_size_budgets_keep_the_most_likely_activation_bits():
    space = cnn_space(activation_candidates=[2, 4, 8])
    net = prepare_search_(ResNetCNN(width=4), space)
    with torch.no_grad():
        for g in activation_groups(net):
            g.choice.theta.copy_(torch.tensor([0.0, 0.0, 2.0]))
    plan = derive_plan(net, space, Budget("avg_bits", 2.0))
    assert set(plan.activation_bits.values()) == {8} and plan.meets_budget()
    lowest = plan.with_bits({n: 1 for n in plan.groups})  # every weight at 1 bit, inputs at 8
    ops = Budget("bitops", 1.0).measure(lowest.groups.values(), 0, lowest.activation_bits)
    bitops = derive_plan(net, space, Budget("bitops", ops / 2))  # only lower input bits get there
    assert bitops.meets_budget() and min(bitops.activation_bits.values()) < 8


def test_regulariser_expected_bitops_is_the_exact_expectation():
    space = cnn_space(candidates=[2, 4], activation_candidates=[4, 8])
    net = prepare_search_(ResNetCNN(width=2, stages=1), space)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for c in [x.choice for x in search_groups(net)] + [x.choice for x in activation_groups(net)]:
            c.theta.copy_(torch.randn(2, generator=g))
    reg = BudgetRegularizer(net, Budget("bitops", 1e9))
    acts = {a.name: a.choice for a in activation_groups(net)}
    expected = 0.0
    for grp in search_groups(net):
        e_w = float((grp.choice.probs() * torch.tensor([2.0, 4.0])).sum())
        act = acts.get(grp.plan.layer)
        e_a = 32.0 if act is None else float((act.probs() * torch.tensor([4.0, 8.0])).sum())
        expected += grp.plan.macs * e_w * e_a
    assert float(reg.expected()) == pytest.approx(expected, rel=1e-5)
    BudgetRegularizer(net, Budget("bitops", 1.0)).penalty().backward()  # differentiable in both kinds of theta
    assert all(a.choice.theta.grad is not None and a.choice.theta.grad.abs().sum() > 0 for a in activation_groups(net))
    assert all(w.choice.theta.grad is not None and w.choice.theta.grad.abs().sum() > 0 for w in search_groups(net))


def test_calibration_sets_every_candidate_from_its_layer_input():
    net = prepare_search_(ResNetCNN(width=4), cnn_space(activation_candidates=[2, 4, 32]))
    x = net.example_input(4)
    seen = {}
    hook = net.classifier.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()),
                                                    prepend=True)
    assert calibrate_activations_(net, x) and not calibrate_activations_(net, x)
    hook.remove()
    alphas = [float(q.alpha) for q in net.classifier.input_choice.quantizers if q.bits < 16]
    assert alphas[0] == alphas[1] == pytest.approx(float(torch.quantile(seen["x"].abs().flatten(), 0.999)))
