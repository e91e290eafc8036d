"""Exact budget repair: a multiple-choice knapsack solved with scipy.optimize.milp (HiGHS).

    min sum_gk c_gk x_gk  s.t.  sum_k x_gk = 1 for every g,  sum_gk a_gk x_gk <= capacity,  x binary

with a_gk the budget's measure of group g at bit-width b_k (ALGORITHMS.md section 4). Costs are
-log pi (stay close to the search) or a sensitivity Omega_g(b_k).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..plan import PrecisionPlan, layers


def solve_knapsack(plan: PrecisionPlan, candidates: Mapping[str, Sequence[int]],
                   costs: Mapping[str, Sequence[float]], min_fill: float | None = None) -> dict[str, int]:
    """Bits per group minimising total cost under `plan.budget`; a layer whose groups all allow
    0 bits keeps at least one group unpruned. With `min_fill` the plan also uses at least that
    fraction of the budget (capped at the size of the largest plan); when no plan within the
    budget reaches it, the requirement is dropped. Raises ValueError if the budget is infeasible."""
    budget = plan.budget
    if budget is None:
        raise ValueError("the plan has no budget to meet")
    groups = plan.groups
    budget.check_feasible(groups, plan.fixed_numel, candidates)
    names = list(groups)
    index = [(n, b) for n in names for b in candidates[n]]
    c = np.array([float(costs[n][list(candidates[n]).index(b)]) for n, b in index])
    c = np.nan_to_num(c, nan=0.0, posinf=1e9)
    a = np.array([budget.group_cost(groups[n], b) for n, b in index], dtype=float)
    one_per_group = np.zeros((len(names), len(index)))
    for j, (n, _) in enumerate(index):
        one_per_group[names.index(n), j] = 1.0
    capacity = budget.capacity(groups.values(), plan.fixed_numel) - budget.fixed_cost(plan.fixed_numel)
    # every a_gk is an integer number of bits, so the integer bound floor(capacity) + 0.5 is exact
    # and leaves HiGHS's feasibility tolerance no room to overshoot
    bound = math.floor(capacity + 1e-6) + 0.5
    lower = -np.inf
    if min_fill is not None:
        largest = sum(max(budget.group_cost(groups[n], b) for b in candidates[n]) for n in names)
        lower = min(min_fill * capacity, largest)
    constraints = [LinearConstraint(one_per_group, 1, 1), LinearConstraint(a[None, :], lower, bound)]
    for layer_groups in layers(groups).values():
        if all(0 in candidates[n] for n in layer_groups):
            row = np.array([1.0 if (n in layer_groups and b == 0) else 0.0 for n, b in index])
            constraints.append(LinearConstraint(row[None, :], -np.inf, len(layer_groups) - 1))
    res = milp(c, constraints=constraints, integrality=np.ones_like(c), bounds=Bounds(0, 1))
    if res.x is None and min_fill is not None:  # no plan fills the budget that far: do not require it
        return solve_knapsack(plan, candidates, costs, None)
    if res.x is None:
        raise ValueError(f"no plan meets the budget {budget.kind}={budget.value} ({res.message})")
    chosen = {n: b for (n, b), x in zip(index, res.x) if x > 0.5}
    return chosen


def repair_plan(plan: PrecisionPlan, candidates: Mapping[str, Sequence[int]],
                probs: Mapping[str, Sequence[float]], min_fill: float | None = None) -> PrecisionPlan:
    """The plan closest to the search (max sum log pi) that meets the budget, and with `min_fill`
    also uses at least that fraction of it: an argmax far below the budget is topped up where the
    search was least sure, instead of leaving size unused."""
    costs = {n: [-math.log(max(p, 1e-12)) for p in probs[n]] for n in plan.groups}
    repaired = plan.with_bits(solve_knapsack(plan, candidates, costs, min_fill))
    assert repaired.meets_budget(), "knapsack solution exceeds the budget"
    return repaired
