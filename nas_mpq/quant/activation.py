"""Activation quantizers (ALGORITHMS.md section 1): PACT clipping with a learnable alpha, then a
uniform grid; unsigned (levels 0..2^b - 1 over [0, alpha]) for inputs that are never negative,
signed (levels -(2^(b-1) - 1)..2^(b-1) - 1 over [-alpha, alpha]) otherwise. Signedness and alpha
are set from the first batch the quantizer sees (`calibrate_`), so a quantizer fits whatever
layer input it is put in front of; both are buffers/parameters and travel with checkpoints.

Example:
    >>> q = ActivationQuantizer(4)
    >>> y = q(torch.relu(torch.randn(8, 16)))     # unsigned 4-bit, alpha from this batch
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .functional import check_bits, half_quantize, round_ste
from .quantizers import WeightQuantizer

ACTIVATION_BIT_WIDTHS = (2, 3, 4, 8, 16, 32)
CALIBRATION_QUANTILE = 0.999
_MAX_CALIBRATION_SAMPLES = 1 << 20


def check_activation_bits(bits: int) -> int:
    """`bits` if activations can be quantized to it, else ValueError naming the valid ones."""
    b = check_bits(bits)
    if b not in ACTIVATION_BIT_WIDTHS:
        raise ValueError(f"activation bit-width {bits!r} is not supported; valid: {list(ACTIVATION_BIT_WIDTHS)}")
    return b


class ActivationQuantizer(WeightQuantizer):
    """PACT at `bits` (2..8); 16 bits rounds through float16, 32 bits is the identity. The
    gradient reaches alpha through the clipping and the step size (straight-through rounding)."""

    identity_grad = False
    uses_stats = False

    def __init__(self, bits: int) -> None:
        super().__init__(check_activation_bits(bits))
        if self.bits < 16:  # 16 and 32 bits have nothing to learn
            self.alpha = nn.Parameter(torch.tensor(1.0))
            self.register_buffer("signed", torch.tensor(False))
            self.register_buffer("calibrated", torch.tensor(False))
        self._flags: tuple[bool, bool] | None = None

    def flags(self) -> tuple[bool, bool]:
        """(calibrated, signed): read from their buffers once, then kept on the host (calibration
        and state-dict loads renew them), so a forward reads nothing back from the device."""
        if self._flags is None:
            self._flags = (bool(self.calibrated), bool(self.signed))
        return self._flags

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._flags = None

    @torch.no_grad()
    def calibrate_(self, x: torch.Tensor) -> None:
        """alpha := the 99.9th percentile of |x|; signed iff x has negative values."""
        flat = x.detach().abs().flatten().float()
        if flat.numel() > _MAX_CALIBRATION_SAMPLES:
            flat = flat[torch.linspace(0, flat.numel() - 1, _MAX_CALIBRATION_SAMPLES).long()]
        self.alpha.fill_(max(float(torch.quantile(flat, CALIBRATION_QUANTILE)), 1e-6))
        signed = bool((x < 0).any())
        self.signed.fill_(signed)
        self.calibrated.fill_(True)
        self._flags = (True, signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 32:
            return x
        if self.bits == 16:
            return half_quantize(x)
        if not self.flags()[0]:
            self.calibrate_(x)
        alpha = self.alpha.abs().clamp_min(1e-6)
        if self.flags()[1]:
            levels = 2 ** (self.bits - 1) - 1
            clipped = torch.maximum(torch.minimum(x, alpha), -alpha)
        else:
            levels = 2 ** self.bits - 1
            clipped = torch.minimum(torch.relu(x), alpha)
        step = alpha / levels
        return round_ste(clipped / step) * step

    def num_scales(self, shape: torch.Size | tuple[int, ...]) -> int:
        return 0  # activations are not stored with the model

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
