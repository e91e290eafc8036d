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


def test_repair_keeps_plan_that_already_fits():
    plan = make_plan([100, 100], Budget("avg_bits", 8.0), bits=4)
    probs = {n: [0.0, 0.05, 0.9, 0.05, 0.0] for n in plan.groups}
    assert repair_plan(plan, {n: CANDS for n in plan.groups}, probs).bits == {"g0": 4, "g1": 4}


def test_infeasible_budget_names_the_minimum():
    plan = make_plan([100, 300], Budget("avg_bits", 0.5))
    with pytest.raises(ValueError, match=r"infeasible budget avg_bits=0.5.*avg_bits=1.0000"):
        solve_knapsack(plan, {n: CANDS for n in plan.groups}, {n: [0] * 5 for n in plan.groups})


def test_pruning_never_removes_a_whole_layer():
    groups = {f"w:{g}": GroupPlan("w", (i * 10, i * 10 + 10), 100, 32) for i, g in enumerate("ab")}
    plan = PrecisionPlan("test", [0, 1, 2], groups, 0, Budget("avg_bits", 0.4))
    costs = {n: [0.0, 1.0, 2.0] for n in groups}
    with pytest.raises(ValueError):
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
