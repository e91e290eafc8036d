"""PrecisionPlan: the contract between stages (DESIGN.md), its budget and its size accounting.

`plan_size` is the one function that computes size_bits, fp32_size_bits, compression and avg_bits;
every stage, report and test uses it. Plain data, no torch.

Example:
    >>> plan = PrecisionPlan.load("runs/x/plan.json")
    >>> plan.size().compression
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .files import write_atomic
from .quant.activation import check_activation_bits
from .quant.functional import check_bits
from .quant.quantizers import QuantizerSettings

PLAN_FORMAT = "nas-mpq.plan/4"
READABLE_FORMATS = ("nas-mpq.plan/1", "nas-mpq.plan/2", "nas-mpq.plan/3", PLAN_FORMAT)
"""Version 2 added a group's `axis` (column slices), `macs` and `layer` (for BitOps budgets), the
budget kind "bitops" and `activations` (input bit-width per layer); version 3 a group's quantizer
settings (`method`, `per_channel`), so a plan applies without its search space; version 4 names
the search space `space_name` (`search_space` before). Older files read as version 4: their
`search_space` as `space_name`, without the version-2 fields, and before version 3 with method
"uniform" and per-row scales where a group stores more than one scale (the setting the scale count
shows)."""
SETTINGS_FORMATS = ("nas-mpq.plan/3", PLAN_FORMAT)
"""The formats whose groups record their quantizer settings."""
BUDGET_KINDS = ("avg_bits", "compression", "size_mb", "bitops")
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


@dataclass(frozen=True)
class Budget:
    """A size budget: average bits over the searched weights, a compression ratio of the whole model
    against FP32, or a size in megabytes (1 MB = 10^6 bytes) of the whole model; or a compute
    budget: BitOps per sample, sum over groups of MACs x weight bits x activation bits (32).

    The budget constrains a linear measure of the plan: for avg_bits, sum(numel * bits) over the
    searched groups; for bitops, sum(macs * bits * 32); otherwise size_bits. `capacity` is the
    bound on that measure."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"unknown budget kind {self.kind!r}; valid kinds: {list(BUDGET_KINDS)}")
        if not (isinstance(self.value, (int, float)) and self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"budget value must be a positive number, got {self.value!r}")

    def group_cost(self, group: GroupPlan, bits: int, act_bits: int = ACTIVATION_BITS) -> int:
        """The budget's measure for one group at `bits` (its layer's input at `act_bits`)."""
        if self.kind == "avg_bits":
            return group.numel * bits
        if self.kind == "bitops":
            if group.macs is None:
                raise ValueError("a bitops budget needs the MACs of every group; this plan has none "
                                 "(it was made without them, e.g. by format version 1)")
            return group.macs * bits * act_bits
        return group.cost_bits(bits)

    def fixed_cost(self, fixed_numel: int) -> int:
        return 0 if self.kind in ("avg_bits", "bitops") else FLOAT_BITS * fixed_numel

    def capacity(self, groups: Iterable[GroupPlan], fixed_numel: int) -> float:
        """Upper bound on sum(group_cost) + fixed_cost."""
        groups = list(groups)
        searched = sum(g.numel for g in groups)
        if self.kind == "avg_bits":
            return self.value * searched
        if self.kind == "compression":
            return FLOAT_BITS * (searched + fixed_numel) / self.value
        if self.kind == "bitops":
            return self.value
        return self.value * 8e6

    def measure(self, groups: Iterable[GroupPlan], fixed_numel: int,
                act_bits: Mapping[str, int] | None = None) -> float:
        """The budget's measure of a plan (`act_bits`: input bit-width per layer, 32 if absent)."""
        act_bits = act_bits or {}
        return (sum(self.group_cost(g, g.bits, act_bits.get(g.layer, ACTIVATION_BITS)) for g in groups)
                + self.fixed_cost(fixed_numel))

    def check_feasible(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                       candidates: Mapping[str, Iterable[int]],
                       act_candidates: Mapping[str, Iterable[int]] | None = None) -> None:
        """Raise ValueError if even the smallest plan exceeds the budget, naming the smallest
        budget that can be met."""
        least = self.smallest_measure(groups, fixed_numel, candidates, act_candidates)
        gs = list(groups.values())
        if least > self.capacity(gs, fixed_numel) + 1e-6:
            raise ValueError(
                f"infeasible budget {self.kind}={self.value}: even the smallest plan (every group at its "
                f"lowest candidate) needs {self.describe(least, gs, fixed_numel)}; "
                f"choose a budget of at least that")

    def check_binds(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                    candidates: Mapping[str, Iterable[int]],
                    act_candidates: Mapping[str, Iterable[int]] | None = None) -> None:
        """check_feasible, and ValueError if the budget cannot constrain a search: the largest
        plan (every group at its largest candidate, e.g. all 32 bits) already meets it, so a search
        would only return that plan. The message names the value and the valid range."""
        self.check_feasible(groups, fixed_numel, candidates, act_candidates)
        most = self.largest_measure(groups, fixed_numel, candidates, act_candidates)
        gs = list(groups.values())
        if most <= self.capacity(gs, fixed_numel) + 1e-6:
            least = self.smallest_measure(groups, fixed_numel, candidates, act_candidates)
            raise ValueError(
                f"budget {self.kind}={self.value} does not constrain the search: the plan with every group "
                f"at its largest candidate already meets it ({self.describe(most, gs, fixed_numel)}); "
                f"valid budgets lie between {self.describe(least, gs, fixed_numel)} (the smallest plan) and "
                f"{self.describe(most, gs, fixed_numel)} (the largest plan, excluded)")

    def smallest_measure(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                         candidates: Mapping[str, Iterable[int]],
                         act_candidates: Mapping[str, Iterable[int]] | None = None) -> float:
        """The budget's measure of the smallest plan: every group at its lowest candidate, every
        searched layer input at its lowest; a layer whose groups may all be pruned (0 bits) keeps
        one group at its cheapest other candidate."""
        act_candidates = act_candidates or {}

        def cheapest(n: str, allow_zero: bool = True) -> int:
            act = min(act_candidates.get(groups[n].layer, [ACTIVATION_BITS]))
            return min(self.group_cost(groups[n], b, act) for b in candidates[n] if allow_zero or b != 0)

        least = sum(cheapest(n) for n in groups) + self.fixed_cost(fixed_numel)
        for names in groups_by_param(groups).values():
            if all(0 in candidates[n] for n in names):
                least += min(cheapest(n, allow_zero=False) - cheapest(n) for n in names)
        return least

    def largest_measure(self, groups: Mapping[str, GroupPlan], fixed_numel: int,
                        candidates: Mapping[str, Iterable[int]],
                        act_candidates: Mapping[str, Iterable[int]] | None = None) -> float:
        """The budget's measure of the largest plan: every group and searched layer input at its
        largest candidate."""
        act_candidates = act_candidates or {}
        return sum(max(self.group_cost(g, b, max(act_candidates.get(g.layer, [ACTIVATION_BITS])))
                       for b in candidates[n]) for n, g in groups.items()) + self.fixed_cost(fixed_numel)

    def describe(self, measure: float, groups: list[GroupPlan], fixed_numel: int) -> str:
        if self.kind == "avg_bits":
            return f"avg_bits={measure / sum(g.numel for g in groups):.4f}"
        if self.kind == "compression":
            fp32 = FLOAT_BITS * (sum(g.numel for g in groups) + fixed_numel)
            return f"compression={fp32 / measure:.4f}"
        if self.kind == "bitops":
            return f"bitops={measure:.6g}"
        return f"size_mb={measure / 8e6:.6f}"


