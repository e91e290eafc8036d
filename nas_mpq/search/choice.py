"""The mixed-precision choice of one weight group (ALGORITHMS.md section 2).

A choice holds built candidate quantizers and logits theta; `composite(w)` returns
`sum_k y_k Q_k(w)` so the layer runs one ordinary matmul with it. y comes from a GumbelSampler
(training), or is the one-hot argmax of theta when no sample was drawn (evaluation).

Example:
    >>> w = torch.randn(16, 8)
    >>> choice = MixedPrecisionChoice([make_quantizer(b, w) for b in (1, 2, 4, 8, 32)])
    >>> choice.sample = GumbelSampler(tau=1.0).sample(choice.theta)
    >>> w_tilde = choice.composite(w)
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..quant import QuantizerSettings, WeightQuantizer
from ..quant.functional import WeightStats


class CompositeWeight(torch.autograd.Function):
    """`sum_k y_k Q_k(w)` without keeping K quantized copies for backward: backward recomputes each
    Q_k(w) once for dL/dy_k = <G, Q_k(w)>. Quantizers with the identity STE and no parameters
    contribute `y_k G` to dL/dw directly; the others (LSQ, pruning) are re-run under autograd so
    their own gradients (and those of their parameters, passed as `params`) come out exactly."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, y: torch.Tensor, quantizers: Sequence[WeightQuantizer],
                stats: WeightStats | None, *params: torch.Tensor) -> torch.Tensor:
        out = None
        for k, (q, y_k) in enumerate(zip(quantizers, y.tolist())):
            if y_k == 0.0:  # a hard or one-hot y needs one quantization, not K
                continue
            if out is None:
                out = q.value(w, stats) * y[k]
            else:
                out.addcmul_(q.value(w, stats), y[k])
        out = torch.zeros_like(w) if out is None else out
        ctx.quantizers, ctx.stats = quantizers, stats
        ctx.save_for_backward(w, y)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        w, y = ctx.saved_tensors
        quantizers: Sequence[WeightQuantizer] = ctx.quantizers
        params = [p for q in quantizers for p in q.parameters()]
        grad_params: dict[int, torch.Tensor] = {}
        grad_y = torch.empty_like(y)
        identity = [k for k, q in enumerate(quantizers) if q.identity_grad]
        grad_w = grad * y[identity].sum() if ctx.needs_input_grad[0] else None
        flat_grad = grad.reshape(-1)
        stats = ctx.stats
        for k, q in enumerate(quantizers):
            if q.identity_grad:
                grad_y[k] = torch.dot(flat_grad, q.value(w, stats).reshape(-1))
                continue
            with torch.enable_grad():
                w_leaf = w.detach().requires_grad_(True)
                own = [p for p in q.parameters() if p.requires_grad]
                q_w = q(w_leaf)
                grads = torch.autograd.grad(q_w, [w_leaf, *own], grad * y[k], allow_unused=True)
            grad_y[k] = torch.dot(flat_grad, q_w.detach().reshape(-1))
            if grad_w is not None and grads[0] is not None:
                grad_w = grad_w + grads[0]
            for p, g in zip(own, grads[1:]):
                if g is not None:
                    grad_params[id(p)] = g
        return (grad_w, grad_y, None, None, *[grad_params.get(id(p)) for p in params])


