import pytest
import torch
from torch import nn

from conftest import tiny_lm
from nas_mpq.plan import Budget
from nas_mpq.search import (SearchLSTM, apply_plan_, check_plan_matches, derive_plan, fixed_numel,
                            prepare_search_, search_groups, to_float_, uniform_plan)
from search_spaces.lstm_lm import lstm_lm_space


def tokens(vocab=50, b=3, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


def test_groups_of_the_default_space():
    net = prepare_search_(tiny_lm(layers=2), lstm_lm_space())
    names = [g.name for g in search_groups(net)]
    gates = [f"rnn.weight_{kind}_l{layer}:{gate}" for layer in (0, 1) for kind in ("ih", "hh")
             for gate in "ifgo"]
    assert names == ["encoder.weight", *gates, "decoder.weight"]
    assert isinstance(net.rnn, SearchLSTM)
    g = search_groups(net)[1].plan
    assert (g.param, g.rows, g.numel) == ("rnn.weight_ih_l0", (0, 8), 64)
    tensor = prepare_search_(tiny_lm(), lstm_lm_space(grouping="tensor"))
    assert len(search_groups(tensor)) == 2 + 4


def test_supernet_forward_matches_float_at_32_bits():
    net = tiny_lm()
    x = tokens()
    ref, _ = net(x)
    prepare_search_(net, lstm_lm_space(candidates=[32]))
    out, _ = net(x)
    assert torch.equal(out, ref)
    to_float_(net)
    assert type(net.rnn) is nn.LSTM and torch.equal(net(x)[0], ref)


@pytest.mark.parametrize("method", ["uniform", "lsq"])
@pytest.mark.parametrize("tie", [False, True])
def test_every_parameter_gets_a_gradient(method, tie):
    net = prepare_search_(tiny_lm(tie=tie), lstm_lm_space(method=method))
    net.train()
    logits, _ = net(tokens())
    logits.logsumexp(-1).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    thetas = [n for n, _ in net.named_parameters() if n.endswith("theta")]
    assert len(thetas) == (17 if tie else 18)  # embedding, 16 gate groups, softmax (shared when tied)


def test_tied_weights_share_one_group():
    net = prepare_search_(tiny_lm(tie=True), lstm_lm_space())
    names = [g.name for g in search_groups(net)]
    assert "decoder.weight" not in names and "encoder.weight" in names
    assert net.decoder.choices["weight"] is net.encoder.choices["weight"]


def test_supernet_in_eval_equals_apply_plan_model_exactly():
    torch.manual_seed(0)
    space = lstm_lm_space()
    supernet = prepare_search_(tiny_lm(), space)
    for g in search_groups(supernet):
        with torch.no_grad():
            g.choice.theta.copy_(torch.randn(5))
    plan = derive_plan(supernet, space)
    qat = apply_plan_(tiny_lm(), plan, space)
    supernet.eval(), qat.eval()
    x = tokens()
    assert torch.equal(supernet(x)[0], qat(x)[0])
    assert {g.name: g.choice.candidates for g in search_groups(qat)} == {n: [b] for n, b in plan.bits.items()}


def test_fixed_numel_counts_biases_only():
    net = prepare_search_(tiny_lm(layers=1), lstm_lm_space(method="lsq"))
    assert fixed_numel(net) == 2 * 32 + 50  # LSTM biases + decoder bias; scales and theta excluded


def test_plan_mismatch_error_names_groups():
    space = lstm_lm_space()
    plan = uniform_plan(tiny_lm(dim=8), space, 4)
    with pytest.raises(ValueError) as e:
        apply_plan_(tiny_lm(dim=16), plan, space)
    assert "groups whose parameter, rows or size differ" in str(e.value)
    assert "rnn.weight_hh_l1:o" in str(e.value) and "encoder.weight" in str(e.value)
    short = plan.with_bits(plan.bits)
    del short.groups["decoder.weight"]
    with pytest.raises(ValueError, match=r"groups missing from the plan: \['decoder.weight'\]"):
        check_plan_matches(tiny_lm(dim=8), short, space)
    with pytest.raises(ValueError, match=r"plan groups not in the model: \[.*rnn.weight_ih_l1:f"):
        apply_plan_(tiny_lm(dim=8, layers=1), plan, space)


def test_a_plan_without_the_groups_of_a_searched_weight_is_refused_without_a_space():
    plan = uniform_plan(tiny_lm(dim=8), lstm_lm_space(), 4)
    assert "decoder.weight" in plan.extra["coverage"]["searched"]
    check_plan_matches(tiny_lm(dim=8), plan)
    short = plan.with_bits(plan.bits)
    del short.groups["decoder.weight"]
    with pytest.raises(ValueError, match=r"searched parameters the plan's groups do not cover: \['decoder.weight'\]"):
        apply_plan_(tiny_lm(dim=8), short)
    gates = plan.with_bits(plan.bits)
    del gates.groups["rnn.weight_hh_l0:o"]
    with pytest.raises(ValueError, match=r"do not cover: \['rnn.weight_hh_l0'\]"):
        check_plan_matches(tiny_lm(dim=8), gates)
    # tied weights: the one group of the shared tensor covers both names
    tied = uniform_plan(tiny_lm(dim=8, tie=True), lstm_lm_space(), 4)
    check_plan_matches(tiny_lm(dim=8, tie=True), tied)


def test_derive_plan_with_budget_keeps_what_fits_of_the_search():
    torch.manual_seed(0)
    space = lstm_lm_space()
    net = prepare_search_(tiny_lm(), space)  # uniform theta: argmax is 1 bit everywhere
    for g in search_groups(net):
        with torch.no_grad():
            g.choice.theta.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))  # argmax 32 bits
    plan = derive_plan(net, space, Budget("avg_bits", 3.0))
    numel = {n: g.numel for n, g in plan.groups.items()}
    used, capacity = sum(numel[n] * b for n, b in plan.bits.items()), 3.0 * sum(numel.values())
    assert used <= capacity
    # least cost: no group the repair lowered could go back to the search's 32 bits and still fit
    assert all(used + numel[n] * (32 - b) > capacity for n, b in plan.bits.items() if b != 32)
    assert set(plan.bits.values()) <= {1, 2, 4, 8, 32}
    report = plan.extra["repair"]
    assert report["argmax_avg_bits"] == 32.0
    assert report["groups_changed"] == sum(b != 32 for b in plan.bits.values()) >= len(plan.groups) - 2
    filled = derive_plan(net, space, Budget("avg_bits", 3.0), min_fill=0.99)
    assert 0.99 * 3.0 <= filled.size().avg_bits <= 3.0  # asked to, it uses the budget it has


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cnn_already_on_the_gpu_is_prepared_there():
    """The forward that tells convolutions their output size runs the example input on the
    model's device: a model moved to the GPU before the search is prepared as one on the CPU."""
    from search_spaces.cnn import ResNetCNN, cnn_space

    torch.manual_seed(0)
    on_cpu = prepare_search_(ResNetCNN(10, width=8), cnn_space())
    torch.manual_seed(0)
    on_gpu = prepare_search_(ResNetCNN(10, width=8).cuda(), cnn_space())
    cpu_groups, gpu_groups = search_groups(on_cpu), search_groups(on_gpu)
    assert [g.plan.macs for g in gpu_groups] == [g.plan.macs for g in cpu_groups]
    assert all(g.plan.macs > 0 for g in gpu_groups)