def _named(what: str, check: Callable[[int], int], bits: int) -> None:
    """`check(bits)`, its ValueError prefixed by what was checked (e.g. "group 'decoder.weight'")."""
    try:
        check(bits)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _group_from_dict(g: Mapping[str, Any], fmt: str) -> GroupPlan:
    scales = int(g.get("scales", 1))
    if fmt in SETTINGS_FORMATS:
        settings = {"method": g["method"], "per_channel": g["per_channel"]}
    else:  # written before groups carried their settings
        settings = {"method": "uniform", "per_channel": scales > 1}
    return GroupPlan(g["param"], tuple(g["rows"]) if g.get("rows") else None, int(g["numel"]), int(g["bits"]),
                     scales, tuple(g["probs"]) if g.get("probs") else None, int(g.get("axis", 0)),
                     int(g["macs"]) if g.get("macs") is not None else None, g.get("layer"), **settings)


def groups_by_param(groups: Mapping[str, GroupPlan]) -> dict[str, list[str]]:
    """Group names by the qualified name of the parameter they slice (GroupPlan.param)."""
    out: dict[str, list[str]] = {}
    for n, g in groups.items():
        out.setdefault(g.param, []).append(n)
    return out


@dataclass
class PrecisionPlan:
    """Bits per weight group, keyed by group name (e.g. "rnn.weight_ih_l0:i"), for the search
    space named `space_name` (the `name` of the space config that made it)."""

    space_name: str
    candidates: list[int]
    groups: dict[str, GroupPlan]
    fixed_numel: int
    budget: Budget | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    activations: dict[str, ActivationPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("the plan has no groups; a plan holds at least one weight group")
        if not self.candidates:
            raise ValueError(f"candidates {self.candidates!r} is empty; give at least one bit-width")
        self.candidates = [check_bits(b) for b in self.candidates]
        for name, a in self.activations.items():
            _named(f"layer input {name!r}", check_activation_bits, a.bits)
        for name, g in self.groups.items():
            _named(f"group {name!r}", check_bits, g.bits)
            if g.numel <= 0:
                raise ValueError(f"group {name!r} has numel {g.numel}; it must be positive")

    @property
    def bits(self) -> dict[str, int]:
        return {n: g.bits for n, g in self.groups.items()}

    @property
    def activation_bits(self) -> dict[str, int]:
        """Input bit-width per layer whose activations the plan quantizes."""
        return {n: a.bits for n, a in self.activations.items()}

    def size(self) -> SizeReport:
        return plan_size(self.groups.values(), self.fixed_numel)

    def meets_budget(self) -> bool:
        if self.budget is None:
            return True
        gs = list(self.groups.values())
        measure = self.budget.measure(gs, self.fixed_numel, self.activation_bits)
        return measure <= self.budget.capacity(gs, self.fixed_numel) + 1e-6

    def with_bits(self, bits: Mapping[str, int], act_bits: Mapping[str, int] | None = None) -> "PrecisionPlan":
        """The plan with new weight bits (and, for the layers in `act_bits`, new input bits)."""
        groups = {n: replace(g, bits=check_bits(bits[n])) for n, g in self.groups.items()}
        acts = {n: replace(a, bits=(act_bits or {}).get(n, a.bits)) for n, a in self.activations.items()}
        return PrecisionPlan(self.space_name, self.candidates, groups, self.fixed_numel,
                             self.budget, dict(self.extra), acts)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        r = self.size()
        groups = {}
        for n, g in self.groups.items():
            d: dict[str, Any] = {"param": g.param, "rows": list(g.rows) if g.rows else None,
                                 "numel": g.numel, "bits": g.bits, "scales": g.scales,
                                 "method": g.method, "per_channel": g.per_channel}
            if g.axis:
                d["axis"] = g.axis
            if g.macs is not None:
                d["macs"] = g.macs
            if g.layer is not None:
                d["layer"] = g.layer
            if g.probs is not None:
                d["probs"] = [round(float(p), 6) for p in g.probs]
            groups[n] = d
        return {
            "format": PLAN_FORMAT, "space_name": self.space_name, "candidates": self.candidates,
            "budget": None if self.budget is None else {"kind": self.budget.kind, "value": self.budget.value},
            "groups": groups, "fixed_numel": self.fixed_numel,
            "size_bits": r.size_bits, "fp32_size_bits": r.fp32_size_bits,
            "compression": r.compression, "avg_bits": r.avg_bits,
            **({"activations": {n: {"bits": a.bits, **({"probs": [round(float(p), 6) for p in a.probs]}
                                                       if a.probs is not None else {})}
                                for n, a in self.activations.items()}} if self.activations else {}),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "plan") -> "PrecisionPlan":
        if not isinstance(d, Mapping) or d.get("format") not in READABLE_FORMATS:
            fmt = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"{source}: unsupported plan format {fmt!r}; readable: {list(READABLE_FORMATS)}")
        for key in ("groups", "activations"):
            if d.get(key) is not None and not isinstance(d[key], Mapping):
                raise ValueError(f"{source}: `{key}` must map names to entries, got {d[key]!r}")
        try:
            groups = {n: _group_from_dict(g, d["format"]) for n, g in d["groups"].items()}
            acts = {n: ActivationPlan(int(a["bits"]), tuple(a["probs"]) if a.get("probs") else None)
                    for n, a in (d.get("activations") or {}).items()}
            budget = Budget(**d["budget"]) if d.get("budget") else None
            space_key = "space_name" if d["format"] == PLAN_FORMAT else "search_space"
            known = {"format", space_key, "candidates", "budget", "groups", "fixed_numel",
                     "size_bits", "fp32_size_bits", "compression", "avg_bits", "activations"}
            plan = cls(d[space_key], list(d["candidates"]), groups, int(d["fixed_numel"]),
                       budget, {k: v for k, v in d.items() if k not in known}, acts)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{source}: malformed plan, missing or bad field {e}") from None
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        r = plan.size()
        if "size_bits" in d and int(d["size_bits"]) != r.size_bits:
            raise ValueError(f"{source}: size_bits {d['size_bits']} does not match the groups "
                             f"(recount gives {r.size_bits}); the file was edited or is corrupt")
        return plan

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite to replace it)")
        return write_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PrecisionPlan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))

    def summary_table(self) -> str:
        """A Markdown table: one row per group, then the totals."""
        lines = ["| group | numel | bits |", "|---|---:|---:|"]
        lines += [f"| {n} | {g.numel} | {g.bits} |" for n, g in self.groups.items()]
        r = self.size()
        lines.append(f"\nsize {r.size_bits / 8e6:.4f} MB, {r.compression:.2f}x vs FP32, "
                     f"avg {r.avg_bits:.3f} bits over searched weights")
        if self.activations:
            lines.append("\n| layer input | bits |\n|---|---:|")
            lines += [f"| {n} | {a.bits} |" for n, a in self.activations.items()]
        return "\n".join(lines)

