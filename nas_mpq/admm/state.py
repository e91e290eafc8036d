"""The ADMM state of a finalize run: per group G (the projection) and U (the scaled dual), and rho.

    W-step: minimise f(W) + rho/2 sum_g ||W_g - G_g + U_g||^2      (`penalty` adds the second term
            to the loss, or `proximal_` applies it in closed form after each step on f)
    G-step: G_g = proj_{a T_b}(W_g + U_g)                          (alternating scale fit)
    U-step: U_g = U_g + W_g - G_g
rho grows by `rho_growth` per iteration ("multiplicative") or follows the residuals ("balance":
x10 when the primal residual dominates, /10 when the dual one does, with U rescaled). Everything is
a buffer, so the state is in the module's state_dict and a checkpoint resumes exactly.

Example:
    >>> admm = ADMMState(net, plan)              # G = proj(W), U = 0
    >>> loss = task_loss + admm.penalty()
    >>> admm.iterate()                           # every M minibatches
    >>> admm.finish_()                           # W := G
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..plan import GroupPlan, PrecisionPlan
from ..quant.functional import FIT_ITERS
from .tables import project

RHO_SCHEDULES = ("multiplicative", "balance")


def group_weight(model: nn.Module, g: GroupPlan) -> torch.Tensor:
    """The weights of group `g` in `model` (a view: a slice of its parameter)."""
    return g.view(model.get_parameter(g.param))


class ADMMState(nn.Module):
    """G, U per constrained group of `plan` (32-bit groups are unconstrained), and rho. Each
    group's table has one scale, or one per row where the plan's group is per_channel."""

    def __init__(self, model: nn.Module, plan: PrecisionPlan, rho: float = 1e-3, rho_growth: float = 1.1,
                 schedule: str = "multiplicative", proj_iters: int = FIT_ITERS,
                 tol: float = 1e-3) -> None:
        super().__init__()
        if schedule not in RHO_SCHEDULES:
            raise ValueError(f"unknown rho schedule {schedule!r}; valid: {list(RHO_SCHEDULES)}")
        if rho <= 0 or rho_growth < 1:
            raise ValueError(f"need rho > 0 and rho_growth >= 1, got rho={rho}, rho_growth={rho_growth}")
        self.model = [model]  # not a submodule: the state must not own the network's parameters
        self.groups = {n: g for n, g in plan.groups.items() if g.bits != 32}
        self.keys = {n: f"g{i}" for i, n in enumerate(self.groups)}
        self.schedule, self.rho_growth = schedule, rho_growth
        self.proj_iters, self.tol = proj_iters, tol
        self.register_buffer("rho", torch.tensor(float(rho)))
        self.register_buffer("iteration", torch.tensor(0))
        for name, g in self.groups.items():
            w = group_weight(model, g).detach()
            codes, scale = project(w, g.bits, g.per_channel, proj_iters)
            self.register_buffer(f"{self.keys[name]}_codes", codes)
            self.register_buffer(f"{self.keys[name]}_scale", scale.clone())
            self.register_buffer(f"{self.keys[name]}_U", torch.zeros_like(w))

    def codes(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer codes, scale) of G for group `name`."""
        return getattr(self, f"{self.keys[name]}_codes"), getattr(self, f"{self.keys[name]}_scale")

    def G(self, name: str) -> torch.Tensor:
        codes, scale = self.codes(name)
        return codes * scale

    def U(self, name: str) -> torch.Tensor:
        return getattr(self, f"{self.keys[name]}_U")

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: group_weight(self.model[0], g) for n, g in self.groups.items()}

    def penalty(self) -> torch.Tensor:
        """rho/2 sum_g ||W_g - G_g + U_g||^2 (differentiable in W)."""
        terms = [((w - self.G(n) + self.U(n)) ** 2).sum() for n, w in self._weights().items()]
        return 0.5 * self.rho * torch.stack(terms).sum() if terms else self.rho * 0.0

    @torch.no_grad()
    def proximal_(self, step: float) -> None:
        """The penalty's part of the W-step in closed form (proximal gradient): after a step of
        size `step` on f alone, W := argmin_V ||V - W||^2 / (2 step) + rho/2 ||V - G + U||^2
        = (W + step rho (G - U)) / (1 + step rho). Stable for any rho, where a gradient step on
        the penalty overshoots once step x rho > 2."""
        k = step * float(self.rho)
        for n, w in self._weights().items():
            w.add_(self.G(n) - self.U(n), alpha=k).div_(1.0 + k)

    @torch.no_grad()
    def residual(self) -> float:
        """||W - G|| / ||W|| over the constrained groups."""
        num = den = 0.0
        for n, w in self._weights().items():
            num += float(((w - self.G(n)) ** 2).sum())
            den += float((w ** 2).sum())
        return math.sqrt(num / den) if den > 0 else 0.0

    @torch.no_grad()
    def iterate(self) -> dict[str, float]:
        """One G-step, U-step and rho update; returns the residuals before the rho update."""
        primal = dual = norm = 0.0
        for n, w in self._weights().items():
            g = self.groups[n]
            codes, scale = project(w + self.U(n), g.bits, g.per_channel, self.proj_iters)
            new_g = codes * scale
            dual += float(((new_g - self.G(n)) ** 2).sum())
            old_codes, old_scale = self.codes(n)
            old_codes.copy_(codes)
            old_scale.copy_(scale)
            self.U(n).add_(w - new_g)
            primal += float(((w - new_g) ** 2).sum())
            norm += float((w ** 2).sum())
        primal, dual = math.sqrt(primal), float(self.rho) * math.sqrt(dual)
        self._update_rho(primal, dual)
        self.iteration += 1
        return {"primal": primal, "dual": dual, "residual": primal / math.sqrt(norm) if norm else 0.0}

    def _update_rho(self, primal: float, dual: float) -> None:
        if self.schedule == "multiplicative":
            self.rho.mul_(self.rho_growth)
            factor = 1.0 / self.rho_growth
        elif primal > 10.0 * dual:
            self.rho.mul_(10.0)
            factor = 0.1
        elif dual > 10.0 * primal:
            self.rho.div_(10.0)
            factor = 10.0
        else:
            return
        for n in self.groups:  # the scaled dual U = y / rho follows rho
            self.U(n).mul_(factor)

    def converged(self) -> bool:
        return self.residual() < self.tol

    @torch.no_grad()
    def finish_(self) -> None:
        """W := G: every constrained weight is then exactly on its table."""
        for n, w in self._weights().items():
            w.copy_(self.G(n))
