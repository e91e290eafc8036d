"""Models nobody registered: layers matched by isinstance through the layer registry,
nn.MultiheadAttention as Q, K, V and O groups, name rules over parameter names, the coverage
report and full coverage, self-contained plans."""
import logging

import pytest
import torch
from torch import nn

from nas_mpq.lit import SpaceConfig, SupernetModule
from nas_mpq.plan import PrecisionPlan
from nas_mpq.search import (GroupRule, SearchLinear, SearchMultiheadAttention, SearchSpace, SubstitutedForward,
                            apply_plan_, derive_plan, find_layer, prepare_search_, register_layer, registered_layers,
                            search_groups, to_float_)


class ScaledInit(nn.Linear):
    """A Linear subclass with Linear's forward (torch's own out_proj is one too)."""

    def __init__(self, n: int) -> None:
        super().__init__(n, n)
        nn.init.normal_(self.weight, std=0.1)


class Mixed(nn.Module):
    """Embedding -> Linear subclass -> self-attention -> GRU -> Linear."""

    def __init__(self, vocab: int = 30, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.proj = ScaledInit(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.embed(tokens))
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(self.gru(x)[0])


def tokens(b=3, t=7, vocab=30, seed=0):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


GROUPS = ["embed.weight", "proj.weight", "attn.in_proj_weight:q", "attn.in_proj_weight:k",
          "attn.in_proj_weight:v", "attn.out_proj.weight", "head.weight"]


def test_subclasses_and_attention_are_searched_the_gru_is_named_unsearched(caplog):
    net = Mixed()
    with caplog.at_level(logging.WARNING, logger="nas_mpq.search.surgery"):
        prepare_search_(net, SearchSpace("mixed"))
    assert [g.name for g in search_groups(net)] == GROUPS
    assert isinstance(net.proj, SearchLinear) and isinstance(net.attn, SearchMultiheadAttention)
    assert [g.plan.rows for g in search_groups(net)][2:5] == [(0, 16), (16, 32), (32, 48)]
    assert "gru.weight_ih_l0" in caplog.text and "no searchable layer is registered for GRU" in caplog.text

    coverage = derive_plan(net, SearchSpace("mixed")).extra["coverage"]
    gru = {n: u for n, u in coverage["unsearched"].items() if n.startswith("gru.")}
    assert {n for n, u in gru.items() if u["kind"] == "unsupported"} == {"gru.weight_ih_l0", "gru.weight_hh_l0"}
    assert all(u["kind"] == "float" for n, u in gru.items() if "bias" in n)
    searched = 30 * 16 + 16 * 16 + 3 * 16 * 16 + 16 * 16 + 30 * 16
    total = sum(p.numel() for p in Mixed().parameters())
    assert sum(coverage["searched"].values()) == searched
    assert coverage["searched_share"] == pytest.approx(searched / total)

    to_float_(net)
    assert type(net.proj) is ScaledInit and type(net.attn) is nn.MultiheadAttention
    assert type(net.attn.out_proj).__name__ == "NonDynamicallyQuantizableLinear"
    assert net.state_dict().keys() == Mixed().state_dict().keys()


def test_full_coverage_fails_before_training_naming_the_gru():
    net = Mixed()
    with pytest.raises(ValueError, match=r"demands full coverage.*gru\.weight_ih_l0 .*GRU.*gru\.weight_hh_l0"):
        prepare_search_(net, SearchSpace("mixed", full_coverage=True))
    assert not any(isinstance(m, SearchLinear) for m in net.modules())  # left as it was
    with pytest.raises(ValueError, match=r"gru\.weight_ih_l0"):
        SupernetModule(Mixed(), space=SpaceConfig(name="mixed", rules=[], full_coverage=True))
    # excluding it by a rule is a decision, not a gap
    space = SearchSpace("mixed", rules=[GroupRule("gru", exclude=True)], full_coverage=True)
    plan = derive_plan(prepare_search_(Mixed(), space), space)
    assert plan.extra["coverage"]["unsearched"]["gru.weight_hh_l0"]["reason"] == "excluded by rule 'gru'"


def test_supernet_at_32_bits_equals_the_float_model_and_everything_gets_a_gradient():
    float_net, net = Mixed(), Mixed()
    x = tokens()
    prepare_search_(net, SearchSpace("mixed", candidates=[32]))
    with torch.no_grad():
        assert torch.equal(net.eval()(x), float_net.eval()(x))
    prepare_search_(net, SearchSpace("mixed")).train()
    net(x).logsumexp(-1).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(type(p) is nn.Parameter for p in net.parameters())  # the substituted weights are back


@pytest.mark.parametrize("rules", [[], [GroupRule("attn", grouping="head", blocks=2)]])
def test_one_hot_choice_equals_the_plan_applied_without_a_space(rules, tmp_path):
    space = SearchSpace("mixed", rules=rules, method="lsq", per_channel=True)
    net, fixed = Mixed(), Mixed()
    prepare_search_(net, space)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for grp in search_groups(net):
            k = int(torch.randint(len(grp.choice.candidates), (1,), generator=g))
            grp.choice.theta.copy_(nn.functional.one_hot(torch.tensor(k), len(grp.choice.candidates)).float())
    plan = PrecisionPlan.load(derive_plan(net, space).save(tmp_path / "plan.json"))
    assert all((g.method, g.per_channel) == ("lsq", True) for g in plan.groups.values())
    apply_plan_(fixed, plan)  # the plan is all it takes
    x = tokens()
    assert torch.equal(net.eval()(x), fixed.eval()(x))


def test_attention_heads_and_separate_projections():
    net = prepare_search_(Mixed(), SearchSpace("mixed", rules=[GroupRule("attn", grouping="head", blocks=2)]))
    heads = {g.name: g.plan for g in search_groups(net) if g.name.startswith("attn.")}
    assert heads["attn.in_proj_weight:k.h1"].rows == (24, 32)
    assert (heads["attn.out_proj.weight:h1"].rows, heads["attn.out_proj.weight:h1"].axis) == ((8, 16), 1)
    assert len(heads) == 8
    cross = nn.Module()
    cross.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=12)
    names = [g.name for g in search_groups(prepare_search_(cross, SearchSpace("cross")))]
    assert names == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"]


