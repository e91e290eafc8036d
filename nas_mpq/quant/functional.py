"""Weight quantization math on plain tensors (ALGORITHMS.md section 1).

Every function returns the de-quantized tensor (scale x integer code) so it can stand in for the
float weight. Gradients: `round_ste` and `identity_ste` are the straight-through estimators used
throughout; `lsq_quantize` carries the LSQ step-size gradient.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

VALID_BITS: tuple[int, ...] = (0, 1, 2, 3, 4, 8, 16, 32)
"""Every bit-width nas-mpq knows; 32 keeps full precision, 0 prunes the group."""


def check_bits(bits: int) -> int:
    """Return `bits` if it is a known bit-width, else raise ValueError naming the valid ones."""
    if isinstance(bits, bool) or int(bits) != bits or int(bits) not in VALID_BITS:
        raise ValueError(f"unknown bit-width {bits!r}; valid bit-widths are {list(VALID_BITS)}")
    return int(bits)


def qmax(bits: int) -> int:
    """Largest integer code of the symmetric uniform grid: 2^(b-1) - 1 (b = 2 gives ternary)."""
    if bits < 2:
        raise ValueError(f"the uniform grid needs at least 2 bits, got {bits}")
    return 2 ** (bits - 1) - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, pass the gradient through unchanged (straight-through).
    Written as `round(x) + (x - sg(x))` so the value is exactly round(x), not up to an ulp."""
    return x.detach().round() + (x - x.detach())


