"""Weight quantization math on plain tensors (ALGORITHMS.md section 1).

Every function returns the de-quantized tensor (scale x integer code) so it can stand in for the
float weight. Gradients: `round_ste` and `identity_ste` are the straight-through estimators used
throughout; `lsq_quantize` carries the LSQ step-size gradient.
"""
from __future__ import annotations

import math

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


AbsStats = tuple[torch.Tensor, torch.Tensor]
"""(mean|w|, max|w|), per tensor (0-dim) or per output channel (broadcastable against w)."""


def abs_stats(w: torch.Tensor, per_channel: bool = False) -> AbsStats:
    """The statistics every scale rule needs, computed once per weight and shared by all the
    candidate quantizers of a group (no gradient)."""
    a = w.detach()
    if per_channel:
        flat = a.reshape(a.shape[0], -1)
        lo, hi = torch.aminmax(flat, dim=1)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return flat.abs().mean(dim=1).reshape(shape), torch.maximum(-lo, hi).reshape(shape)
    lo, hi = torch.aminmax(a)
    return a.abs().mean(), torch.maximum(-lo, hi)


def uniform_scale(w: torch.Tensor, bits: int, per_channel: bool = False,
                  stats: AbsStats | None = None) -> torch.Tensor:
    """Scale of the symmetric uniform grid: max-abs `max|w| / q` for b >= 4, mean-based
    `2 mean|w| / sqrt(q)` for b <= 3 (max-abs rounds almost everything to 0 at 2-3 bits)."""
    q = qmax(bits)
    mean, mx = stats if stats is not None else abs_stats(w, per_channel)
    s = 2.0 * mean / math.sqrt(q) if bits <= 3 else mx / q
    return s.clamp_min(torch.finfo(w.dtype).tiny)


def uniform_codes(w: torch.Tensor, bits: int, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes clip(round(w / s), -q, q) as a float tensor (no gradient). w / s is computed
    as w * (1 / s), here and in UniformQuantizer.value alike (a multiply is cheaper)."""
    q = qmax(bits)
    return torch.clamp(torch.round(w.detach() * scale.reciprocal()), -q, q)


def uniform_quantize(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """`Q_b(w) = s * clip(round(w / s), -q, q)` with the identity STE."""
    s = uniform_scale(w, bits, per_channel)
    return identity_ste(w, uniform_codes(w, bits, s) * s)


def binary_scale(w: torch.Tensor, per_channel: bool = False,
                 stats: AbsStats | None = None) -> torch.Tensor:
    """`a = mean|w|` (per tensor or per output channel)."""
    return (stats if stats is not None else abs_stats(w, per_channel))[0]


def binary_value(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`scale * sign(w)` with the sign taken from the sign bit (+0 -> +1), no gradient."""
    return torch.copysign(scale.expand_as(w), w.detach())


def binary_codes(w: torch.Tensor) -> torch.Tensor:
    """sign(w) as a float tensor of +-1 (+0 -> +1), no gradient."""
    return torch.copysign(torch.ones_like(w), w.detach())


def binary_quantize(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """`Q(w) = a * sign(w)`, a = mean|w|, with the identity STE."""
    return identity_ste(w, binary_value(w, binary_scale(w, per_channel)))


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
