"""The searched groups of a prepared model, as the plan describes them, and what stays in float.

Example:
    >>> prepare_search_(net, space)
    >>> [g.name for g in search_groups(net)]
    ['encoder.weight', 'rnn.weight_ih_l0:i', ...]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

from ..plan import GroupPlan
from ..quant import QuantizerSettings
from .activations import activation_groups
from .choice import MixedPrecisionChoice
from .layers import SearchableMixin


@dataclass(frozen=True)
class SearchGroup:
    """A searched group as found in a prepared model."""

    name: str
    module: SearchableMixin
    key: str
    choice: MixedPrecisionChoice
    plan: GroupPlan

    @property
    def weight(self) -> nn.Parameter:
        """The parameter the group slices."""
        return self.module.get_parameter(self.module.slices[self.key].param)


def search_groups(model: nn.Module) -> list[SearchGroup]:
    """Every searched group of a prepared model, in module order, tied groups once (their MACs
    summed over the layers that share them, `layer` the one with the most)."""
    names = {id(p): n for n, p in model.named_parameters()}
    users: dict[int, list[tuple[str, SearchableMixin, str]]] = {}
    for module_name, mod in model.named_modules():
        if isinstance(mod, SearchableMixin):
            for key in mod.slices:
                users.setdefault(id(mod.choice(key)), []).append((module_name, mod, key))
    out = []
    for sharers in users.values():
        module_name, mod, key = sharers[0]
        choice = mod.choice(key)
        where = mod.slices[key]
        w = mod.get_parameter(where.param)
        part = where.of(w)
        scales = max(q.num_scales(part.shape) for q in choice.quantizers) or 1
        positions = [(m.positions, n) for n, m, _ in sharers]
        macs = layer = None
        if all(p is not None for p, _ in positions):
            macs = part.numel() * sum(p for p, _ in positions)
            layer = max(positions)[1] if macs else None
        settings = choice.settings or QuantizerSettings()
        gp = GroupPlan(names[id(w)], where.rows, part.numel(), choice.argmax_bits(), scales,
                       tuple(choice.probs().tolist()), where.axis, macs, layer, settings.method, settings.per_channel)
        out.append(SearchGroup(f"{module_name}.{key}" if module_name else key, mod, key, choice, gp))
    return out


def machinery_ids(model: nn.Module) -> set[int]:
    """Parameters of the search machinery (theta, quantizer scales, activation clipping values)."""
    choices = [g.choice for g in search_groups(model)] + [g.choice for g in activation_groups(model)]
    return {id(p) for c in choices for p in c.parameters()}


def fixed_numel(model: nn.Module) -> int:
    """Parameters outside every searched group (biases, norms, excluded layers), counted once;
    theta, quantizer scales and activation clipping values are not model weights (scales are
    counted with their group)."""
    searched = {id(g.weight) for g in search_groups(model)}
    machinery = machinery_ids(model)
    return sum(p.numel() for p in unique_parameters(model) if id(p) not in searched and id(p) not in machinery)


def unique_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return iter(dict((id(p), p) for p in model.parameters()).values())
