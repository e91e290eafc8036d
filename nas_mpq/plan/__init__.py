"""PrecisionPlan: the contract between stages (DESIGN.md), its file format, its budget (budget.py)
and its groups and size accounting (groups.py: `plan_size` is the one function that computes
size_bits, fp32_size_bits, compression and avg_bits; every stage, report and test uses it).
Plain data, no torch.

Example:
    >>> plan = PrecisionPlan.load("runs/x/plan.json")
    >>> plan.size().compression
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..files import write_atomic
from ..quant.activation import check_activation_bits
from ..quant.functional import check_bits
from .budget import BUDGET_KINDS, Budget
from .groups import (ACTIVATION_BITS, FLOAT_BITS, SCALE_BITS, ActivationPlan, GroupPlan, SizeReport, groups_by_param,
                     plan_size, slice_of)

__all__ = ["ACTIVATION_BITS", "BUDGET_KINDS", "FLOAT_BITS", "PLAN_FORMAT", "READABLE_FORMATS", "SCALE_BITS",
           "ActivationPlan", "Budget", "GroupPlan", "PrecisionPlan", "SizeReport", "groups_by_param", "plan_size",
           "slice_of"]

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

