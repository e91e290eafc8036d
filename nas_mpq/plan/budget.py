"""The budget a plan meets: average bits, compression, megabytes or BitOps, and the measure of a
plan it bounds. Plain data, no torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from .groups import ACTIVATION_BITS, FLOAT_BITS, GroupPlan, groups_by_param

BUDGET_KINDS = ("avg_bits", "compression", "size_mb", "bitops")


@dataclass(frozen=True)
class Budget:
    """A size budget: average bits over the searched weights, a compression ratio of the whole model
    against FP32, or a size in megabytes (1 MB = 10^6 bytes) of the whole model; or a compute
    budget: BitOps per sample, sum over groups of MACs x weight bits x activation bits (32).

    The budget constrains a linear measure of the plan: for avg_bits, sum(numel * bits) over the
    searched groups; for bitops, sum(macs * bits * 32); otherwise size_bits. `capacity` is the
    bound on that measure."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"unknown budget kind {self.kind!r}; valid kinds: {list(BUDGET_KINDS)}")
        if not (isinstance(self.value, (int, float)) and self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"budget value must be a positive number, got {self.value!r}")

    def group_cost(self, group: GroupPlan, bits: int, act_bits: int = ACTIVATION_BITS) -> int:
        """The budget's measure for one group at `bits` (its layer's input at `act_bits`)."""
        if self.kind == "avg_bits":
            return group.numel * bits
        if self.kind == "bitops":
            if group.macs is None:
                raise ValueError("a bitops budget needs the MACs of every group; this plan has none "
                                 "(it was made without them, e.g. by format version 1)")
            return group.macs * bits * act_bits
        return group.cost_bits(bits)

    def fixed_cost(self, fixed_numel: int) -> int:
        return 0 if self.kind in ("avg_bits", "bitops") else FLOAT_BITS * fixed_numel

    def capacity(self, groups: Iterable[GroupPlan], fixed_numel: int) -> float:
        """Upper bound on sum(group_cost) + fixed_cost."""
        groups = list(groups)
        searched = sum(g.numel for g in groups)
        if self.kind == "avg_bits":
            return self.value * searched
        if self.kind == "compression":
            return FLOAT_BITS * (searched + fixed_numel) / self.value
        if self.kind == "bitops":
            return self.value
        return self.value * 8e6

    def measure(self, groups: Iterable[GroupPlan], fixed_numel: int,
                act_bits: Mapping[str, int] | None = None) -> float:
        """The budget's measure of a plan (`act_bits`: input bit-width per layer, 32 if absent)."""
        act_bits = act_bits or {}
        return (sum(self.group_cost(g, g.bits, act_bits.get(g.layer, ACTIVATION_BITS)) for g in groups)
                + self.fixed_cost(fixed_numel))

    def check_feasible(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                       candidates: Mapping[str, Iterable[int]],
                       act_candidates: Mapping[str, Iterable[int]] | None = None) -> None:
        """Raise ValueError if even the smallest plan exceeds the budget, naming the smallest
        budget that can be met."""
        least = self.smallest_measure(groups, fixed_numel, candidates, act_candidates)
        gs = list(groups.values())
        if least > self.capacity(gs, fixed_numel) + 1e-6:
            raise ValueError(
                f"infeasible budget {self.kind}={self.value}: even the smallest plan (every group at its "
                f"lowest candidate) needs {self.describe(least, gs, fixed_numel)}; "
                f"choose a budget of at least that")

    def check_binds(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                    candidates: Mapping[str, Iterable[int]],
                    act_candidates: Mapping[str, Iterable[int]] | None = None) -> None:
        """check_feasible, and ValueError if the budget cannot constrain a search: the largest
        plan (every group at its largest candidate, e.g. all 32 bits) already meets it, so a search
        would only return that plan. The message names the value and the valid range."""
        self.check_feasible(groups, fixed_numel, candidates, act_candidates)
        most = self.largest_measure(groups, fixed_numel, candidates, act_candidates)
        gs = list(groups.values())
        if most <= self.capacity(gs, fixed_numel) + 1e-6:
            least = self.smallest_measure(groups, fixed_numel, candidates, act_candidates)
            raise ValueError(
                f"budget {self.kind}={self.value} does not constrain the search: the plan with every group "
                f"at its largest candidate already meets it ({self.describe(most, gs, fixed_numel)}); "
                f"valid budgets lie between {self.describe(least, gs, fixed_numel)} (the smallest plan) and "
                f"{self.describe(most, gs, fixed_numel)} (the largest plan, excluded)")

    def smallest_measure(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                         candidates: Mapping[str, Iterable[int]],
                         act_candidates: Mapping[str, Iterable[int]] | None = None) -> float:
        """The budget's measure of the smallest plan: every group at its lowest candidate, every
        searched layer input at its lowest; a layer whose groups may all be pruned (0 bits) keeps
        one group at its cheapest other candidate."""
        act_candidates = act_candidates or {}

        def cheapest(n: str, allow_zero: bool = True) -> int:
            act = min(act_candidates.get(groups[n].layer, [ACTIVATION_BITS]))
            return min(self.group_cost(groups[n], b, act) for b in candidates[n] if allow_zero or b != 0)

        least = sum(cheapest(n) for n in groups) + self.fixed_cost(fixed_numel)
        for names in groups_by_param(groups).values():
            if all(0 in candidates[n] for n in names):
                least += min(cheapest(n, allow_zero=False) - cheapest(n) for n in names)
        return least

    def largest_measure(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                        candidates: Mapping[str, Iterable[int]],
                        act_candidates: Mapping[str, Iterable[int]] | None = None) -> float:
        """The budget's measure of the largest plan: every group and searched layer input at its
        largest candidate."""
        act_candidates = act_candidates or {}
        return sum(max(self.group_cost(g, b, max(act_candidates.get(g.layer, [ACTIVATION_BITS])))
                       for b in candidates[n]) for n, g in groups.items()) + self.fixed_cost(fixed_numel)

    def describe(self, measure: float, groups: list[GroupPlan], fixed_numel: int) -> str:
        if self.kind == "avg_bits":
            return f"avg_bits={measure / sum(g.numel for g in groups):.4f}"
        if self.kind == "compression":
            fp32 = FLOAT_BITS * (sum(g.numel for g in groups) + fixed_numel)
            return f"compression={fp32 / measure:.4f}"
        if self.kind == "bitops":
            return f"bitops={measure:.6g}"
        return f"size_mb={measure / 8e6:.6f}"
