import json

import pytest

from nas_mpq.plan import Budget, GroupPlan, PrecisionPlan, plan_size


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
    assert data["format"] == "nas-mpq.plan/1"
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
