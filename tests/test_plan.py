import json
from pathlib import Path

import pytest
import torch

from nas_mpq.plan import Budget, GroupPlan, PrecisionPlan, groups_by_param, plan_size
from nas_mpq.quant import QuantizerSettings
from nas_mpq.search import apply_plan_, search_groups
from search_spaces.lstm_lm import LSTMLM, lstm_lm_space

V1_PLAN = Path(__file__).parent / "data" / "plan_v1_lstm_quick.json"


def hand_plan(bits_emb=2, bits_gate=2, budget=None):
    """A 1-layer LSTM LM, vocab 10, dim 4: embedding 40, 8 gate groups of 16, softmax 40;
    biases 2 x 16 + 10 = 42 unsearched."""
    groups = {"encoder.weight": GroupPlan("encoder.weight", None, 40, bits_emb)}
    for kind in ("ih", "hh"):
        for j, gate in enumerate("ifgo"):
            groups[f"rnn.weight_{kind}_l0:{gate}"] = GroupPlan(f"rnn.weight_{kind}_l0", (4 * j, 4 * j + 4), 16,
                                                               bits_gate)
    groups["decoder.weight"] = GroupPlan("decoder.weight", None, 40, 32)
    return PrecisionPlan("lstm_lm", [1, 2, 4, 8, 32], groups, 42, budget)


def test_size_matches_hand_computation():
    r = hand_plan().size()
    # codes: 40*2 + 128*2 + 40*32 = 1616; scales: 9 quantized groups x 32 = 288; biases 42 x 32 = 1344
    assert r.size_bits == 1616 + 288 + 1344 == 3248
    assert r.fp32_size_bits == (40 + 128 + 40 + 42) * 32 == 8000
    assert r.compression == pytest.approx(8000 / 3248)
    assert r.avg_bits == pytest.approx(1616 / 208)
    full = hand_plan(32, 32).size()
    assert full.size_bits == full.fp32_size_bits and full.compression == 1.0


def test_groups_by_param_keys_the_group_names_by_the_parameter_they_slice():
    assert groups_by_param(hand_plan().groups) == {
        "encoder.weight": ["encoder.weight"], "decoder.weight": ["decoder.weight"],
        **{f"rnn.weight_{kind}_l0": [f"rnn.weight_{kind}_l0:{gate}" for gate in "ifgo"] for kind in ("ih", "hh")}}


def test_per_channel_scales_and_pruned_groups():
    g = GroupPlan("w", None, 64, 4, scales=8)
    assert g.cost_bits() == 64 * 4 + 8 * 32
    assert g.cost_bits(0) == 0 and g.cost_bits(32) == 64 * 32
    assert plan_size([g], 0).size_bits == 512


def test_budget_kinds():
    plan = hand_plan()
    gs = list(plan.groups.values())
    assert Budget("avg_bits", 2.0).capacity(gs, 42) == 416
    assert Budget("compression", 4.0).capacity(gs, 42) == 2000
    assert Budget("size_mb", 0.001).capacity(gs, 42) == 8000
    assert Budget("avg_bits", 7.77).measure(gs, 42) == 1616
    assert Budget("size_mb", 1).measure(gs, 42) == 3248
    with pytest.raises(ValueError, match="unknown budget kind 'flops'"):
        Budget("flops", 1.0)
    with pytest.raises(ValueError, match="positive"):
        Budget("avg_bits", -1)


def test_round_trip_and_recount(tmp_path):
    plan = hand_plan(budget=Budget("avg_bits", 8.0))
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "nas-mpq.plan/4" and data["space_name"] == "lstm_lm" and "search_space" not in data
    assert data["size_bits"] == 3248 and data["avg_bits"] == pytest.approx(1616 / 208)
    back = PrecisionPlan.load(path)
    assert back.bits == plan.bits and back.budget == plan.budget and back.meets_budget()
    assert back.groups["rnn.weight_hh_l0:g"].rows == (8, 12)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        plan.save(path)
    data["size_bits"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match the groups"):
        PrecisionPlan.load(path)


def test_corrupt_plan_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PrecisionPlan.load(bad)
    bad.write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="unsupported plan format 'other/9'"):
        PrecisionPlan.load(bad)
    d = hand_plan().to_dict()
    d["groups"]["encoder.weight"]["bits"] = 5
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="unknown bit-width 5"):
        PrecisionPlan.load(bad)
    with pytest.raises(FileNotFoundError):
        PrecisionPlan.load(tmp_path / "none.json")