class MixedPrecisionChoice(nn.Module):
    """A categorical choice over candidate quantizers for one weight group.

    With a single candidate it is a fixed-precision quantizer (no theta): that is how a plan is
    applied for QAT, with the same layers as the search. `settings` records how a weight group's
    quantizers were built (the plan keeps them); None for other choices (layer inputs)."""

    def __init__(self, quantizers: Sequence[WeightQuantizer], settings: QuantizerSettings | None = None) -> None:
        super().__init__()
        if not quantizers:
            raise ValueError("a choice needs at least one candidate quantizer")
        bits = [q.bits for q in quantizers]
        if len(set(bits)) != len(bits):
            raise ValueError(f"candidate bit-widths must be distinct, got {bits}")
        self.quantizers = nn.ModuleList(quantizers)
        self.candidates: list[int] = bits
        self.settings = settings
        self.theta = nn.Parameter(torch.zeros(len(bits))) if len(bits) > 1 else None
        self.sample: torch.Tensor | None = None
        self._stats: tuple[tuple, WeightStats | None] | None = None

    def shared_stats(self, w: torch.Tensor) -> WeightStats | None:
        """The fitted scales of `w` shared by every candidate (None when they disagree on
        per_channel or none uses them), kept until `w` changes (its version counter) or
        `clear_stats` is called: the search step on the choices and the weight step that follows
        it fit each weight once, not twice."""
        modes = {q.per_channel for q in self.quantizers}
        if not any(q.uses_stats for q in self.quantizers) or len(modes) != 1:
            return None
        if w.is_inference():  # no version counter to key on: fit afresh
            return WeightStats(w, modes.pop())
        key = (w.data_ptr(), w._version, tuple(w.shape), tuple(w.stride()), w.dtype, w.device)
        if self._stats is None or self._stats[0] != key:
            self._stats = (key, WeightStats(w, modes.pop()))
        return self._stats[1]

    def clear_stats(self) -> None:
        """Forget the kept scales. Changes that bypass the version counter (fused optimizers,
        writes through `.data`) do not invalidate them, so a training loop clears them after
        every weight step."""
        self._stats = None

    def probs(self) -> torch.Tensor:
        """pi = softmax(theta) (ones for a single candidate)."""
        if self.theta is None:
            return torch.ones(1)
        return torch.softmax(self.theta, dim=0)

    def argmax_bits(self) -> int:
        return self.candidates[0] if self.theta is None else self.candidates[int(self.theta.argmax())]

    def weights(self) -> torch.Tensor:
        """y for this forward: the drawn sample, else the one-hot argmax (no noise)."""
        if self.theta is None:
            return torch.ones(1)
        if self.sample is not None:
            return self.sample
        return nn.functional.one_hot(self.theta.argmax(), len(self.candidates)).to(self.theta.dtype)

    @property
    def elementwise(self) -> bool:
        """True when every candidate maps each weight on its own given the shared statistics
        (identity STE, no parameters), so a subset of rows can be quantized alone."""
        return all(q.identity_grad for q in self.quantizers)

    def composite(self, w: torch.Tensor, stats: WeightStats | None = None) -> torch.Tensor:
        """`sum_k y_k Q_k(w)`. `stats` (WeightStats of the whole weight) lets `w` be a subset of
        its rows: the result equals those rows of the composite of the whole weight."""
        if self.theta is None and stats is None:
            return self.quantizers[0](w)
        y = self.weights().to(w.device, w.dtype)
        params = [p for q in self.quantizers for p in q.parameters()]
        stats = stats if stats is not None else self.shared_stats(w)
        return CompositeWeight.apply(w, y, list(self.quantizers), stats, *params)

    def extra_repr(self) -> str:
        return f"candidates={self.candidates}"


class GumbelSampler:
    """Draws `y = softmax((theta + G) / tau)` with Gumbel noise G from its own torch.Generator, so a
    run is reproducible and a checkpoint can hold the generator state; `hard` gives the
    straight-through one-hot sample."""

    def __init__(self, tau: float = 5.0, hard: bool = False, seed: int = 0) -> None:
        if tau <= 0:
            raise ValueError(f"temperature tau must be positive, got {tau}")
        self.tau = float(tau)
        self.hard = hard
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, theta: torch.Tensor) -> torch.Tensor:
        u = torch.rand(theta.shape, generator=self.generator).clamp_(1e-10, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(u)).to(theta.device, theta.dtype)
        y = torch.softmax((theta + gumbel) / self.tau, dim=-1)
        if not self.hard:
            return y
        one_hot = nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
        return one_hot - y.detach() + y

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "hard": self.hard, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = float(state["tau"])
        self.hard = bool(state["hard"])
        self.generator.set_state(state["generator"])
