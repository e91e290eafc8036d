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

from ..quant import QuantizerSettings, WeightQuantizer, fused
from ..quant.functional import FIT_BATCH_ELEMENTS, FIT_SAMPLE, WeightStats, fit_pass_elements
from .sampler import one_hot


class CompositeWeight(torch.autograd.Function):
    """`sum_k y_k Q_k(w)` over the candidates in `active`, the indices whose y_k may be non-zero
    (every candidate for a soft sample; the picked one for a one-hot y), which the caller knows
    without reading y from the device. The candidates are quantized one after the other into one
    buffer: the forward allocates two weight-sized tensors (the result and that buffer), and so
    does the backward, whatever the number of candidates (one more for blocks along columns, whose
    gradient is copied once into block order). A small weight's soft sample instead
    stacks every candidate's value and keeps the stack for the backward (`STACKED_ELEMENTS`).
    y of shape (K,) mixes the candidates of one group; y of shape (K, N, 1, ...) those of N groups
    whose weights are the N equal blocks `w[n]` (`block_composite`), each with its own y[:, n].

    `fuse` (the choices' `fuse`, set by `fuse_candidates`): where `_fuses` (every candidate
    active and computed by `quant.fused`, a float32/float64 weight), the forward mixes them in
    one compiled pass and the backward computes every dL/dy_k in another.

    Backward does not keep K quantized copies: it recomputes each Q_k(w) once for
    dL/dy_k = <G, Q_k(w)>, and none where y needs no gradient (a pinned plan, the argmax).
    Quantizers with the identity STE and no parameters contribute `y_k G` to dL/dw directly; the
    others (LSQ, pruning) are re-run under autograd so their own gradients
    (and those of their parameters, passed as `params`) come out exactly."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, y: torch.Tensor, active: Sequence[int],
                quantizers: Sequence[WeightQuantizer], stats: WeightStats | None, fuse: bool,
                *params: torch.Tensor) -> torch.Tensor:
        ctx.quantizers, ctx.stats, ctx.kinds = quantizers, stats, None
        if fuse and _fuses(w, active, quantizers):
            ctx.kinds = tuple(q.fused_kind for q in quantizers)
            ctx.scales = [q.fitted_scale(w, stats) for q in quantizers]
            ctx.save_for_backward(w, y)
            return fused.mix(w, y, ctx.scales, ctx.kinds)
        if _stacks(w, active, quantizers):
            values = torch.stack([q.value(w, stats) for q in quantizers])
            ctx.save_for_backward(w, y, values)
            out = torch.mul(values[0], y[0])  # summed in the buffered path's order: the same numbers
            for k in range(1, len(quantizers)):
                out.addcmul_(values[k], y[k])
            return out
        out = torch.empty_like(w)
        scratch = None
        for i, k in enumerate(active):
            if i == 0:
                torch.mul(quantizers[k].value(w, stats, out), y[k], out=out)
                continue
            scratch = torch.empty_like(w) if scratch is None else scratch
            out.addcmul_(quantizers[k].value(w, stats, scratch), y[k])
        ctx.save_for_backward(w, y)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        need_y = ctx.needs_input_grad[1]  # not for a pinned plan or the argmax (y a constant one-hot)
        if ctx.kinds is not None:  # the fused forward: every candidate with the identity STE
            w, y = ctx.saved_tensors
            grad_w = grad * y.sum(0) if ctx.needs_input_grad[0] else None
            blocks = y.shape[1] if y.dim() > 1 else 0
            grad_y = fused.inner(w, grad, ctx.scales, ctx.kinds, blocks).reshape(y.shape) if need_y else None
            return (grad_w, grad_y, None, None, None, None)
        if len(ctx.saved_tensors) == 3:  # the stacked forward kept every candidate's value
            w, y, values = ctx.saved_tensors
            grad_w = grad * y.sum(0) if ctx.needs_input_grad[0] else None
            if not need_y:
                return (grad_w, None, None, None, None, None)
            if y.dim() == 1:
                grad_y = values.reshape(len(y), -1) @ grad.reshape(-1)
            else:  # one number per candidate and block: (N, K, M) @ (N, M, 1)
                k, n = y.shape[:2]
                grad_y = torch.bmm(values.reshape(k, n, -1).transpose(0, 1), grad.reshape(n, -1, 1)).reshape(n, k).t()
                grad_y = grad_y.reshape(y.shape)
            return (grad_w, grad_y, None, None, None, None)
        w, y = ctx.saved_tensors
        quantizers: Sequence[WeightQuantizer] = ctx.quantizers
        params = [p for q in quantizers for p in q.parameters()]
        grad_params: dict[int, torch.Tensor] = {}
        grad_y = torch.empty_like(y)
        identity = [k for k, q in enumerate(quantizers) if q.identity_grad]
        grad_w = grad * _sum_at(y, identity) if ctx.needs_input_grad[0] else None
        stats = ctx.stats
        flat_grad = grad.reshape(-1) if y.dim() == 1 else grad.reshape(y.shape[1], -1)
        scratch = torch.empty_like(w) if identity else None
        for k, q in enumerate(quantizers):
            if q.identity_grad:
                if need_y:  # every candidate's value, for dL/dy_k
                    grad_y[k] = _inner(flat_grad, q.value(w, stats, scratch))
                continue
            with torch.enable_grad():
                w_leaf = w.detach().requires_grad_(True)
                own = [p for p in q.parameters() if p.requires_grad]
                q_w = q(w_leaf)
                grads = torch.autograd.grad(q_w, [w_leaf, *own], grad * y[k], allow_unused=True)
            if need_y:
                grad_y[k] = _inner(flat_grad, q_w.detach())
            if grad_w is not None and grads[0] is not None:
                grad_w = grad_w + grads[0]
            for p, g in zip(own, grads[1:]):
                if g is not None:
                    grad_params[id(p)] = g
        return (grad_w, grad_y if need_y else None, None, None, None, None,
                *[grad_params.get(id(p)) for p in params])


STACKED_ELEMENTS = 1 << 18
"""A soft sample of a weight with at most this many elements over all its candidates (1 MiB in
float32) quantizes every candidate into one stacked tensor, kept for the backward: small weights
(a CNN's convolutions) cost the per-operation overhead of each candidate's value once, not twice."""


def _stacks(w: torch.Tensor, active: Sequence[int], quantizers: Sequence[WeightQuantizer]) -> bool:
    """Whether CompositeWeight takes its stacked path: every candidate active (a soft sample), all
    with the identity STE and no parameters, and the stacked values within STACKED_ELEMENTS."""
    return (1 < len(active) == len(quantizers) and len(quantizers) * w.numel() <= STACKED_ELEMENTS
            and all(_plain(q) for q in quantizers))


def _plain(q: WeightQuantizer) -> bool:
    """The identity STE and no parameters: the candidate's gradient to w is y_k G, none to itself."""
    return q.identity_grad and next(q.parameters(), None) is None


def _fuses(w: torch.Tensor, active: Sequence[int], quantizers: Sequence[WeightQuantizer]) -> bool:
    """Whether CompositeWeight can take the one-pass path (`fuse`): every candidate active (a soft
    sample), each computed by `quant.fused` (`fused_kind`: the identity STE, no parameters), and a
    float32 or float64 weight."""
    return (1 < len(active) == len(quantizers) and w.dtype in (torch.float32, torch.float64)
            and all(q.fused_kind is not None and _plain(q) for q in quantizers))


def _sum_at(y: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """`y[indices].sum(0)` without an index tensor (which would be copied to y's device)."""
    return torch.stack([y[k] for k in indices]).sum(0) if indices else torch.zeros_like(y[0])


def _inner(flat_grad: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """<grad, value> given the gradient flattened to (elements,) or (blocks, elements): one number,
    or one per block (as (blocks, 1), which fills a candidate's y of shape (blocks, 1, ...))."""
    if flat_grad.dim() == 1:
        return torch.dot(flat_grad, value.reshape(-1))
    n = flat_grad.shape[0]
    return torch.bmm(flat_grad.view(n, 1, -1), value.reshape(n, -1, 1)).view(n, *(1,) * (value.dim() - 1))


KEPT_STATS = 2
"""Weights whose fitted scales a choice keeps at once: the blocks of a soft step and the group of
a pinned one (`weights_at: plan` alternates them every step)."""


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
        self.pinned: int | None = None  # the candidate evaluation forwards use instead of the argmax
        self._stats: dict[tuple, tuple[int, WeightStats]] = {}  # by where the weight lies: (version, stats)
        self.hold_stats = False  # keep the fitted scales while the weight changes (refit_every)
        self.fuse = False  # a soft sample's candidates in one compiled pass (`fuse_candidates`)

    @property
    def sample(self) -> torch.Tensor | None:
        """y drawn for this forward; None: the one-hot argmax. Assigning a tensor forgets which
        candidate a hard sample picked (`set_sample` records it), so every candidate is computed."""
        return self._sample

    @sample.setter
    def sample(self, y: torch.Tensor | None) -> None:
        self.set_sample(y)

    def set_sample(self, y: torch.Tensor | None, index: int | None = None) -> None:
        """Use y in the next forwards; `index`: y is one-hot on that candidate (a hard sample),
        so only that candidate is quantized. y None with an index: the argmax, read for this
        forward (`record_argmax_`)."""
        self._sample, self._sample_index = y, index

    def shared_stats(self, w: torch.Tensor, per_block: bool = False) -> WeightStats | None:
        """The fitted scales of `w` shared by every candidate (None when they disagree on
        per_channel or none uses them), kept until `w` changes (its version counter) or
        `clear_stats` is called: the search step on the choices and the weight step that follows
        it fit each weight once, not twice. A soft step's blocks and a pinned step's groups are
        kept side by side (the two weights used last). The widths of this forward's candidates
        are fitted together in one pass. `per_block`: `w` holds the equal blocks of this group and
        its siblings (`block_composite`), one scale each. With `hold_stats` set the scales are
        kept while the weight changes too, until `clear_stats` (the search's `refit_every`), and
        every candidate's width is fitted at once, so a hard sample of another width fits nothing.
        A temporary `w` (an embedding's looked-up rows: neither a parameter nor a view of one)
        is fitted afresh, never kept: another batch's rows could take its place in memory."""
        modes = {q.per_channel for q in self.quantizers}
        if not any(q.uses_stats for q in self.quantizers) or len(modes) != 1:
            return None
        every = range(len(self.quantizers)) if self.hold_stats else self.active_candidates()
        widths = [self.quantizers[k].bits for k in every if self.quantizers[k].uses_stats]
        if w.is_inference() or not isinstance(w if w._base is None else w._base, nn.Parameter):
            return WeightStats(w, modes.pop(), widths, per_block)
        place = (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype, w.device, per_block)
        kept = self._stats.pop(place, None)
        if kept is None or (kept[0] != w._version and not self.hold_stats):
            kept = (w._version, WeightStats(w, modes.pop(), widths, per_block))
        self._stats[place] = kept  # the last used goes last, the first is forgotten first
        while len(self._stats) > KEPT_STATS:
            del self._stats[next(iter(self._stats))]
        return kept[1]

    def clear_stats(self) -> None:
        """Forget the kept scales. Changes that bypass the version counter (fused optimizers,
        writes through `.data`) do not invalidate them, so a training loop clears them after
        every weight step (or every `refit_every`-th, holding them in between)."""
        self._stats = {}

    def probs(self) -> torch.Tensor:
        """pi = softmax(theta) (ones for a single candidate)."""
        if self.theta is None:
            return torch.ones(1)
        return torch.softmax(self.theta, dim=0)

    def argmax_bits(self) -> int:
        return self.candidates[self.argmax_index()]

    def argmax_index(self) -> int:
        """argmax theta as a Python int: inside an evaluation forward the one `record_argmax_`
        read for it, else read now."""
        if self.theta is None:
            return 0
        if self._sample is None and self._sample_index is not None:
            return self._sample_index
        return int(self.theta.argmax())

    def weights(self) -> torch.Tensor:
        """y for this forward: the drawn sample, else the one-hot argmax (no noise)."""
        if self.theta is None:
            return torch.ones(1)
        if self.sample is not None:
            return self.sample
        return one_hot(self.argmax_index(), self.theta.detach())

    def active_candidates(self) -> tuple[int, ...]:
        """The candidates whose y_k may be non-zero in this forward, from what the host knows: the
        picked one of a hard sample or of the argmax, every one for any other sample."""
        if self.theta is None:
            return (0,)
        if self.sample is None:
            return (self.argmax_index(),)
        return tuple(range(len(self.candidates))) if self._sample_index is None else (self._sample_index,)

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
        y = w.new_ones(1) if self.theta is None else self.weights().to(w.device, w.dtype)
        params = [p for q in self.quantizers for p in q.parameters()]
        stats = stats if stats is not None else self.shared_stats(w)
        return CompositeWeight.apply(w, y, self.active_candidates(), list(self.quantizers), stats, self.fuse, *params)

    def extra_repr(self) -> str:
        return f"candidates={self.candidates}"


def hold_fitted_scales(net: nn.Module, hold: bool, forget: bool) -> None:
    """Set every choice's `hold_stats` in `net` to `hold` (keep its fitted scales while the weights
    change, or key them on the weights' version counters again), forgetting the kept scales first
    when `forget` (the search's `refit_every`)."""
    for module in net.modules():
        if isinstance(module, MixedPrecisionChoice):
            if forget:
                module.clear_stats()
            module.hold_stats = hold


def fuse_candidates(net: nn.Module, fuse: bool) -> None:
    """Set every choice's `fuse` in `net`: a soft sample's candidates quantized and mixed in one
    compiled pass (`quant.fused`: `torch.compile`, uncompiled where it is unavailable), and their
    dL/dy in one more. A group any of whose candidates `quant.fused` does not compute (16 bits, a
    learned step size, pruning) stays unfused whole. The first steps compile a few graphs (one per
    weight rank and layout; seconds to a minute on a CPU), so it pays over a search's thousands
    of steps, not a few."""
    for module in net.modules():
        if isinstance(module, MixedPrecisionChoice):
            module.fuse = fuse


def block_composite(blocks: torch.Tensor, choices: Sequence[MixedPrecisionChoice]) -> torch.Tensor | None:
    """`torch.stack([c.composite(blocks[n]) for n, c in enumerate(choices)])` in one pass: the
    groups whose weights are the equal blocks of one weight (an LSTM weight's gates, attention
    heads) get their scales fitted together and each candidate quantized once for all of them, so
    the operators a step dispatches (on a GPU they, not the arithmetic, bound a small model's step)
    do not grow with the number of groups (but for the 1-bit scale: one sum per block). The same
    numbers to the bit on the CPU (on CUDA up to the order of float sums). None (compute them group
    by group) unless every choice holds a soft sample over the same candidates, each with the
    identity STE, no parameters and per-tensor scales, and the blocks' scale fit stays within
    FIT_BATCH_ELEMENTS."""
    first = choices[0]
    every = tuple(range(len(first.candidates)))
    if not all(c.theta is not None and c.sample is not None and c.candidates == first.candidates
               and c.active_candidates() == every for c in choices):
        return None
    if not all(_plain(q) and not q.per_channel
               for c in choices for q in c.quantizers):
        return None
    if fit_pass_elements(len(choices) * min(blocks[0].numel(), FIT_SAMPLE)) > FIT_BATCH_ELEMENTS:
        return None  # the scale fit of every block at once would pass its memory bound
    y = torch.stack([c.sample for c in choices], dim=1).to(blocks.device, blocks.dtype)
    y = y.view(*y.shape, *(1,) * (blocks.dim() - 1))  # (K, N, 1, ...): broadcast over each block
    stats = first.shared_stats(blocks, per_block=True)
    return CompositeWeight.apply(blocks, y, every, list(first.quantizers), stats, first.fuse)


def record_argmax_(choices: Sequence[MixedPrecisionChoice]) -> None:
    """Read argmax theta of every choice (with logits) from the device in one transfer and record
    it as the choice's pick (`argmax_index`) until the next `set_sample` (a choice's `pinned`
    candidate instead of its argmax, where one is set): an evaluation forward
    then quantizes each group at its argmax alone without reading each choice's logits on its own.
    The model's forward hooks record it before and forget it after every evaluation forward, so
    a change of theta between forwards is always seen."""
    for c in choices:
        if c.theta is not None and c.pinned is not None:
            c.set_sample(None, c.pinned)
    searched = [c for c in choices if c.theta is not None and c.pinned is None]
    if not searched:
        return
    picks = torch.stack([c.theta.detach().argmax() for c in searched]).tolist()
    for c, k in zip(searched, picks):
        c.set_sample(None, k)
