"""A plan's weight groups and layer inputs, and the one size function: `plan_size` computes
size_bits, fp32_size_bits, compression and avg_bits for every stage, report and test. Plain data,
no torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..quant.quantizers import QuantizerSettings

SCALE_BITS = 32
FLOAT_BITS = 32
ACTIVATION_BITS = 32
"""Bit-width of the activations a weight meets in a BitOps count unless the plan quantizes its
layer's input."""


def slice_of(weight: Any, rows: tuple[int, int] | None, axis: int = 0) -> Any:
    """`weight[rows[0]:rows[1]]` along dimension `axis` (a view), or all of it for rows None."""
    return weight if rows is None else weight.narrow(axis, rows[0], rows[1] - rows[0])


@dataclass(frozen=True)
class GroupPlan:
    """One weight group: `rows` is the slice [start, stop) of `param` along dimension `axis` (0:
    rows, e.g. an LSTM gate or the Q rows of one head; 1: columns, e.g. one head's inputs of an
    attention output projection), or None for all of it. `scales` is how many 32-bit scale values
    the group stores when quantized to 1..8 bits; `method` and `per_channel` are the settings its
    quantizers are built with (QuantizerSettings)."""

    param: str
    rows: tuple[int, int] | None
    numel: int
    bits: int
    scales: int = 1
    probs: tuple[float, ...] | None = None
    axis: int = 0
    macs: int | None = None
    layer: str | None = None
    method: str = "uniform"
    per_channel: bool = False

    def __post_init__(self) -> None:
        QuantizerSettings(self.method, self.per_channel)  # ValueError naming a bad setting

    @property
    def settings(self) -> QuantizerSettings:
        return QuantizerSettings(self.method, self.per_channel)

    def view(self, weight: Any) -> Any:
        """The group's part of its parameter tensor `weight` (a view, no copy)."""
        return slice_of(weight, self.rows, self.axis)

    def shape(self, param_shape: Iterable[int]) -> tuple[int, ...]:
        """The shape of the group's slice of a parameter of `param_shape`."""
        shape = list(param_shape)
        if self.rows is not None:
            shape[self.axis] = self.rows[1] - self.rows[0]
        return tuple(shape)

    def scale_count(self, bits: int | None = None) -> int:
        b = self.bits if bits is None else bits
        return 0 if b in (0, 16, 32) else self.scales

    def cost_bits(self, bits: int | None = None) -> int:
        """Storage of the group at `bits` (its own bits by default): codes plus scales."""
        b = self.bits if bits is None else bits
        return self.numel * b + SCALE_BITS * self.scale_count(b)


@dataclass(frozen=True)
class ActivationPlan:
    """The input bit-width of one Linear/Conv2d layer (and the search's probabilities)."""

    bits: int
    probs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SizeReport:
    size_bits: int
    fp32_size_bits: int
    compression: float
    avg_bits: float


def plan_size(groups: Iterable[GroupPlan], fixed_numel: int) -> SizeReport:
    """Size of a model: searched groups at their bits plus one 32-bit value per scale, and every
    unsearched parameter (`fixed_numel` elements: biases, norms) at 32 bits."""
    groups = list(groups)
    searched = sum(g.numel for g in groups)
    size = sum(g.cost_bits() for g in groups) + FLOAT_BITS * fixed_numel
    fp32 = FLOAT_BITS * (searched + fixed_numel)
    avg = sum(g.numel * g.bits for g in groups) / searched if searched else 0.0
    return SizeReport(int(size), int(fp32), fp32 / size if size else math.inf, avg)


def groups_by_param(groups: Mapping[str, GroupPlan]) -> dict[str, list[str]]:
    """Group names by the qualified name of the parameter they slice (GroupPlan.param)."""
    out: dict[str, list[str]] = {}
    for n, g in groups.items():
        out.setdefault(g.param, []).append(n)
    return out
