"""Bit packing of integer codes: b-bit codes stored densely in uint8 (little-endian bit order).

Signed table codes map to unsigned ones first: 1 bit {-1, +1} -> {0, 1}; b >= 2 bits
{-q..q} -> {0..2q} (q = 2^(b-1) - 1, so 2q < 2^b).

Example:
    >>> packed = pack_codes(torch.tensor([-1., 0., 1., 1.]), bits=2)   # 1 byte
    >>> unpack_codes(packed, bits=2, numel=4)                          # tensor([-1., 0., 1., 1.])
"""
from __future__ import annotations

import math

import torch

from .functional import qmax

PACKABLE_BITS = (1, 2, 3, 4, 8)


def _check(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; packable bit-widths are {list(PACKABLE_BITS)}")


def to_unsigned(codes: torch.Tensor, bits: int) -> torch.Tensor:
    _check(bits)
    c = codes.detach().reshape(-1).round().to(torch.int64)
    bad = (c.abs() != 1) if bits == 1 else (c.abs() > qmax(bits))
    if bad.any():
        valid = "{-1, +1}" if bits == 1 else f"-{qmax(bits)}..{qmax(bits)}"
        raise ValueError(f"codes outside the {bits}-bit table {valid}: e.g. {int(c[bad][0])}")
    return (c > 0).to(torch.int64) if bits == 1 else c + qmax(bits)


def from_unsigned(u: torch.Tensor, bits: int) -> torch.Tensor:
    _check(bits)
    return (2 * u - 1 if bits == 1 else u - qmax(bits)).to(torch.float32)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """ceil(numel * bits / 8) bytes holding the codes."""
    u = to_unsigned(codes, bits)
    stream = ((u[:, None] >> torch.arange(bits)) & 1).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    return (stream.reshape(-1, 8) << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The float codes of `pack_codes`, flat; raises ValueError if `packed` is too short."""
    _check(bits)
    need = math.ceil(numel * bits / 8)
    if packed.dtype != torch.uint8 or packed.numel() != need:
        raise ValueError(f"packed codes hold {packed.numel()} {packed.dtype} values; {numel} {bits}-bit "
                         f"codes need {need} uint8")
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1).reshape(-1)[: numel * bits]
    u = (stream.reshape(numel, bits) << torch.arange(bits)).sum(dim=1)
    return from_unsigned(u, bits)
