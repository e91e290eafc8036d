"""The plan of a supernet: the argmax of every choice, repaired to the budget (knapsack.py), with
the coverage report of what was searched.

Example:
    >>> prepare_search_(net, space)
    >>> ...                                      # train the weights and the choices
    >>> plan = derive_plan(net, space, Budget("avg_bits", 2.0))
    >>> plan.extra["coverage"]["searched_share"]
    1.0
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..plan import ActivationPlan, Budget, PrecisionPlan, groups_by_param
from .activations import activation_groups
from .choice import MixedPrecisionChoice
from .coverage import coverage_report
from .groups import fixed_numel, search_groups
from .knapsack import repair_plan
from .space import SearchSpace


def derive_plan(model: nn.Module, space: SearchSpace, budget: Budget | None = None,
                min_fill: float | None = None) -> PrecisionPlan:
    """The plan of a supernet: argmax of theta per group, then (with a budget) the size-priced
    knapsack repair (knapsack.repair_plan), so the plan meets the budget; with `min_fill` it also
    uses at least that fraction of it. plan.extra["repair"] reports what the repair changed,
    plan.extra["coverage"] which parameters were searched (search.coverage_report)."""
    groups, acts = search_groups(model), activation_groups(model)
    activations = {a.name: ActivationPlan(a.choice.argmax_bits(), tuple(a.choice.probs().tolist())) for a in acts}
    plan = PrecisionPlan(space.name, sorted({b for g in groups for b in g.choice.candidates}),
                         {g.name: g.plan for g in groups}, fixed_numel(model), budget,
                         {"coverage": coverage_report(model, space)}, activations)
    if budget is None:
        return _keep_every_layer(plan, {g.name: g.choice for g in groups})
    return repair_plan(plan, {g.name: g.choice.candidates for g in groups},
                       {g.name: g.choice.probs().tolist() for g in groups}, min_fill,
                       {a.name: a.choice.candidates for a in acts}, {a.name: a.choice.probs().tolist() for a in acts})


def _keep_every_layer(plan: PrecisionPlan, choices: Mapping[str, MixedPrecisionChoice]) -> PrecisionPlan:
    """An argmax plan that prunes every group of a layer gets back the group and bit-width the
    search found most likely among the non-zero choices of that layer."""
    bits = plan.bits
    for names in groups_by_param(plan.groups).values():
        if all(bits[n] == 0 for n in names):
            _, name, b = max((p, n, b) for n in names
                             for b, p in zip(choices[n].candidates, choices[n].probs().tolist()) if b != 0)
            bits[name] = b
    return plan.with_bits(bits)
