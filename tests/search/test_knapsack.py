import itertools
import math

import numpy as np
import pytest

from nas_mpq.plan import Budget, GroupPlan, PrecisionPlan
from nas_mpq.search import repair_plan, solve_knapsack

CANDS = [1, 2, 4, 8, 32]


def make_plan(numels, budget, bits=32):
    groups = {f"g{i}": GroupPlan(f"layer{i}.weight", None, n, bits) for i, n in enumerate(numels)}
    return PrecisionPlan("test", CANDS, groups, fixed_numel=100, budget=budget)


@pytest.mark.parametrize("kind,value", [("avg_bits", 2.0), ("avg_bits", 3.3), ("compression", 6.0),
                                        ("size_mb", 0.0006)])
def test_knapsack_is_optimal_and_meets_budget(kind, value):
    rng = np.random.default_rng(0)
    numels = [300, 120, 800, 50]
    plan = make_plan(numels, Budget(kind, value))
    cands = {n: CANDS for n in plan.groups}
    costs = {n: list(rng.random(len(CANDS))) for n in plan.groups}
    chosen, _ = solve_knapsack(plan, cands, costs)
    result = plan.with_bits(chosen)
    assert result.meets_budget()
    assert set(chosen.values()) <= set(CANDS)
    best = math.inf
    for combo in itertools.product(range(len(CANDS)), repeat=len(numels)):
        p = plan.with_bits({n: CANDS[k] for n, k in zip(plan.groups, combo)})
        if p.meets_budget():
            best = min(best, sum(costs[n][k] for n, k in zip(plan.groups, combo)))
    got = sum(costs[n][CANDS.index(b)] for n, b in chosen.items())
    assert got == pytest.approx(best, abs=1e-9)


def test_budget_met_exactly_at_the_boundary():
    # two groups of 100: avg 2.5 bits is exactly 1 bit + 4 bits, the only plan at the boundary
    plan = make_plan([100, 100], Budget("avg_bits", 2.5))
    costs = {"g0": [5, 4, 0, 3, 9], "g1": [0, 4, 5, 3, 9]}
    chosen, _ = solve_knapsack(plan, {n: CANDS for n in plan.groups}, costs)
    assert chosen == {"g0": 4, "g1": 1}
    assert plan.with_bits(chosen).size().avg_bits == 2.5


def test_repair_changes_nothing_when_the_argmax_plan_fits():
    plan = make_plan([100, 3000, 50], Budget("avg_bits", 8.0)).with_bits({"g0": 4, "g1": 2, "g2": 8})
    # g1's argmax is 2 bits but it is far from sure: a repair that filled the budget would raise it
    probs = {"g0": [0.0, 0.05, 0.9, 0.05, 0.0], "g1": [0.1, 0.4, 0.3, 0.2, 0.0], "g2": [0, 0, 0.2, 0.8, 0]}
    repaired = repair_plan(plan, {n: CANDS for n in plan.groups}, probs)
    assert repaired.bits == {"g0": 4, "g1": 2, "g2": 8}
    assert repaired.extra["repair"]["groups_changed"] == 0 and repaired.extra["repair"]["bits_moved"] == 0


def _raise_case():
    """A big group (1000 weights) whose argmax 1 bit the search is sure of, and five small groups
    (100 each) at 2 bits with 4 bits a close second; the plan must gain 1000 bits (min_fill)."""
    plan = make_plan([1000] + [100] * 5, Budget("avg_bits", 2.0)).with_bits({"g0": 1, **{f"g{i}": 2 for i in range(1, 6)}})
    probs = {"g0": [0.6, 0.1, 0.1, 0.1, 0.1], **{f"g{i}": [0.05, 0.5, 0.3, 0.1, 0.05] for i in range(1, 6)}}
    return plan, probs


