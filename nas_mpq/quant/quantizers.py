"""Weight quantizers as small modules: `bits`, `forward(w) -> w_hat` (differentiable, STE) and
`value(w)` (the same numbers without autograd, used by the composite weight).

Example:
    >>> q = make_quantizer(4, torch.randn(8, 16))
    >>> w_hat = q(torch.randn(8, 16))      # 4-bit uniform, gradient straight through
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import functional as F

QUANT_METHODS = ("uniform", "lsq")


class WeightQuantizer(nn.Module):
    """Base class. `identity_grad` is True when d forward / d w is the identity (plain STE) and the
    quantizer has no learnable parameters: the composite weight then needs no recomputed graph."""

    identity_grad = True
    uses_stats = True
    """False for quantizers that ignore the shared weight statistics (no need to compute them)."""
    fused_kind: tuple[str, int] | None = None
    """How `quant.fused` computes this quantizer's value (with the scale from `fitted_scale`), or
    None where it cannot (a learned step size, pruning)."""

    def __init__(self, bits: int, per_channel: bool = False) -> None:
        super().__init__()
        self.bits = F.check_bits(bits)
        self.per_channel = per_channel

    def value(self, w: torch.Tensor, stats: F.WeightStats | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """forward(w) without autograd. `stats` (the WeightStats of w, or of the whole weight
        that w is some rows of, at this quantizer's per_channel) shares the fitted scales between
        the candidates of a group. `out`, a tensor of w's shape, may be written and returned
        instead of a new tensor (the composite weight reuses one buffer for every candidate);
        quantizers that need no new tensor (32 bits: w itself) ignore it."""
        with torch.no_grad():
            return self.forward(w)

    def fitted_scale(self, w: torch.Tensor, stats: F.WeightStats | None = None) -> torch.Tensor | None:
        """The scale `value(w, stats)` uses (None: the value needs none)."""
        return None

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer codes as floats, scale) with `codes * scale` equal to `value(w)`; for 16 and
        32 bits the codes are the values and the scale is 1."""
        return self.value(w), torch.ones((), dtype=w.dtype)

    def num_scales(self, shape: torch.Size | tuple[int, ...]) -> int:
        """How many 32-bit scale values this quantizer stores for a weight of `shape`."""
        if self.bits in (0, 16, 32):
            return 0
        return int(shape[0]) if self.per_channel else 1

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


class FullPrecision(WeightQuantizer):
    """32 bits: identity. 16 bits: rounds through float16."""

    uses_stats = False

    def __init__(self, bits: int = 32, per_channel: bool = False) -> None:
        super().__init__(bits, per_channel)
        if self.bits not in (16, 32):
            raise ValueError(f"FullPrecision takes 16 or 32 bits, got {bits}")
        self.fused_kind = ("full", 0) if self.bits == 32 else None  # compiled, float16 rounding may be elided

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.bits == 32 else F.half_quantize(w)

    def value(self, w: torch.Tensor, stats: F.WeightStats | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        return w.detach() if self.bits == 32 else w.detach().half().to(w.dtype)


class Prune(WeightQuantizer):
    """0 bits: the group is removed (all zeros, no gradient to the weight)."""

    identity_grad = False
    uses_stats = False

    def __init__(self, bits: int = 0, per_channel: bool = False) -> None:
        super().__init__(0, per_channel)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * 0.0

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(w.detach()), torch.ones((), dtype=w.dtype)


class BinaryQuantizer(WeightQuantizer):
    """1 bit: `mean|w| * sign(w)`."""

    fused_kind = ("binary", 0)

    def __init__(self, bits: int = 1, per_channel: bool = False) -> None:
        super().__init__(1, per_channel)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.binary_quantize(w, self.per_channel)

    def value(self, w: torch.Tensor, stats: F.WeightStats | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        return F.binary_value(w, self.fitted_scale(w, stats), out)

    def fitted_scale(self, w: torch.Tensor, stats: F.WeightStats | None = None) -> torch.Tensor:
        return _scale(w, 1, self.per_channel, stats)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.binary_codes(w), F.fit_scale(w, 1, self.per_channel)


class UniformQuantizer(WeightQuantizer):
    """2..8 bits symmetric uniform; the scale is fitted to the weight (least squares) at every
    call, the same fit ADMM's projection and export use."""

    def __init__(self, bits: int, per_channel: bool = False) -> None:
        super().__init__(bits, per_channel)
        self.fused_kind = ("uniform", F.qmax(self.bits))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.uniform_quantize(w, self.bits, self.per_channel)

    def value(self, w: torch.Tensor, stats: F.WeightStats | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        s = self.fitted_scale(w, stats)
        q = F.qmax(self.bits)
        return torch.mul(w.detach(), s.reciprocal(), out=out).round_().clamp_(-q, q).mul_(s)

    def fitted_scale(self, w: torch.Tensor, stats: F.WeightStats | None = None) -> torch.Tensor:
        return _scale(w, self.bits, self.per_channel, stats)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = F.fit_scale(w, self.bits, self.per_channel)
        return F.uniform_codes(w, self.bits, s), s


class LSQQuantizer(WeightQuantizer):
    """2..8 bits with a learned step size, initialised from `init_weight` (the fitted scale)."""

    identity_grad = False
    uses_stats = False

    def __init__(self, bits: int, init_weight: torch.Tensor, per_channel: bool = False) -> None:
        super().__init__(bits, per_channel)
        self.scale = nn.Parameter(F.fit_scale(init_weight, self.bits, per_channel).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return F.lsq_quantize(w, self.scale.clamp_min(1e-8), self.bits)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale.detach().clamp_min(1e-8)
        q = F.qmax(self.bits)
        return torch.clamp(w.detach() / s, -q, q).round(), s


def _scale(w: torch.Tensor, bits: int, per_channel: bool, stats: F.WeightStats | None) -> torch.Tensor:
    return stats.scale(bits) if stats is not None else F.fit_scale(w, bits, per_channel)


@dataclass(frozen=True)
class QuantizerSettings:
    """How a weight group's quantizers are built, whatever its bits: `method` for 2-8 bits
    ("uniform": the fitted scale; "lsq": a learned step size) and `per_channel` (one scale per
    row of the group's weight instead of one per group). A plan records them per group, so it
    rebuilds the same quantizers without the search space.

    Example:
        >>> QuantizerSettings("lsq").quantizer(4, torch.randn(8, 16))
        LSQQuantizer(bits=4, per_channel=False)
    """

    method: str = "uniform"
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise ValueError(f"unknown quantization method {self.method!r}; valid: {list(QUANT_METHODS)}")
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be true or false, got {self.per_channel!r}")

    def quantizer(self, bits: int, weight: torch.Tensor) -> WeightQuantizer:
        return make_quantizer(bits, weight, self.method, self.per_channel)


def make_quantizer(
    bits: int, weight: torch.Tensor, method: str = "uniform", per_channel: bool = False
) -> WeightQuantizer:
    """The quantizer for `bits`: 0 prune, 1 binary, 2..8 uniform or LSQ, 16/32 full precision."""
    bits = F.check_bits(bits)
    if method not in QUANT_METHODS:
        raise ValueError(f"unknown quantization method {method!r}; valid: {list(QUANT_METHODS)}")
    if bits == 0:
        return Prune()
    if bits == 1:
        return BinaryQuantizer(per_channel=per_channel)
    if bits in (16, 32):
        return FullPrecision(bits)
    if method == "lsq":
        return LSQQuantizer(bits, weight, per_channel)
    return UniformQuantizer(bits, per_channel)