def test_rules_over_parameter_names():
    space = SearchSpace("mixed", candidates=[1, 2, 32], rules=[
        GroupRule("attn.out_proj.weight", candidates=[4, 8]), GroupRule("*.in_proj_weight", exclude=True),
        GroupRule("head", candidates=[8])])
    net = prepare_search_(Mixed(), space)
    cands = {g.name: g.choice.candidates for g in search_groups(net)}
    assert cands == {"embed.weight": [1, 2, 32], "proj.weight": [1, 2, 32], "attn.out_proj.weight": [4, 8],
                     "head.weight": [8]}
    report = derive_plan(net, space).extra["coverage"]
    assert report["unsearched"]["attn.in_proj_weight"]["reason"] == "excluded by rule '*.in_proj_weight'"
    # the output projection is still quantized although its input projection is not
    x = tokens()
    net.eval()
    out_proj = net.attn.choice("out_proj.weight")
    with torch.no_grad():
        out_proj.theta.copy_(torch.tensor([1.0, 0.0]))  # 4 bits
        four = net(x)
        out_proj.theta.copy_(torch.tensor([0.0, 1.0]))  # 8 bits
        assert not torch.equal(four, net(x))
    with pytest.raises(ValueError, match="grouping 'gate' .* does not apply to the linear 'head'"):
        prepare_search_(Mixed(), SearchSpace("mixed", rules=[GroupRule("head", grouping="gate")]))


