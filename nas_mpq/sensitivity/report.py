"""sensitivity.json: what `nas-mpq sensitivity` measured per group (Omega_g(b) per candidate
bit-width, and the Hessian trace where it estimated one), written by the stage and read back by a
search that starts from it (`SupernetModule(init_sensitivity=...)`).

Example:
    >>> report = sensitivity_report("kl", budget, template.groups, omega)
    >>> omega = load_sensitivity("runs/kl/sensitivity.json")    # {group: {bits: Omega}}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..plan import Budget, GroupPlan


def sensitivity_report(method: str, budget: Budget, groups: Mapping[str, GroupPlan],
                       omega: Mapping[str, Mapping[int, float]], traces: Mapping[str, float] | None = None,
                       samples: int | None = None) -> dict[str, Any]:
    """The content of sensitivity.json: the method, the budget, the Hutchinson `samples` and, per
    group, its size, Omega per bit-width and its trace (`traces`, Hessian only)."""
    report: dict[str, Any] = {"method": method, "budget": {"kind": budget.kind, "value": budget.value}}
    if samples is not None:
        report["samples"] = samples
    report["groups"] = {n: {"numel": g.numel, **({"trace": traces[n]} if traces is not None else {}),
                            "omega": {str(b): v for b, v in omega[n].items()}}
                        for n, g in groups.items()}
    return report


def load_sensitivity(path: str | Path) -> dict[str, dict[int, float]]:
    """Omega per group and bit-width from a sensitivity.json."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return {n: {int(b): float(v) for b, v in g["omega"].items()} for n, g in data["groups"].items()}
    except FileNotFoundError:
        raise FileNotFoundError(f"sensitivity file {path} does not exist") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a sensitivity.json written by nas-mpq sensitivity ({e})") from None
