"""Budget-aware size regularisation (ALGORITHMS.md section 4), differentiable in theta.

The expectation uses pi = softmax(theta), not the noisy sample: E[S] = sum_g sum_k pi_gk a_gk plus
the fixed part, with a_gk the budget's measure of group g at b_k (code bits; plus scale bits for
size budgets). Under a BitOps budget a group whose layer input is searched counts
macs_g E[b_g] E[a_l] (independent choices: the expectation of the product is the product).

Kinds: "lagrange" (default) adds `mu (E/S_T - 1)` with a multiplier mu that the caller raises by
dual ascent while the plan is over budget and lowers once it is inside (`update_dual`);
"one_sided" and "two_sided" are the squared penalties `lam max(0, E/S_T - 1)^2`, `lam (E/S_T - 1)^2`.

Example:
    >>> reg = BudgetRegularizer(supernet, Budget("avg_bits", 2.0))
    >>> reg.init_prior_()                            # theta_gk = -beta b_k, E[size] = budget
    >>> loss = task_loss + reg.penalty(mu)
    >>> mu = reg.update_dual(mu, lr=0.05)
"""
from __future__ import annotations

import torch
from torch import nn

from ..plan import ACTIVATION_BITS, Budget
from .activations import activation_groups
from .choice import MixedPrecisionChoice
from .groups import fixed_numel, search_groups

PENALTIES = ("lagrange", "one_sided", "two_sided")