class OwnForward(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


class Transposed(nn.Module):
    """y = x W with W stored (in, out), a layer nas-mpq does not know."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


@register_layer(Transposed)
class SearchTransposed(SubstitutedForward, Transposed):
    pass


def test_a_forward_override_is_named_and_a_registered_layer_is_searched():
    assert "overrides the forward of Linear" in find_layer(OwnForward(4, 4)).reason
    net = nn.Sequential(OwnForward(4, 4), Transposed(4, 6))
    space = SearchSpace("own")
    ref = net(torch.ones(2, 4))
    prepare_search_(net, space)
    assert [g.name for g in search_groups(net)] == ["1.weight"] and isinstance(net[1], SearchTransposed)
    report = derive_plan(net, space).extra["coverage"]
    assert "OwnForward overrides the forward of Linear" in report["unsearched"]["0.weight"]["reason"]
    to_float_(net)
    assert type(net[1]) is Transposed and torch.equal(net(torch.ones(2, 4)), ref)
    with pytest.raises(ValueError, match="already registered"):
        register_layer(Transposed)(SearchTransposed)


@pytest.mark.parametrize("old, new", [("granularities", "groupings"), ("default_granularity", "default_grouping")])
def test_a_searchable_layer_setting_an_old_attribute_name_is_refused(old, new):
    searchable = type("SearchOldStyle", (SubstitutedForward, Transposed), {old: ("head",)})
    with pytest.raises(ValueError, match=f"^SearchOldStyle sets '{old}'; it was renamed to '{new}'$"):
        register_layer("tests.OldStyle")(searchable)
    assert "tests.OldStyle" not in registered_layers()


def test_a_plan_for_another_model_names_the_groups():
    plan = derive_plan(prepare_search_(Mixed(), SearchSpace("mixed")), SearchSpace("mixed"))
    with pytest.raises(ValueError, match=r"groups whose parameter, rows or size differ: \['embed.weight'"):
        apply_plan_(Mixed(vocab=40), plan)
    smaller = Mixed()
    del smaller.attn
    with pytest.raises(ValueError, match=r"plan groups not in the model: \['attn.in_proj_weight:k'"):
        apply_plan_(smaller, plan)


def test_a_transformer_encoder_is_searched_whole_and_its_fused_path_uses_the_composites():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    net = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        float_out = net.eval()(x)
    space = SearchSpace("encoder", candidates=[2], full_coverage=True)
    prepare_search_(net, space)
    report = derive_plan(net, space).extra["coverage"]
    assert {u["kind"] for u in report["unsearched"].values()} == {"float"}  # biases and norms only
    with torch.no_grad():  # eval without gradients: torch's fused encoder path, unless it would skip the composites
        fused = net(x)
    assert torch.allclose(fused, net(x), atol=1e-5) and not torch.allclose(fused, float_out, atol=1e-3)
    to_float_(net)
    with torch.no_grad():
        assert torch.allclose(net(x), float_out, atol=1e-6)


def test_a_self_contained_plan_must_tile_the_weights_it_slices():
    """Gates of an 8-unit LSTM fit inside the weights of a 16-unit one, row for row: the plan is
    still refused, since its groups would leave half of each weight unquantized."""
    from search_spaces.lstm_lm import LSTMLM, lstm_lm_space
    plan = derive_plan(prepare_search_(LSTMLM(50, 8, 8, 1), lstm_lm_space()), lstm_lm_space())
    with pytest.raises(ValueError, match=r"groups whose parameter, rows or size differ: .*'rnn.weight_ih_l0:i'"):
        apply_plan_(LSTMLM(50, 8, 16, 1), plan)


def test_a_model_nobody_registered_round_trips_through_a_packed_file(tmp_path):
    from nas_mpq.export import load_quantized, save_quantized
    from nas_mpq.search import calibrate_activations_
    space = SearchSpace("mixed", candidates=[2, 4, 32], activation_candidates=[8, 32], per_channel=True)
    net = prepare_search_(Mixed(), space)
    plan = derive_plan(net, space).with_bits({g.name: 2 for g in search_groups(net)}, {"proj": 8, "head": 8})
    assert set(plan.activations) == {"proj", "head"}  # out_proj's forward never runs: no input choice there
    qat = apply_plan_(to_float_(net), plan)
    calibrate_activations_(qat, (tokens(),))
    path = save_quantized(tmp_path / "mixed.safetensors", qat, plan)
    x = tokens(seed=3)
    with torch.no_grad():
        expected = qat.eval()(x)
        assert torch.allclose(load_quantized(path, Mixed(seed=1))(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"network's class path 'test_any_model.Mixed' is not allowed"):
        load_quantized(path)
    with pytest.raises(ValueError, match="does not record the network's constructor arguments"):
        load_quantized(path, allowed=("test_any_model",))
    path = save_quantized(tmp_path / "args.safetensors", qat, plan, model_args={"vocab": 30, "dim": 16})
    with torch.no_grad():
        assert torch.allclose(load_quantized(path, allowed=("test_any_model",))(x), expected, atol=1e-5)
