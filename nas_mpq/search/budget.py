"""Budget-aware size regularisation (ALGORITHMS.md section 4), differentiable in theta.

The expectation uses pi = softmax(theta), not the noisy sample: E[S] = sum_g sum_k pi_gk a_gk plus
the fixed part, with a_gk the budget's measure of group g at b_k (code bits; plus scale bits for
size budgets). Under a BitOps budget a group whose layer input is searched counts
macs_g E[b_g] E[a_l] (independent choices: the expectation of the product is the product).

Example:
    >>> reg = BudgetRegularizer(supernet, Budget("avg_bits", 2.0))
    >>> loss = task_loss + lam * reg.penalty()
"""
from __future__ import annotations

import torch
from torch import nn

from ..plan import ACTIVATION_BITS, Budget
from .activations import activation_groups
from .surgery import fixed_numel, search_groups

PENALTIES = ("one_sided", "two_sided")


class BudgetRegularizer:
    """Precomputes each group's cost vector once; `penalty()` is cheap enough for every step."""

    def __init__(self, model: nn.Module, budget: Budget, kind: str = "one_sided") -> None:
        if kind not in PENALTIES:
            raise ValueError(f"unknown budget penalty {kind!r}; valid: {list(PENALTIES)}")
        groups = search_groups(model)
        fixed = fixed_numel(model)
        self.budget, self.kind = budget, kind
        self.choices = [g.choice for g in groups]
        self.costs = [torch.tensor([float(budget.group_cost(g.plan, b)) for b in g.choice.candidates])
                      for g in groups]
        inputs = {a.name: a.choice for a in activation_groups(model)} if budget.kind == "bitops" else {}
        # (group index, its layer's input choice, that choice's bits / 32): rescales the group's cost
        self.linked = [(i, inputs[g.plan.layer], torch.tensor([b / ACTIVATION_BITS for b in inputs[g.plan.layer].candidates]))
                       for i, g in enumerate(groups) if g.plan.layer in inputs]
        self.bits = [torch.tensor([float(b) for b in g.choice.candidates]) for g in groups]
        self.numel = [g.plan.numel for g in groups]
        self.fixed = float(budget.fixed_cost(fixed))
        self.capacity = budget.capacity([g.plan for g in groups], fixed)

    def expected(self) -> torch.Tensor:
        """E[measure] under the relaxation."""
        terms = [(c.probs() * cost.to(c.probs().device)).sum() for c, cost in zip(self.choices, self.costs)]
        for i, act, scale in self.linked:
            terms[i] = terms[i] * (act.probs() * scale.to(act.probs().device)).sum()
        return torch.stack(terms).sum() + self.fixed

    def penalty(self) -> torch.Tensor:
        """`max(0, E/S_T - 1)^2` (one_sided) or `(E/S_T - 1)^2` (two_sided): normalised, so a
        lambda of about 1-10 works whatever the model size."""
        ratio = self.expected() / self.capacity - 1.0
        return (ratio.clamp_min(0.0) if self.kind == "one_sided" else ratio) ** 2

    def expected_avg_bits(self) -> torch.Tensor:
        """sum_g n_g sum_k pi_gk b_k / sum_g n_g."""
        terms = [n * (c.probs() * b.to(c.probs().device)).sum()
                 for c, b, n in zip(self.choices, self.bits, self.numel)]
        return torch.stack(terms).sum() / sum(self.numel)

    def mean_entropy(self) -> torch.Tensor:
        """Mean entropy of pi over the searched groups (nats); falls as the search commits."""
        ents = [-(p * p.clamp_min(1e-12).log()).sum()
                for p in (c.probs() for c in self.choices if c.theta is not None)]
        return torch.stack(ents).mean() if ents else torch.tensor(0.0)