class BudgetRegularizer:
    """Precomputes each group's cost vector once; `penalty()` is cheap enough for every step."""

    def __init__(self, model: nn.Module, budget: Budget, kind: str = "lagrange") -> None:
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
        self.inputs = list(inputs.values())
        self.bits = [torch.tensor([float(b) for b in g.choice.candidates]) for g in groups]
        self.numel = [g.plan.numel for g in groups]
        self.fixed = float(budget.fixed_cost(fixed))
        self.capacity = budget.capacity([g.plan for g in groups], fixed)
        self._device = torch.device("cpu")

    def _follow_choices(self) -> None:
        """Keep the cost, bit and scale vectors on the choices' device (moved when it changes), so
        no step copies them."""
        device = next((c.theta.device for c in self.choices + self.inputs if c.theta is not None), self._device)
        if device != self._device:
            self.costs = [c.to(device) for c in self.costs]
            self.bits = [b.to(device) for b in self.bits]
            self.linked = [(i, act, scale.to(device)) for i, act, scale in self.linked]
            self._device = device

    def expected(self) -> torch.Tensor:
        """E[measure] under the relaxation."""
        self._follow_choices()
        terms = [_expectation(c, cost) for c, cost in zip(self.choices, self.costs)]
        for i, act, scale in self.linked:
            terms[i] = terms[i] * _expectation(act, scale)
        return torch.stack(terms).sum() + self.fixed

    def argmax_measure(self) -> torch.Tensor:
        """The measure of the argmax plan (what the plan would be without repair), a float64
        scalar on the choices' device: computed there, without reading any choice to the host."""
        self._follow_choices()
        terms = [_at_argmax(c, cost) for c, cost in zip(self.choices, self.costs)]
        for i, act, scale in self.linked:
            terms[i] = terms[i] * _at_argmax(act, scale)
        return torch.stack(terms).sum() + self.fixed

    def ratio(self) -> torch.Tensor:
        """E[measure] / S_T: 1 is exactly on budget."""
        return self.expected() / self.capacity

    def penalty(self, weight: float | torch.Tensor = 1.0, quadratic: float = 0.0) -> torch.Tensor:
        """lagrange: `weight g + quadratic / 2 g^2`, g = E/S_T - 1, with weight the multiplier mu
        (an augmented Lagrangian: the quadratic term damps the multiplier's oscillation);
        one_sided: `weight max(0, g)^2`; two_sided: `weight g^2`. Normalised by the budget, so
        the same weights work whatever the model size."""
        gap = self.ratio() - 1.0
        if self.kind == "lagrange":
            return weight * gap + 0.5 * quadratic * gap ** 2
        return weight * (gap.clamp_min(0.0) if self.kind == "one_sided" else gap) ** 2

    @torch.no_grad()
    def dual_gap(self, argmax_ratio: float | torch.Tensor | None = None, on_argmax: bool = False) -> torch.Tensor:
        """r - 1, a float64 scalar on the choices' device: r is the larger of E[measure] and the
        argmax plan's measure over S_T (`argmax_ratio`, computed when not given), or with
        `on_argmax` (the search's last phase) the argmax plan's alone, both ways."""
        if argmax_ratio is None:
            argmax_ratio = self.argmax_measure() / self.capacity
        r = torch.as_tensor(argmax_ratio, dtype=torch.float64)
        if not on_argmax:
            r = torch.maximum(self.ratio().double(), r)
        return r - 1.0

    def update_dual(self, mu: float | torch.Tensor, lr: float, argmax_ratio: float | torch.Tensor | None = None,
                    on_argmax: bool = False) -> torch.Tensor:
        """One dual-ascent step `mu + lr (r - 1)` (`dual_gap`), a float64 scalar: the multiplier
        grows while the plan or its expectation is over budget and falls once both are inside,
        below 0 while they stay under it (then the term pays for bits); with `on_argmax` it moves
        until the plan the search returns fills the budget, not only its expectation. Tensors
        stay on their device."""
        return mu + lr * self.dual_gap(argmax_ratio, on_argmax)

    @torch.no_grad()
    def init_prior_(self, fill: float = 1.0, base: list[torch.Tensor] | None = None) -> float:
        """theta = base - beta x price for every searched choice, beta >= 0 solved by bisection
        so that E[measure] = fill x budget (beta = 0 when base is already inside it). Without
        `base`, theta_gk = -beta b_k (weights and inputs): the search starts feasible and the loss
        decides where bits go; without it E[bits] starts at mean(B) (9.4 for {1, 2, 4, 8, 32}) and
        the budget term drowns the loss. With `base` (one logit vector per weight group, e.g. from
        a sensitivity), the price is each group's cost over the mean cost, so theta is the soft
        Lagrangian relaxation of the knapsack `min sum_g base cost + beta size`: its argmax is
        close to the sensitivity's own plan at the budget. Returns beta."""
        if base is None:
            choices = [c for c in self.choices + self.inputs if c.theta is not None]
            offsets = [torch.zeros(len(c.candidates)) for c in choices]
            prices = [torch.tensor([float(b) for b in c.candidates]) for c in choices]
        else:
            searched = [i for i, c in enumerate(self.choices) if c.theta is not None]
            choices = [self.choices[i] for i in searched]
            scale = sum(float(self.costs[i].mean()) for i in searched) / max(len(searched), 1)
            offsets = [b.to(torch.float32) for b in base]
            prices = [self.costs[i].cpu() / scale for i in searched]
        target = fill * self.capacity

        def set_beta(beta: float) -> float:
            for c, offset, price in zip(choices, offsets, prices):
                c.theta.copy_(offset - beta * price)
            return float(self.expected())

        lo, hi = 0.0, 1.0
        if set_beta(lo) <= target:
            return lo
        while set_beta(hi) > target and hi < 1e6:
            lo, hi = hi, hi * 2.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if set_beta(mid) > target else (lo, mid)
        set_beta(hi)
        return hi

    def expected_avg_bits(self) -> torch.Tensor:
        """sum_g n_g sum_k pi_gk b_k / sum_g n_g."""
        self._follow_choices()
        terms = [n * _expectation(c, b) for c, b, n in zip(self.choices, self.bits, self.numel)]
        return torch.stack(terms).sum() / sum(self.numel)

    def mean_entropy(self) -> torch.Tensor:
        """Mean entropy of pi over the searched groups (nats); falls as the search commits."""
        ents = [_entropy(c.probs()) for c in self.choices if c.theta is not None]
        return torch.stack(ents).mean() if ents else torch.tensor(0.0)

    def size_weighted_entropy(self) -> torch.Tensor:
        """sum_g n_g H(pi_g) / sum_g n_g: the sharpening term. A large group's undecided choice
        moves the argmax plan's size most, so it is pushed to decide hardest."""
        pairs = [(n, _entropy(c.probs())) for c, n in zip(self.choices, self.numel) if c.theta is not None]
        if not pairs:
            return torch.tensor(0.0)
        return torch.stack([n * h for n, h in pairs]).sum() / sum(n for n, _ in pairs)


def _expectation(choice: MixedPrecisionChoice, values: torch.Tensor) -> torch.Tensor:
    """sum_k pi_k values_k (the one value of a choice without logits)."""
    return values[0] if choice.theta is None else (choice.probs() * values).sum()


def _at_argmax(choice: MixedPrecisionChoice, values: torch.Tensor) -> torch.Tensor:
    """values at the choice's argmax, as float64, selected on the device."""
    if choice.theta is None:
        return values[0].double()
    return values.index_select(0, choice.theta.detach().argmax().reshape(1))[0].double()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum()