def test_repair_prices_bits_by_size_and_raises_the_small_groups():
    plan, probs = _raise_case()
    cands = {n: CANDS for n in plan.groups}
    filled = repair_plan(plan, cands, probs, min_fill=0.99)
    # per bit moved, 2 -> 4 bits on a small group costs -log(0.3/0.5)/2 = 0.26; 1 -> 2 bits on the big
    # group costs -log(0.1/0.6) = 1.79: the small groups are raised, the big one is left alone
    assert filled.bits == {"g0": 1, **{f"g{i}": 4 for i in range(1, 6)}}
    report = filled.extra["repair"]
    assert report["groups_changed"] == 5 and report["bits_moved"] == 1000
    assert report["changed"]["g1"] == [2, 4] and report["argmax_avg_bits"] == pytest.approx(2000 / 1500)
    # the unpriced cost (-log pi per group whatever its size) raises the big group instead
    unpriced = {n: [-math.log(p) for p in v] for n, v in probs.items()}
    chosen, _ = solve_knapsack(plan, cands, unpriced, min_fill=0.99)
    assert chosen["g0"] == 2 and all(chosen[f"g{i}"] == 2 for i in range(1, 6))


def test_repair_lowers_where_the_search_was_least_sure_per_bit():
    # over budget: either drop the big group 2 -> 1 (1000 bits, pi 0.5 vs 0.45) or three small groups
    # 4 -> 2 (600 bits, pi 0.9 vs 0.05); per bit the big group's drop is far cheaper
    plan = make_plan([1000] + [100] * 3, Budget("avg_bits", 1.9)).with_bits({"g0": 2, "g1": 4, "g2": 4, "g3": 4})
    probs = {"g0": [0.45, 0.5, 0.03, 0.01, 0.01], **{f"g{i}": [0.02, 0.05, 0.9, 0.02, 0.01] for i in (1, 2, 3)}}
    repaired = repair_plan(plan, {n: CANDS for n in plan.groups}, probs)
    assert repaired.meets_budget() and repaired.bits == {"g0": 1, "g1": 4, "g2": 4, "g3": 4}


def test_infeasible_budget_names_the_minimum():
    plan = make_plan([100, 300], Budget("avg_bits", 0.5))
    with pytest.raises(ValueError, match=r"infeasible budget avg_bits=0.5.*avg_bits=1.0000"):
        solve_knapsack(plan, {n: CANDS for n in plan.groups}, {n: [0] * 5 for n in plan.groups})


def test_pruning_never_removes_a_whole_layer():
    groups = {f"w:{g}": GroupPlan("w", (i * 10, i * 10 + 10), 100, 32) for i, g in enumerate("ab")}
    plan = PrecisionPlan("test", [0, 1, 2], groups, 0, Budget("avg_bits", 0.4))
    costs = {n: [0.0, 1.0, 2.0] for n in groups}
    with pytest.raises(ValueError, match=r"infeasible budget avg_bits=0.4.*avg_bits=0.5000"):
        solve_knapsack(plan, {n: [0, 1, 2] for n in groups}, costs)  # needs avg 0.5 at least
    plan = PrecisionPlan("test", [0, 1, 2], groups, 0, Budget("avg_bits", 0.5))
    chosen, _ = solve_knapsack(plan, {n: [0, 1, 2] for n in groups}, costs)
    assert sorted(chosen.values()) == [0, 1]


def test_min_fill_tops_up_a_plan_below_the_budget():
    plan = make_plan([100, 100, 100, 100], Budget("avg_bits", 4.0), bits=1)
    probs = {n: [0.6, 0.1, 0.1, 0.1, 0.1] for n in plan.groups}  # argmax 1 bit: avg 1 of 4 allowed
    cands = {n: CANDS for n in plan.groups}
    assert set(repair_plan(plan, cands, probs).bits.values()) == {1}
    filled = repair_plan(plan, cands, probs, min_fill=0.99)
    assert filled.meets_budget() and filled.size().avg_bits == 4.0


def test_min_fill_gives_way_when_no_plan_reaches_it():
    plan = make_plan([100, 100], Budget("avg_bits", 40.0), bits=1)  # even all 32 bits is below it
    probs = {n: [0.6, 0.1, 0.1, 0.1, 0.1] for n in plan.groups}
    filled = repair_plan(plan, {n: CANDS for n in plan.groups}, probs, min_fill=0.99)
    assert filled.size().avg_bits == 32.0
    plan = make_plan([100, 300], Budget("avg_bits", 1.5), bits=1)  # 1.5 is not reachable: 1.25 or 1.75
    filled = repair_plan(plan, {n: CANDS for n in plan.groups}, {n: probs["g0"] for n in plan.groups}, min_fill=0.99)
    assert filled.meets_budget() and filled.bits == {"g0": 1, "g1": 1}