def test_format_version_1_still_loads(tmp_path):
    """A plan written by format version 1 (the quick LSTM config's search) loads, applies to its
    model and is written back as version 4 with the same content."""
    assert json.loads(V1_PLAN.read_text())["format"] == "nas-mpq.plan/1"
    plan = PrecisionPlan.load(V1_PLAN)
    assert plan.space_name == "lstm_lm" and plan.budget == Budget("avg_bits", 2.0) and plan.meets_budget()
    assert all(g.axis == 0 and g.macs is None for g in plan.groups.values())
    assert all(g.settings == QuantizerSettings("uniform", False) for g in plan.groups.values())
    net = apply_plan_(LSTMLM(2000, 128, 128, 2), plan, lstm_lm_space())
    assert {g.name: g.plan.bits for g in search_groups(net)} == plan.bits
    again = PrecisionPlan.load(plan.save(tmp_path / "v4.json"))
    assert json.loads((tmp_path / "v4.json").read_text())["format"] == "nas-mpq.plan/4"
    assert again.groups == plan.groups and again.size() == plan.size()


V3_PLAN = """{
 "format": "nas-mpq.plan/3", "search_space": "transformer_lm", "candidates": [2, 4],
 "budget": {"kind": "avg_bits", "value": 3.0},
 "groups": {
  "blocks.0.attn.o.weight:h0": {"param": "blocks.0.attn.o.weight", "rows": [0, 4], "axis": 1, "numel": 32,
                                "bits": 4, "scales": 8, "method": "lsq", "per_channel": true, "macs": 32,
                                "layer": "blocks.0.attn.o"},
  "decoder.weight": {"param": "decoder.weight", "rows": null, "numel": 40, "bits": 2, "scales": 1,
                     "method": "uniform", "per_channel": false, "probs": [0.1, 0.9]}},
 "fixed_numel": 10, "size_bits": 816, "fp32_size_bits": 2624, "compression": 3.2156862745098040,
 "avg_bits": 2.888888888888889, "activations": {"blocks.0.attn.o": {"bits": 8}},
 "coverage": {"searched_share": 1.0}
}"""


def test_format_version_3_still_loads_its_search_space_as_the_space_name(tmp_path):
    """A plan of format 3 (the space's name under `search_space`) loads with every field, group
    settings included, and is written back as version 4 with the name under `space_name`."""
    (tmp_path / "v3.json").write_text(V3_PLAN)
    plan = PrecisionPlan.load(tmp_path / "v3.json")
    assert plan.space_name == "transformer_lm" and plan.budget == Budget("avg_bits", 3.0)
    assert plan.groups["blocks.0.attn.o.weight:h0"] == GroupPlan(
        "blocks.0.attn.o.weight", (0, 4), 32, 4, 8, None, 1, 32, "blocks.0.attn.o", "lsq", True)
    assert plan.groups["decoder.weight"].probs == (0.1, 0.9) and plan.activation_bits == {"blocks.0.attn.o": 8}
    assert plan.extra == {"coverage": {"searched_share": 1.0}} and plan.size().size_bits == 816
    data = json.loads(plan.save(tmp_path / "v4.json").read_text())
    assert data["format"] == "nas-mpq.plan/4" and data["space_name"] == "transformer_lm"
    assert "search_space" not in data
    again = PrecisionPlan.load(tmp_path / "v4.json")
    assert again.groups == plan.groups and again.extra == plan.extra and again.space_name == plan.space_name
    # format 4 reads the name from `space_name` only
    (tmp_path / "mixed.json").write_text(json.dumps({**json.loads(V3_PLAN), "format": "nas-mpq.plan/4"}))
    with pytest.raises(ValueError, match="missing or bad field 'space_name'"):
        PrecisionPlan.load(tmp_path / "mixed.json")


