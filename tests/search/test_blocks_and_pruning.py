"""Block groupings (attention heads, output-channel blocks), MACs for BitOps, and the 0-bit
candidate that never removes a whole layer."""
import pytest
import torch

from nas_mpq.plan import Budget
from nas_mpq.search import GroupRule, derive_plan, prepare_search_, search_groups
from search_spaces import get_search_space
from search_spaces.cnn import ResNetCNN, cnn_space
from search_spaces.transformer_lm import TransformerLM, transformer_lm_space


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    return TransformerLM(30, d_model=16, num_heads=4, num_layers=1, max_len=8, dropout=0.0)


def test_per_head_groups_slice_rows_of_qkv_and_columns_of_o():
    net = prepare_search_(tiny_transformer(), transformer_lm_space(grouping="head", blocks=4))
    groups = {g.name: g.plan for g in search_groups(net)}
    assert groups["blocks.0.attn.k.weight:h2"].rows == (8, 12) and groups["blocks.0.attn.k.weight:h2"].axis == 0
    o = groups["blocks.0.attn.o.weight:h3"]
    assert (o.rows, o.axis, o.numel) == ((12, 16), 1, 64)
    w = net.get_parameter("blocks.0.attn.o.weight")
    assert torch.equal(o.view(w), w[:, 12:16])
    assert {n.split(":")[0] for n in groups if ":" in n} == {f"blocks.0.attn.{p}.weight" for p in "qkvo"}
    assert "blocks.0.ffn1.weight" in groups and "blocks.0.ffn2.weight" in groups


def test_at_32_bits_every_grouping_is_the_float_model():
    for net, space in ((tiny_transformer(), transformer_lm_space(candidates=[32], grouping="head", blocks=4)),
                       (ResNetCNN(width=4), cnn_space(candidates=[32], grouping="block", blocks=2))):
        x = net.example_input(3)
        ref = net.eval()(*x)
        prepare_search_(net, space).eval()
        out = net(*x)
        assert torch.equal(out[0] if isinstance(out, tuple) else out, ref[0] if isinstance(ref, tuple) else ref)


def test_macs_per_sample():
    net = prepare_search_(ResNetCNN(width=4, image_size=8), cnn_space(grouping="block", blocks=2))
    groups = {g.name: g.plan for g in search_groups(net)}
    stem = groups["stem_conv.weight:b0"]  # 2 of 4 output channels, 1 x 3 x 3 each, on 8 x 8 outputs
    assert (stem.numel, stem.macs) == (18, 18 * 64)
    assert groups["stages.1.conv1.weight:b1"].macs == 4 * 4 * 9 * 4 * 4  # stride 2: 4 x 4 outputs
    assert groups["classifier.weight"].macs == 16 * 10
    lm = prepare_search_(tiny_transformer(), transformer_lm_space())
    lm_groups = {g.name: g.plan for g in search_groups(lm)}
    assert lm_groups["encoder.weight"].macs == 0 and lm_groups["blocks.0.ffn1.weight"].macs == 16 * 64


def test_bitops_budget_plan_meets_it():
    net = prepare_search_(ResNetCNN(width=4), cnn_space())
    full = Budget("bitops", 1e12)
    fp32_bitops = full.measure([g.plan for g in search_groups(net)], 0)  # argmax is the first candidate
    plan = derive_plan(net, cnn_space(), Budget("bitops", fp32_bitops * 3))
    # recounted by hand: MACs x weight bits x 32-bit inputs per group
    assert sum(g.macs * g.bits * 32 for g in plan.groups.values()) <= fp32_bitops * 3
    with pytest.raises(ValueError, match="infeasible budget bitops"):
        derive_plan(net, cnn_space(), Budget("bitops", 10.0))


def test_pruning_never_removes_every_head_of_a_projection():
    space = transformer_lm_space(grouping="head", blocks=4, prune=True)
    net = prepare_search_(tiny_transformer(), space)
    with torch.no_grad():
        for g in search_groups(net):  # every head votes to be pruned
            if 0 in g.choice.candidates:
                g.choice.theta.copy_(torch.tensor([5.0, 0, 0, 0, 0, 1.0]))
    plan = derive_plan(net, space)
    for proj in "qkvo":
        heads = [plan.bits[f"blocks.0.attn.{proj}.weight:h{i}"] for i in range(4)]
        assert heads.count(0) == 3 and 32 in heads  # the most likely non-zero choice comes back
    low = derive_plan(net, space, Budget("avg_bits", 1.0))
    for proj in "qkvo":
        assert any(low.bits[f"blocks.0.attn.{proj}.weight:h{i}"] for i in range(4))
    assert low.meets_budget()


def test_bad_groupings_are_clear_errors():
    with pytest.raises(ValueError, match="needs blocks"):
        GroupRule("x", grouping="head")
    with pytest.raises(ValueError, match="axis must be 0"):
        GroupRule("x", grouping="block", blocks=2, axis=1)
    with pytest.raises(ValueError, match="cannot split 'weight' .* into 3 equal blocks"):
        prepare_search_(tiny_transformer(), transformer_lm_space(grouping="head", blocks=3))
    with pytest.raises(ValueError, match="does not apply to the embedding"):
        from nas_mpq.search import SearchSpace
        prepare_search_(tiny_transformer(), SearchSpace("x", [2], [GroupRule("encoder", grouping="block", blocks=2)]))
    with pytest.raises(ValueError, match="prune needs grouping 'head'"):
        transformer_lm_space(prune=True)
    with pytest.raises(ValueError, match=r"search space 'lstm_lm' has no option\(s\) \['blocks'\]"):
        get_search_space("lstm_lm").space(blocks=4)
    with pytest.raises(ValueError, match="exceeds max_len 8"):
        tiny_transformer()(torch.zeros(1, 9, dtype=torch.long))
