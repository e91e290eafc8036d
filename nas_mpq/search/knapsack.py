"""Exact budget repair: a multiple-choice knapsack solved with scipy.optimize.milp (HiGHS).

    min sum_gk c_gk x_gk  s.t.  sum_k x_gk = 1 for every g,  sum_gk a_gk x_gk <= capacity,  x binary

with a_gk the budget's measure of group g at bit-width b_k (ALGORITHMS.md section 4). Costs are
-log pi (stay close to the search) or a sensitivity Omega_g(b_k).

Under a BitOps budget with searched activations, a group's measure is macs_g b_k a_j with a_j the
input bit-width of its layer: a product of two choices. Layer l's input gets binaries z_lj
(sum_j z_lj = 1, cost -log pi_lj) and each (g, k, j) a product variable p_gkj = x_gk AND z_lj,
linearised by p >= x + z - 1, p <= x, p <= z; the budget row then reads sum macs_g b_k a_j p_gkj.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..plan import ACTIVATION_BITS, PrecisionPlan, groups_by_param

Choices = Mapping[str, Sequence[int]]
Costs = Mapping[str, Sequence[float]]


class _Columns:
    """Named binary variables of the MILP and their objective coefficients."""

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}
        self.cost: list[float] = []

    def add(self, key: tuple, cost: float) -> int:
        self.index[key] = len(self.cost)
        self.cost.append(cost)
        return self.index[key]

    def row(self, entries: Mapping[int, float]) -> np.ndarray:
        r = np.zeros(len(self.cost))
        for j, v in entries.items():
            r[j] += v
        return r


def solve_knapsack(plan: PrecisionPlan, candidates: Choices, costs: Costs, min_fill: float | None = None,
                   act_candidates: Choices | None = None,
                   act_costs: Costs | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """(bits per group, input bits per layer) minimising total cost under `plan.budget`; a layer
    whose groups all allow 0 bits keeps at least one group unpruned. Layer inputs with candidates
    in `act_candidates` join the knapsack under a BitOps budget and otherwise take their cheapest
    candidate (they do not change a size). With `min_fill` the plan also uses at least that
    fraction of the budget (capped at the largest plan); when no plan within the budget reaches
    it, the requirement is dropped. Raises ValueError if the budget is infeasible."""
    budget = plan.budget
    if budget is None:
        raise ValueError("the plan has no budget to meet")
    groups, act_candidates = plan.groups, dict(act_candidates or {})
    act_costs = act_costs or {n: [0.0] * len(c) for n, c in act_candidates.items()}
    budget.check_feasible(groups, plan.fixed_numel, candidates, act_candidates)
    joint = budget.kind == "bitops" and bool(act_candidates)
    fixed_acts = {} if joint else {n: _cheapest(act_candidates[n], act_costs[n]) for n in act_candidates}
    cols = _Columns()
    for n in groups:
        for b, c in zip(candidates[n], costs[n]):
            cols.add(("x", n, b), _finite(c))
    for n in act_candidates if joint else ():
        for b, c in zip(act_candidates[n], act_costs[n]):
            cols.add(("z", n, b), _finite(c))
    measure: dict[int, float] = {}
    links: list[tuple[dict[int, float], float, float]] = []
    for n, g in groups.items():
        layer = g.layer if joint and g.layer in act_candidates else None
        for b in candidates[n]:
            x = cols.index[("x", n, b)]
            if layer is None:
                act = fixed_acts.get(g.layer, ACTIVATION_BITS)
                measure[x] = measure.get(x, 0.0) + budget.group_cost(g, b, act)
                continue
            for a in act_candidates[layer]:
                p, z = cols.add(("p", n, b, a), 0.0), cols.index[("z", layer, a)]
                measure[p] = float(budget.group_cost(g, b, a))
                links += [({p: 1, x: -1, z: -1}, -1, np.inf), ({p: 1, x: -1}, -np.inf, 0), ({p: 1, z: -1}, -np.inf, 0)]
    capacity = budget.capacity(groups.values(), plan.fixed_numel) - budget.fixed_cost(plan.fixed_numel)
    # every measure is an integer, so the bound floor(capacity) + 0.5 is exact and leaves HiGHS's
    # feasibility tolerance no room to overshoot
    bound = math.floor(capacity + 1e-6) + 0.5
    lower = -np.inf
    if min_fill is not None:
        largest = sum(max(budget.group_cost(g, b, max(act_candidates.get(g.layer, [ACTIVATION_BITS])))
                          for b in candidates[n]) for n, g in groups.items())
        lower = min(min_fill * capacity, largest)
    rows = [(cols.row(measure), lower, bound)]
    rows += [(cols.row({cols.index[("x", n, b)]: 1 for b in candidates[n]}), 1, 1) for n in groups]
    rows += [(cols.row({cols.index[("z", n, b)]: 1 for b in act_candidates[n]}), 1, 1)
             for n in (act_candidates if joint else ())]
    rows += [(cols.row(entries), lo, hi) for entries, lo, hi in links]
    for names in groups_by_param(groups).values():
        if all(0 in candidates[n] for n in names):
            rows.append((cols.row({cols.index[("x", n, 0)]: 1 for n in names}), -np.inf, len(names) - 1))
    a = np.stack([r for r, _, _ in rows])
    res = milp(np.array(cols.cost), constraints=LinearConstraint(a, [lo for _, lo, _ in rows], [hi for _, _, hi in rows]),
               integrality=np.ones(len(cols.cost)), bounds=Bounds(0, 1))
    if res.x is None and min_fill is not None:  # no plan fills the budget that far: do not require it
        return solve_knapsack(plan, candidates, costs, None, act_candidates, act_costs)
    if res.x is None:
        raise ValueError(f"no plan meets the budget {budget.kind}={budget.value} ({res.message})")
    chosen = {key: v for key, v in zip(cols.index, res.x) if v > 0.5}
    bits = {n: b for (kind, n, b, *_) in chosen if kind == "x"}
    acts = {n: b for (kind, n, b, *_) in chosen if kind == "z"} if joint else fixed_acts
    return bits, acts


def _finite(cost: float) -> float:
    return float(np.nan_to_num(cost, nan=0.0, posinf=1e9))


def _cheapest(bits: Sequence[int], costs: Sequence[float]) -> int:
    return min(zip(costs, bits))[1]


def repair_plan(plan: PrecisionPlan, candidates: Choices, probs: Mapping[str, Sequence[float]],
                min_fill: float | None = None, act_candidates: Choices | None = None,
                act_probs: Mapping[str, Sequence[float]] | None = None) -> PrecisionPlan:
    """The plan closest to the search that meets the budget, priced by size: group g at b_k costs
    `(n_g / mean n) (-log pi_gk)`, so a change moves bits where the search's probabilities
    favour it per bit moved, not where a group is largest (-log pi alone costs the same for a
    2.56M-weight embedding as for a 65k-weight gate). An argmax plan that meets the budget is
    kept as it is; with `min_fill` the plan must also use at least that fraction of the budget
    (off by default: a fill is not the search's choice). `plan.extra["repair"]` reports how far
    the repair moved the search's plan (groups changed, bits moved) and is what to look at: a
    large move means the search did not converge."""
    sizes = [g.numel for g in plan.groups.values()]
    mean = sum(sizes) / max(len(sizes), 1)

    def neg_log(p: Mapping[str, Sequence[float]], weight: Mapping[str, float]) -> dict[str, list[float]]:
        return {n: [weight.get(n, 1.0) * -math.log(max(x, 1e-12)) for x in v] for n, v in p.items()}

    per_bit = {n: g.numel / mean for n, g in plan.groups.items()}
    prunes_a_layer = any(all(plan.groups[n].bits == 0 for n in names)
                         for names in groups_by_param(plan.groups).values())
    if plan.meets_budget() and min_fill is None and not prunes_a_layer:
        bits, acts = plan.bits, plan.activation_bits
    else:
        bits, acts = solve_knapsack(plan, candidates, neg_log(probs, per_bit), min_fill, act_candidates,
                                    neg_log(act_probs, {}) if act_probs is not None else None)
    repaired = plan.with_bits(bits, acts)
    assert repaired.meets_budget(), "knapsack solution exceeds the budget"
    repaired.extra["repair"] = repair_report(plan, repaired)
    return repaired


def repair_report(before: PrecisionPlan, after: PrecisionPlan) -> dict[str, object]:
    """How far a repair moved a plan: the groups it changed ({name: [from, to]}), the bits it moved
    (sum n_g |b_after - b_before|) as a share of the searched weights' bits at the argmax, and
    the average bits before and after."""
    changed = {n: [g.bits, after.groups[n].bits] for n, g in before.groups.items() if g.bits != after.groups[n].bits}
    moved = sum(g.numel * abs(after.groups[n].bits - g.bits) for n, g in before.groups.items())
    total = sum(g.numel * g.bits for g in before.groups.values())
    acts = {n: [a.bits, after.activations[n].bits] for n, a in before.activations.items()
            if a.bits != after.activations[n].bits}
    return {"groups_changed": len(changed), "changed": changed, "bits_moved": int(moved),
            "bits_moved_share": moved / total if total else 0.0,
            "argmax_avg_bits": before.size().avg_bits, "avg_bits": after.size().avg_bits,
            **({"inputs_changed": acts} if acts else {})}