def identity_ste(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Exactly the value of `x_hat`, with the gradient of the identity with respect to `x`
    (BinaryConnect-style straight-through estimator)."""
    return x_hat.detach() + (x - x.detach())


FIT_ITERS = 4
"""Rounds of the alternating (Lloyd) scale fit after the best starting scale is picked; on
Gaussian, Laplace and Student-t weights the error is then within about 1 % of a 60-round fit."""

_STEP_PER_RMS = {2: 1.224, 3: 0.66, 4: 0.34, 8: 0.031}
"""Step / rms(w) of the MSE-optimal uniform grid for Gaussian weights at each width (Max, 1960)."""
_START_MULTIPLES = (0.5, 1.0, 2.0, 4.0)
"""The fit starts from the best of these multiples of the Gaussian step and the max-abs step
`max|w| / q`: heavy-tailed weights want a wider grid at 8 bits, a narrower one at 2-4."""


FIT_SAMPLE = 1 << 16
"""The fit reads at most this many elements per scale (every k-th row of a larger weight): the
error curve is flat near its minimum, so the scale is as good, at a cost per step independent of
the layer's size (the whole 2.56M-weight embedding would cost more than a step)."""


def _fit_sample(a: torch.Tensor, per_channel: bool, per_block: bool = False) -> torch.Tensor:
    """What the scale fit reads, as (scales, elements): all of `a`, or for a larger weight every
    k-th row (per tensor; whole rows, so no column is left out) or every k-th element of each row
    (per channel), at most FIT_SAMPLE elements per scale. `per_block`: a's first dimension indexes
    equal blocks (the groups of one weight), each sampled as the per-tensor weight it is alone.
    Strided views where the layout allows (a block of columns is copied)."""
    if per_channel:
        rows = a.reshape(a.shape[0], -1)
        m = max(FIT_SAMPLE // a.shape[0], 1024)
        return rows if rows.shape[1] <= m else rows[:, ::-(-rows.shape[1] // m)]
    blocks = a if per_block else a.unsqueeze(0)
    n, block = blocks.shape[0], blocks[0]
    if block.numel() <= FIT_SAMPLE:
        return blocks.reshape(n, -1)
    rows = blocks.reshape(n, block.shape[0], -1) if block.dim() > 1 and block.shape[0] > 1 else blocks.reshape(n, -1, 1)
    step = -(-block.numel() // FIT_SAMPLE)
    return rows[:, ::step].reshape(n, -1) if rows.shape[1] >= step else blocks.reshape(n, -1)[:, ::step]


def _reduce(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Sum over the tensor (0-dim) or over each output channel (broadcastable against x)."""
    if not per_channel:
        return x.sum()
    return x.reshape(x.shape[0], -1).sum(dim=1).reshape((-1,) + (1,) * (x.dim() - 1))


def fit_scale(w: torch.Tensor, bits: int, per_channel: bool = False, iters: int = FIT_ITERS) -> torch.Tensor:
    """The scale s minimising ||w - Q_b(w; s)||^2 (ALGORITHMS.md section 1), per tensor or per
    output channel, no gradient. b = 1: `mean|w|`, the exact optimum for sign codes. b >= 2: on at
    most FIT_SAMPLE elements per scale, start from the best of a few candidate steps (all scored in
    one batched pass), then alternate codes `c = clip(round(w / s), -q, q)` and
    `s = <w, c> / <c, c>` (each round can only lower the error). This one function gives the scale
    in the search, sensitivity, QAT, ADMM's projection and export."""
    return WeightStats(w, per_channel).scale(bits, iters)


def _fit(rows: torch.Tensor, rms: torch.Tensor, absmax: torch.Tensor, widths: Sequence[int],
         iters: int) -> torch.Tensor:
    """fit_scale on a (scales, elements) sample, given its rms and max-abs per row, for every
    width in `widths` in one batched pass (each width's numbers are those of a fit of it alone):
    shape (widths, scales, 1)."""
    tiny = torch.finfo(rows.dtype).tiny
    q: float | torch.Tensor = float(qmax(widths[0]))
    per_rms: float | torch.Tensor = _STEP_PER_RMS.get(widths[0], 4.0 / q)
    if len(widths) > 1:  # one value per width, broadcast over (widths, scales, elements)
        q = torch.tensor([float(qmax(b)) for b in widths], dtype=rows.dtype, device=rows.device).view(-1, 1, 1)
        per_rms = torch.tensor([_STEP_PER_RMS.get(b, 4.0 / qmax(b)) for b in widths], dtype=rows.dtype,
                               device=rows.device).view(-1, 1, 1)
    gauss = rms.unsqueeze(0) * per_rms  # (widths, scales, 1)
    starts = torch.cat([gauss * m for m in _START_MULTIPLES] + [absmax.unsqueeze(0) / q], dim=2)
    starts = starts.clamp_min_(tiny).transpose(1, 2).unsqueeze(-1)  # (widths, starts, scales, 1)
    errors = _clip(torch.div(rows, starts).round_(), q if isinstance(q, float) else q.unsqueeze(-1))
    errors = errors.mul_(starts).sub_(rows).square_()
    s = torch.gather(starts.squeeze(-1), 1, _sum(errors).argmin(dim=1, keepdim=True)).transpose(1, 2)
    for _ in range(iters):
        c = _clip(torch.div(rows, s).round_(), q)
        cc = _sum(c * c, keepdim=True)
        s = torch.where(cc > 0, _sum(c.mul_(rows), keepdim=True) / cc.clamp_min(1.0), s).clamp_min_(tiny)
    return s


def _clip(x: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    """x clipped to [-q, q] in place; a tensor q is broadcast against x (as two binary ops: a clamp
    with tensor bounds is many times slower on the CPU)."""
    if isinstance(q, float):
        return x.clamp_(-q, q)
    return torch.maximum(torch.minimum(x, q, out=x), q.neg(), out=x)


FIT_BATCH_ELEMENTS = 1 << 24
"""Widths are fitted together while the pass's largest temporary (widths x starting scales x the
sample: 64 MiB in float32) stays within this many elements; beyond it, one width at a time (the same
scales, more passes)."""
SUM_CHUNK = 1024
"""Rows of the fit's sample longer than SUM_CHUNKED are zero-padded to a multiple of SUM_CHUNK and
summed chunk by chunk (see `_sum`)."""
SUM_CHUNKED = 32768
"""PyTorch's grain size on the CPU: a sum of more than this many elements into one output is split
between threads."""


def fit_pass_elements(sample_elements: int, widths: int = 1) -> int:
    """Elements of the largest temporary of one fit pass: `widths` widths x the starting scales x
    the sample (of every scale fitted in the pass)."""
    return widths * (len(_START_MULTIPLES) + 1) * sample_elements


def _sum(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Sum over the last dimension. A long sum into a single output (one per-tensor width fitted
    alone) is split between threads in an order that depends on their number, which a sum with
    several outputs (the same width fitted with others) is not; longer rows are therefore summed
    in SUM_CHUNK-element chunks first, so a width fitted with others gets the scale it gets alone,
    on any number of CPU threads (float32 and float64 weights; on CUDA the order of a sum also
    depends on its number of outputs, which this does not cover)."""
    if x.shape[-1] > SUM_CHUNKED:
        x = x.unflatten(-1, (-1, SUM_CHUNK)).sum(dim=-1)
    return x.sum(dim=-1, keepdim=keepdim)


class WeightStats:
    """The fitted scales of one weight, computed once per bit-width and shared by every candidate
    quantizer of its group, so a subset of its rows (an embedding's looked-up rows) quantizes
    exactly as those rows of the whole weight do. What every width's fit reads (the sample of the
    weight, its rms and max-abs per scale) is computed once for all of them, and the widths named
    in `widths` (a group's candidates) are fitted together in one batched pass when the first of
    them is asked for. `per_block`: the weight's first dimension indexes the equal blocks of
    several groups (an LSTM weight's gates), each fitted as the per-tensor weight it is alone, all
    in one pass; the scales then have one value per block, shaped like per-channel ones."""

    def __init__(self, w: torch.Tensor, per_channel: bool = False, widths: Sequence[int] = (),
                 per_block: bool = False) -> None:
        if per_channel and per_block:
            raise ValueError("WeightStats takes per_channel or per_block, not both")
        self.weight, self.per_channel, self.per_block = w.detach(), per_channel, per_block
        self.widths = tuple(sorted({b for b in widths if b >= 2}))
        self._scales: dict[tuple[int, int], torch.Tensor] = {}
        self._sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def scale(self, bits: int, iters: int = FIT_ITERS) -> torch.Tensor:
        """fit_scale(weight, bits, per_channel); per block, fit_scale of each block (on the CPU the
        very scales each block gets alone, on one thread or several: tests check it)."""
        key = (bits, iters)
        if key not in self._scales:
            a, tiny = self.weight, torch.finfo(self.weight.dtype).tiny
            per_row = self.per_channel or self.per_block
            if bits == 1:
                n = a[0].numel() if per_row else a.numel()
                if self.per_block:  # each block's sum as its own fit takes it: a long sum's order
                    total = torch.stack([block.abs().sum() for block in a])  # depends on its outputs
                    self._scales[key] = (total.view(-1, *(1,) * (a.dim() - 1)) / n).clamp_min(tiny)
                else:
                    self._scales[key] = (_reduce(a.abs(), per_row) / n).clamp_min(tiny)
            else:
                shape = (-1,) + (1,) * (a.dim() - 1) if per_row else ()
                for b, s in zip(*self._fitted_together(bits, iters)):
                    self._scales[(b, iters)] = s.reshape(shape)
        return self._scales[key]

    def _fitted_together(self, bits: int, iters: int) -> tuple[list[int], torch.Tensor]:
        """(the widths fitted in this pass, their scales): `bits` with the named widths not fitted
        yet, or `bits` alone for a reduced-precision weight (its scalars would round differently
        as tensors) or where the batch's temporaries would pass FIT_BATCH_ELEMENTS."""
        sample = self.sample()
        widths = [b for b in self.widths if (b, iters) not in self._scales] if bits in self.widths else [bits]
        if (sample[0].dtype not in (torch.float32, torch.float64)
                or fit_pass_elements(sample[0].numel(), len(widths)) > FIT_BATCH_ELEMENTS):
            widths = [bits]
        return widths, _fit(*sample, widths, iters)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(what the scale fit reads as (scales, elements), its rms per scale, its max-abs per scale)."""
        if self._sample is None:
            rows = _fit_sample(self.weight, self.per_channel, self.per_block)
            rms, absmax = rows.square().mean(dim=1, keepdim=True).sqrt_(), rows.abs().amax(dim=1, keepdim=True)
            if rows.shape[1] > SUM_CHUNKED:  # zeros add nothing to the fit's sums
                rows = torch.nn.functional.pad(rows, (0, -rows.shape[1] % SUM_CHUNK))
            self._sample = (rows.contiguous(), rms, absmax)
        return self._sample


def uniform_codes(w: torch.Tensor, bits: int, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes clip(round(w / s), -q, q) as a float tensor (no gradient). w / s is computed
    as w * (1 / s), here and in UniformQuantizer.value alike (a multiply is cheaper)."""
    q = qmax(bits)
    return torch.clamp(torch.round(w.detach() * scale.reciprocal()), -q, q)


def uniform_quantize(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """`Q_b(w) = s * clip(round(w / s), -q, q)` with the fitted scale and the identity STE."""
    s = fit_scale(w, bits, per_channel)
    return identity_ste(w, uniform_codes(w, bits, s) * s)


def binary_value(w: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`scale * sign(w)` with the sign taken from the sign bit (+0 -> +1), no gradient; written
    into `out` when given."""
    return torch.copysign(scale.expand_as(w), w.detach(), out=out)


def binary_codes(w: torch.Tensor) -> torch.Tensor:
    """sign(w) as a float tensor of +-1 (+0 -> +1), no gradient."""
    return torch.copysign(torch.ones_like(w), w.detach())


def binary_quantize(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """`Q(w) = a * sign(w)`, a = mean|w|, with the identity STE."""
    return identity_ste(w, binary_value(w, fit_scale(w, 1, per_channel)))


def half_quantize(w: torch.Tensor) -> torch.Tensor:
    """Round through float16 (16 bits), identity STE."""
    return identity_ste(w, w.detach().half().to(w.dtype))


def lsq_quantize(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Learned step size: `s' * round_ste(clip(w / s', -q, q))` with the gradient of s scaled by
    g = 1 / sqrt(n q), n the number of elements per scale value (Esser et al., 2020)."""
    q = qmax(bits)
    n = w.numel() // scale.numel()
    g = 1.0 / math.sqrt(n * q)
    s = scale * g + (scale - scale * g).detach()
    return s * round_ste(torch.clamp(w / s, -q, q))