def test_column_slices_and_macs_round_trip(tmp_path):
    g = GroupPlan("attn.o.weight", (4, 8), 32, 2, axis=1, macs=32)
    w = torch.arange(64.0).reshape(8, 8)
    assert g.shape(w.shape) == (8, 4)
    assert torch.equal(g.view(w), w[:, 4:8])
    plan = PrecisionPlan("transformer_lm", [2, 32], {"o:h1": g}, 0)
    back = PrecisionPlan.load(plan.save(tmp_path / "p.json"))
    assert back.groups["o:h1"] == g


def test_bitops_budget_counts_macs_times_weight_and_activation_bits():
    groups = {"conv": GroupPlan("conv.weight", None, 9, 4, macs=9 * 64), "fc": GroupPlan("fc.weight", None, 20, 2, macs=20),
              "emb": GroupPlan("emb.weight", None, 30, 8, macs=0)}
    b = Budget("bitops", 1e6)
    assert b.measure(groups.values(), 5) == (9 * 64 * 4 + 20 * 2) * 32
    # the smallest plan: every group at 1 bit, (576 + 20) x 1 x 32
    assert b.capacity(groups.values(), 5) == 1e6 and b.fixed_cost(5) == 0
    with pytest.raises(ValueError, match="infeasible budget bitops=100.0.*needs bitops=19072;"):
        Budget("bitops", 100.0).check_feasible(groups, 5, {n: [1, 2, 32] for n in groups})
    with pytest.raises(ValueError, match="needs the MACs of every group"):
        b.group_cost(GroupPlan("w", None, 4, 2), 2)


def test_feasibility_keeps_one_group_of_every_prunable_layer():
    groups = {f"w:{i}": GroupPlan("w", (i, i + 1), 10, 4) for i in range(3)}
    cands = {n: [0, 2, 4] for n in groups}
    Budget("avg_bits", 2 / 3).check_feasible(groups, 0, cands)  # one group of 10 at 2 bits = 20 of 30
    with pytest.raises(ValueError, match="avg_bits=0.6667"):
        Budget("avg_bits", 0.5).check_feasible(groups, 0, cands)


def test_plan_file_errors_name_the_group_and_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    for groups, message in (([], r"bad.json: `groups` must map names to entries, got \[\]"),
                            ({}, r"bad.json: the plan has no groups")):
        bad.write_text(json.dumps({**hand_plan().to_dict(), "groups": groups}))
        with pytest.raises(ValueError, match=message):
            PrecisionPlan.load(bad)
    d = hand_plan().to_dict()
    d["groups"]["rnn.weight_hh_l0:f"]["bits"] = 7
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"bad.json: group 'rnn.weight_hh_l0:f': unknown bit-width 7; valid bit-widths"):
        PrecisionPlan.load(bad)
    d = hand_plan().to_dict()
    d["budget"] = {"kind": "avg_bits", "value": float("nan")}
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"bad.json: budget value must be a positive number, got nan"):
        PrecisionPlan.load(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_budget_value_that_is_not_finite_is_named(value):
    with pytest.raises(ValueError, match=f"budget value must be a positive number, got {value}"):
        Budget("avg_bits", value)


def test_budget_at_or_above_the_largest_plan_is_refused_with_the_valid_range():
    plan = hand_plan()
    cands = {n: [1, 2, 4, 8, 32] for n in plan.groups}
    Budget("avg_bits", 31.9).check_binds(plan.groups, 42, cands)
    for value in (32.0, 40.0):
        with pytest.raises(ValueError, match=rf"budget avg_bits={value} does not constrain the search: .* "
                                             r"\(avg_bits=32.0000\); valid budgets lie between avg_bits=1.0000 "
                                             r"\(the smallest plan\) and avg_bits=32.0000 \(the largest plan, excluded\)"):
            Budget("avg_bits", value).check_binds(plan.groups, 42, cands)
    with pytest.raises(ValueError, match=r"budget compression=1.0 does not constrain .* between compression=\d+\.\d+ "
                                         r"\(the smallest plan\) and compression=1.0000"):
        Budget("compression", 1.0).check_binds(plan.groups, 42, cands)
    with pytest.raises(ValueError, match="infeasible budget avg_bits=0.5"):
        Budget("avg_bits", 0.5).check_binds(plan.groups, 42, cands)
