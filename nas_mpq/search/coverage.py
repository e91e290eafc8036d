"""What a search covers: every parameter of a prepared model is searched, excluded by a rule,
kept in float by design (biases, norms and other vectors) or not searchable (no searchable layer
covers it: a GRU, a subclass overriding its layer's forward, a bare parameter of a module),
by name and share of the weights. A space with `full_coverage` refuses the last kind.

Example:
    >>> prepare_search_(net, space)
    >>> report = coverage_report(net, space)
    >>> report["searched_share"], report["unsearched"]["gru.weight_ih_l0"]["kind"]
    (0.83, 'unsupported')
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .groups import machinery_ids, search_groups
from .layers import SearchableMixin
from .registry import find_layer
from .space import SearchSpace, rule_names

def coverage_report(model: nn.Module, space: SearchSpace) -> dict[str, Any]:
    """{"searched_share": share of the weight elements searched, "searched": {name: numel},
    "unsearched": {name: {"numel", "kind", "reason"}}} for a model prepared with `space`
    (tied parameters once, search machinery left out)."""
    searched_ids = {id(g.weight) for g in search_groups(model)}
    machinery = machinery_ids(model)
    searched: dict[str, int] = {}
    unsearched: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if id(p) in machinery:
            continue
        if id(p) in searched_ids:
            searched[name] = p.numel()
        else:
            kind, reason = _why_unsearched(model, space, name, p)
            unsearched[name] = {"numel": p.numel(), "kind": kind, "reason": reason}
    total = sum(searched.values()) + sum(u["numel"] for u in unsearched.values())
    return {"searched_share": sum(searched.values()) / total if total else 0.0,
            "searched": searched, "unsearched": unsearched}


def unsupported(report: dict[str, Any]) -> dict[str, str]:
    """{name: reason} of the weights no searchable layer covers."""
    return {n: u["reason"] for n, u in report["unsearched"].items() if u["kind"] == "unsupported"}


def check_full_coverage(report: dict[str, Any], space: SearchSpace) -> None:
    """ValueError naming every weight the space could not search, when it demands full coverage."""
    missing = unsupported(report)
    if space.full_coverage and missing:
        total = sum(report["searched"].values()) + sum(u["numel"] for u in report["unsearched"].values())
        share = sum(report["unsearched"][n]["numel"] for n in missing) / total
        raise ValueError(f"search space {space.name!r} demands full coverage, but "
                         f"{100 * share:.1f} % of the weights cannot be searched: "
                         + "; ".join(f"{n} ({why})" for n, why in missing.items())
                         + ". Register a searchable layer for them or exclude them with a rule")


def coverage_summary(report: dict[str, Any]) -> str:
    """The report in a few lines for a log: the share of the weights searched, the weights
    no searchable layer covers (with why), those excluded by rules, how many vectors stay float."""
    unsearched = report["unsearched"]
    kinds: dict[str, list[str]] = {"unsupported": [], "excluded": [], "float": []}
    for n, u in unsearched.items():
        kinds[u["kind"]].append(n)
    lines = [f"coverage: {100 * report['searched_share']:.1f} % of the weights searched "
             f"({len(report['searched'])} tensors, {sum(report['searched'].values()):,} elements)"]
    if kinds["unsupported"]:
        lines.append("not searchable: " + "; ".join(f"{n} ({unsearched[n]['numel']:,}): {unsearched[n]['reason']}"
                                                    for n in kinds["unsupported"]))
    if kinds["excluded"]:
        lines.append("excluded: " + "; ".join(f"{n} ({unsearched[n]['reason']})" for n in kinds["excluded"]))
    if kinds["float"]:
        lines.append(f"kept in float: {len(kinds['float'])} biases, norms and other vectors "
                     f"({sum(unsearched[n]['numel'] for n in kinds['float']):,} elements)")
    return "\n".join(lines)


def _why_unsearched(model: nn.Module, space: SearchSpace, name: str, p: nn.Parameter) -> tuple[str, str]:
    layer_name, param, owner, layer = _layer_of(model, name)
    rule = space.rule_for(*rule_names(layer_name, param))
    if rule is not None and rule.exclude:
        return "excluded", f"excluded by rule {rule.pattern!r}"
    if sum(s > 1 for s in p.shape) <= 1:
        return "float", "a vector (bias, norm or scale): kept in float"
    if layer is not None:
        return "unsupported", f"{getattr(owner, 'float_class', type(owner)).__name__} does not search its parameter {param!r}"
    if any(True for _ in owner.children()):
        return "unsupported", f"a parameter of {type(owner).__name__} itself, outside any searchable layer"
    return "unsupported", find_layer(owner).reason


def _layer_of(model: nn.Module, name: str) -> tuple[str, str, nn.Module, type | None]:
    """(layer name, parameter name within it, the module holding it, the layer's searchable
    class or None) for parameter `name`: the module holding it, or its parent when that is a
    layer that owns the module (an attention layer's out_proj)."""
    module_name, _, local = name.rpartition(".")
    owner = model.get_submodule(module_name)
    if module_name:
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name)
        parent_cls = _searchable_class(parent)
        if parent_cls is not None and child in parent_cls.owned_children:
            return parent_name, f"{child}.{local}", parent, parent_cls
    return module_name, local, owner, _searchable_class(owner)


def _searchable_class(module: nn.Module) -> type | None:
    return type(module) if isinstance(module, SearchableMixin) else find_layer(module).searchable
