"""Tied quantization tables and the projection onto them (ALGORITHMS.md section 6).

A group at b bits may only take values `a * t` with t in the table T_b and one scale a per group
(or per row): T_1 = {-1, +1}, T_2 = {-1, 0, +1} (ternary), T_b = {-q..q}, q = 2^(b-1) - 1. The
projection alternates `Q = proj_T(V / a)` and `a = <V, Q> / <Q, Q>` a few times: quant's
`fit_scale`, the same fit the search and QAT use, so ADMM deploys the grid that was searched. 0 bits projects
onto zero; 16 bits rounds through float16; 32 bits is unconstrained.

Example:
    >>> codes, scale = project(torch.randn(64, 32), bits=4)
    >>> g = codes * scale                    # every entry on the 4-bit table
"""
from __future__ import annotations

import torch

from ..quant.functional import FIT_ITERS, check_bits, fit_scale, qmax


def table_codes(v_over_a: torch.Tensor, bits: int) -> torch.Tensor:
    """The nearest table entry of each element of V / a, as float integer codes."""
    if bits == 1:
        return torch.copysign(torch.ones_like(v_over_a), v_over_a)
    if bits == 2:
        return (v_over_a > 0.5).to(v_over_a.dtype) - (v_over_a < -0.5).to(v_over_a.dtype)
    q = qmax(bits)
    return v_over_a.round().clamp_(-q, q)


def project(v: torch.Tensor, bits: int, per_row: bool = False, iters: int = FIT_ITERS
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale) with `codes * scale` the tied-table point near `v` (least-squares fit).
    For 16 and 32 bits codes are the (rounded) values themselves and scale is 1."""
    bits = check_bits(bits)
    v = v.detach()
    one = torch.ones((), dtype=v.dtype, device=v.device)
    if bits == 32:
        return v.clone(), one
    if bits == 16:
        return v.half().to(v.dtype), one
    if bits == 0:
        return torch.zeros_like(v), one
    a = fit_scale(v, bits, per_row, iters)
    return table_codes(v / a, bits), a


def on_table(w: torch.Tensor, bits: int, scale: torch.Tensor) -> bool:
    """True if every entry of `w` is `scale` times an integer code within the range of `bits`."""
    if bits in (16, 32):
        return True
    if bits == 0:
        return bool((w == 0).all())
    codes = w / scale
    limit = 1 if bits <= 2 else qmax(bits)
    ok = torch.isclose(codes, codes.round(), atol=1e-4).all() and codes.abs().max() <= limit + 1e-4
    if bits == 1:
        ok = ok and bool((codes.round().abs() == 1).all())
    return bool(ok)
