"""Plans from sensitivities and the baselines: the multiple-choice knapsack of ALGORITHMS.md
section 4 with Omega_g(b) as the cost, uniform plans (and the largest uniform bit-width a budget
allows) and seeded random plans under a budget.

Example:
    >>> plan = allocate(template, omega, Budget("avg_bits", 2.0))
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..plan import Budget, PrecisionPlan
from ..search.knapsack import solve_knapsack


def _with_budget(template: PrecisionPlan, budget: Budget) -> PrecisionPlan:
    return PrecisionPlan(template.space_name, template.candidates, dict(template.groups),
                         template.fixed_numel, budget, dict(template.extra))


def allocate(template: PrecisionPlan, omega: Mapping[str, Mapping[int, float]], budget: Budget,
             min_fill: float | None = 0.99) -> PrecisionPlan:
    """The plan minimising the total sensitivity sum_g Omega_g(b_g) under `budget`."""
    plan = _with_budget(template, budget)
    missing = sorted(set(plan.groups) - set(omega))
    if missing:
        raise ValueError(f"no sensitivity for groups {missing}")
    cands = {n: sorted(int(b) for b in omega[n]) for n in plan.groups}
    costs = {n: [float(omega[n][b]) for b in cands[n]] for n in plan.groups}
    return plan.with_bits(solve_knapsack(plan, cands, costs, min_fill)[0])


def random_plan(template: PrecisionPlan, budget: Budget, seed: int = 0,
                min_fill: float | None = 0.99) -> PrecisionPlan:
    """A random plan that meets (and fills) the budget: the knapsack with seeded random costs."""
    rng = np.random.default_rng(seed)
    plan = _with_budget(template, budget)
    cands = {n: list(template.candidates) for n in plan.groups}
    costs = {n: list(rng.random(len(cands[n]))) for n in plan.groups}
    return plan.with_bits(solve_knapsack(plan, cands, costs, min_fill)[0])


def uniform_bits_for(plan: PrecisionPlan) -> int | None:
    """The largest candidate below 32 bits at which every group together meets the plan's budget
    (None: none does)."""
    for bits in sorted((b for b in plan.candidates if 0 < b < 32), reverse=True):
        if plan.with_bits({n: bits for n in plan.groups}).meets_budget():
            return bits
    return None


def uniform_plan_for(template: PrecisionPlan, bits: int, budget: Budget | None = None) -> PrecisionPlan:
    """Every group at `bits`; with a budget, an error if that plan does not meet it."""
    plan = _with_budget(template, budget) if budget else template
    plan = plan.with_bits({n: bits for n in plan.groups})
    if budget is not None and not plan.meets_budget():
        raise ValueError(f"uniform {bits}-bit plan (avg {plan.size().avg_bits:.3f} bits, "
                         f"{plan.size().compression:.2f}x) does not meet the budget {budget.kind}={budget.value}")
    return plan
