"""Model surgery: turn a float model into a supernet, a supernet or float model into a fixed-plan
QAT model, and back.

Every module the layer registry matches (registry.py: nn.Linear and its subclasses, Embedding,
LSTM, Conv2d, MultiheadAttention, transformers' Conv1D, and the layers users register) is
replaced in place by its searchable layer. Which of its weights are searched, in which groups and
over which quantizers comes from a search space's rules (prepare_search_) or from a plan, which
records every group's slice, bits and quantizer settings (apply_plan_).

Example:
    >>> net = LSTMLM(vocab_size=1000)
    >>> prepare_search_(net, space)            # every group gets a Gumbel-softmax choice
    >>> plan = derive_plan(net, space, budget=Budget("avg_bits", 2.0))
    >>> apply_plan_(LSTMLM(vocab_size=1000), plan)   # fixed precision, ready for QAT
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..plan import ActivationPlan, GroupPlan, PrecisionPlan
from .activations import (ACTIVATION_LAYERS, activation_groups, attach_input_choices_, detach_input_choices_,
                          move_input_choice)
from .choice import MixedPrecisionChoice, record_argmax_
from .coverage import check_full_coverage, coverage_report, unsupported
from .derive import derive_plan
from .groups import search_groups
from .layers import GroupSlice, SearchableMixin, SearchConv2d
from .registry import find_layer
from .sampler import GumbelSampler
from .space import GroupRule, SearchSpace, rule_names

_SAMPLER = "_nas_mpq_sampler"
_HOOK = "_nas_mpq_hook"
logger = logging.getLogger(__name__)


def _join(layer_name: str, key: str) -> str:
    return f"{layer_name}.{key}" if layer_name else key


class _SpaceGrouping:
    """Groups and candidate quantizers as a search space's rules give them."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def _rule(self, layer_name: str, param: str) -> GroupRule | None:
        return self.space.rule_for(*rule_names(layer_name, param))

    def slices(self, layer_name: str, mod: nn.Module, cls: type[SearchableMixin], param: str) -> dict[str, GroupSlice]:
        rule = self._rule(layer_name, param)
        if rule is not None and rule.exclude:
            return {}
        grouping = rule.grouping if rule and rule.grouping else cls.default_grouping
        if grouping not in {"tensor", cls.default_grouping, *cls.groupings}:
            raise ValueError(f"grouping {grouping!r} (rule {rule.pattern!r}) does not apply to the "
                             f"{cls.__name__.removeprefix('Search').lower()} {layer_name!r}")
        return cls.param_slices(mod, param, grouping, rule)

    def choice(self, layer_name: str, key: str, w: torch.Tensor) -> MixedPrecisionChoice:
        rule = self._rule(layer_name, key.split(":")[0])
        settings = self.space.settings
        bits = rule.candidates if rule and rule.candidates else self.space.candidates
        return MixedPrecisionChoice([settings.quantizer(b, w) for b in bits], settings)


class _PlanGrouping:
    """Groups and their single quantizers as a plan records them (slice, bits, settings); None
    for a parameter the plan does not name."""

    def __init__(self, plan: PrecisionPlan) -> None:
        self.plan = plan
        self.by_param: dict[str, dict[str, GroupPlan]] = {}
        for name, g in plan.groups.items():
            self.by_param.setdefault(g.param, {})[name] = g

    def slices(self, layer_name: str, mod: nn.Module, cls: type[SearchableMixin], param: str) -> dict[str, GroupSlice] | None:
        prefix, w = _join(layer_name, ""), mod.get_parameter(param)
        out = {name[len(prefix):]: GroupSlice(param, g.rows, g.axis)
               for name, g in self.by_param.get(_join(layer_name, param), {}).items()
               if name.startswith(prefix) and name[len(prefix):].split(":")[0] == param and _fits(g, w)}
        return out or None

    def choice(self, layer_name: str, key: str, w: torch.Tensor) -> MixedPrecisionChoice:
        g = self.plan.groups[_join(layer_name, key)]
        return MixedPrecisionChoice([g.settings.quantizer(g.bits, w)], g.settings)


def _fits(g: GroupPlan, w: torch.Tensor) -> bool:
    return g.rows is None or (g.axis < w.dim() and 0 <= g.rows[0] < g.rows[1] <= w.shape[g.axis])


def _replace_layers(model: nn.Module, grouping: _SpaceGrouping | _PlanGrouping) -> list[str]:
    """Replace every registered layer with groups by its searchable layer; the names replaced.
    A parameter shared between layers (tied embedding and softmax layer) is grouped by the first
    layer that has it, the others share its choices."""
    seen: dict[int, tuple[str, dict[str, GroupSlice], dict[str, MixedPrecisionChoice]]] = {}
    owned: set[str] = set()
    replaced = []
    for layer_name, mod in list(model.named_modules()):
        cls = None if layer_name in owned else find_layer(mod).searchable
        if cls is None:
            continue
        if not layer_name:
            raise ValueError(f"the model itself is a single layer ({type(mod).__name__}); wrap it in a module to search it")
        owned.update(_join(layer_name, c) for c in cls.owned_children)
        groups: dict[str, GroupSlice] = {}
        shared: dict[str, MixedPrecisionChoice] = {}
        first_here: list[int] = []  # parameters this layer is the first to group
        for param in cls.weight_names(mod):
            w, own = mod.get_parameter(param), grouping.slices(layer_name, mod, cls, param)
            if id(w) not in seen:
                if own is not None:
                    groups.update(own)
                    seen[id(w)] = (param, own, {})
                    first_here.append(id(w))
                continue
            first, first_slices, first_choices = seen[id(w)]
            tied = {param + k[len(first):]: GroupSlice(param, s.rows, s.axis) for k, s in first_slices.items()}
            if own is not None and own != tied:
                raise ValueError(f"{layer_name!r} shares its weight with a layer grouped differently "
                                 f"({sorted(tied)} vs {sorted(own)}); give tied layers the same grouping")
            groups.update(tied)
            shared.update({param + k[len(first):]: c for k, c in first_choices.items()})
        if not groups:
            continue
        new = cls.from_float(mod, partial(grouping.choice, layer_name), groups, shared)
        for key in first_here:
            seen[key][2].update({k: new.choice(k) for k in seen[key][1]})
        _set_submodule(model, layer_name, new)
        replaced.append(layer_name)
    return replaced


def _prepare(model: nn.Module, grouping: _SpaceGrouping | _PlanGrouping,
             inputs: Callable[[nn.Module, list[str]], Mapping[str, list[int]]],
             sampler: GumbelSampler | None = None) -> nn.Module:
    to_float_(model)
    detach_input_choices_(model)
    replaced = _replace_layers(model, grouping)
    _record_positions(model)  # before the input choices, which would calibrate on the probe
    attach_input_choices_(model, inputs(model, replaced))
    searched = [g.choice for g in search_groups(model) if g.choice.theta is not None]
    searched += [g.choice for g in activation_groups(model) if g.choice.theta is not None]
    if searched:
        sampler = sampler or GumbelSampler()
        setattr(model, _SAMPLER, sampler)
        setattr(model, _HOOK, _Hooks((model.register_forward_pre_hook(partial(_resample, sampler, searched)),
                                      model.register_forward_hook(partial(_forget_argmax, searched)))))
    return model


def _prepare_with_space(model: nn.Module, space: SearchSpace, sampler: GumbelSampler | None = None) -> dict:
    """prepare_search_ without the warning; returns the coverage report."""
    def inputs(net: nn.Module, replaced: list[str]) -> dict[str, list[int]]:
        if not space.activation_candidates:
            return {}
        return {n: space.activation_candidates for n in replaced
                if isinstance(net.get_submodule(n), ACTIVATION_LAYERS)}

    _prepare(model, _SpaceGrouping(space), inputs, sampler)
    report = coverage_report(model, space)
    try:
        check_full_coverage(report, space)
    except ValueError:
        detach_input_choices_(to_float_(model))
        raise
    return report


def prepare_search_(model: nn.Module, space: SearchSpace, *, sampler: GumbelSampler | None = None) -> nn.Module:
    """Replace every searchable layer of `model` in place by its searchable layer, with one
    choice per weight group under `space`, and (when the space searches activations) give every
    searched Linear/Conv2d an input choice over the space's activation candidates. Parameters
    shared between layers (tied embedding/output) form one group. Every forward of the model
    then draws fresh Gumbel noise from `sampler` in training mode and uses the argmax in eval
    mode. Weights no searchable layer covers are named in a warning, or, when the space demands
    full coverage, in a ValueError (the model is left as it was)."""
    report = _prepare_with_space(model, space, sampler)
    missing = unsupported(report)
    if missing:
        logger.warning("%.1f %% of the weights are searched; not searchable: %s", 100 * report["searched_share"],
                       "; ".join(f"{n} ({why})" for n, why in missing.items()))
    return model


@torch.no_grad()
def _record_positions(model: nn.Module) -> None:
    """Convolutions learn their output size (for MACs) from one forward of the model's
    `example_input(1)`, when it has one, moved to the device of the model's first parameter (and
    a float input to its dtype: a float64 model gets a float64 image)."""
    convs = [m for m in model.modules() if isinstance(m, SearchConv2d)]
    if not convs or not hasattr(model, "example_input"):
        return
    first = next(model.parameters())

    def moved(t: torch.Tensor) -> torch.Tensor:
        return t.to(first.device, first.dtype) if t.is_floating_point() else t.to(first.device)
    was_training = model.training
    model.eval()
    model(*(moved(t) if isinstance(t, torch.Tensor) else t for t in model.example_input(1)))
    model.train(was_training)


def _resample(sampler: GumbelSampler, choices: list[MixedPrecisionChoice],
              model: nn.Module, args: tuple) -> None:
    """Forward pre-hook: in training, one fresh sample per choice and forward (tied layers share
    it); in evaluation, or in training while `sampler.fixed`, none: the argmax (or pinned
    candidate) of every choice read at once."""
    if not model.training or sampler.fixed:
        record_argmax_(choices)
        return
    for choice, (y, index) in zip(choices, sampler.draw([c.theta for c in choices])):
        choice.set_sample(y, index)


def _forget_argmax(choices: list[MixedPrecisionChoice], model: nn.Module, args: tuple, output: Any) -> None:
    """Forward hook: after an evaluation forward, the argmax it recorded is forgotten (read again
    when theta is next needed), so a later change of theta cannot meet a stale pick."""
    if not model.training:
        for choice in choices:
            choice.set_sample(None)


class _Hooks(NamedTuple):
    """The model's sampling hooks (before and after its forward), removed together."""

    handles: tuple[RemovableHandle, ...]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def get_sampler(model: nn.Module) -> GumbelSampler:
    """The Gumbel sampler of a prepared supernet."""
    if not hasattr(model, _SAMPLER):
        raise ValueError("model has no mixed-precision choices; call prepare_search_ first")
    return getattr(model, _SAMPLER)


def to_float_(model: nn.Module) -> nn.Module:
    """Undo prepare_search_/apply_plan_ in place: the float layers, sharing the same parameters."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SearchableMixin):
            _set_submodule(model, name, mod.to_float())
    if hasattr(model, _HOOK):
        getattr(model, _HOOK).remove()
        delattr(model, _HOOK)
        delattr(model, _SAMPLER)
    return model


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    move_input_choice(model.get_submodule(name), new)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def check_plan_matches(model: nn.Module, plan: PrecisionPlan, space: SearchSpace | None = None) -> None:
    """Raise ValueError naming the groups if `plan` does not fit `model`: every group must be a
    slice of a weight of a searchable layer with its size, each quantized layer input that of a
    searched Linear/Conv2d, and every parameter the plan's coverage report lists as searched must
    be tiled by its groups; with `space`, the plan's groups must also be exactly the space's.
    Without `space` or a coverage report (a plan written by hand), a weight the plan has no group
    for is not noticed: it stays in float."""
    probe = _structure_copy(model)
    if space is not None:
        _prepare_with_space(probe, space)
    else:
        _prepare(probe, _PlanGrouping(plan), lambda net, replaced: {})
    expected = {g.name: g.plan for g in search_groups(probe)}
    missing = sorted(set(expected) - set(plan.groups))
    extra = sorted(set(plan.groups) - set(expected))
    covered: dict[str, int] = {}  # elements of each parameter that the plan's groups slice
    for g in plan.groups.values():
        covered[g.param] = covered.get(g.param, 0) + g.numel
    shape = sorted(n for n in set(expected) & set(plan.groups)
                   if (expected[n].param, expected[n].rows, expected[n].axis, expected[n].numel)
                   != (plan.groups[n].param, plan.groups[n].rows, plan.groups[n].axis, plan.groups[n].numel)
                   or covered[plan.groups[n].param] != probe.get_parameter(plan.groups[n].param).numel())
    params = dict(probe.named_parameters(remove_duplicate=False))
    tiled: dict[int, int] = {}  # elements of each tensor (tied names once) that the plan's groups slice
    for g in plan.groups.values():
        if g.param in params:
            tiled[id(params[g.param])] = tiled.get(id(params[g.param]), 0) + g.numel
    untiled = sorted(n for n in plan.extra.get("coverage", {}).get("searched", {})
                     if n not in params or tiled.get(id(params[n])) != params[n].numel())
    modules = dict(probe.named_modules())
    owned = {_join(n, c) for n, m in modules.items() if isinstance(m, SearchableMixin) for c in m.owned_children}
    inputs = sorted(n for n in plan.activations if n in owned or not isinstance(modules.get(n), ACTIVATION_LAYERS))
    if missing or extra or shape or untiled or inputs:
        raise ValueError(
            "the plan does not match the model: "
            + "; ".join(f"{what}: {names}" for what, names in
                        (("groups missing from the plan", missing), ("plan groups not in the model", extra),
                         ("groups whose parameter, rows or size differ", shape),
                         ("searched parameters the plan's groups do not cover", untiled),
                         ("activation layers that are not Linear/Conv2d layers of the model", inputs)) if names))


def _structure_copy(model: nn.Module) -> nn.Module:
    """A float copy of `model` (tied parameters stay tied; the sampler and its hook are not copied)."""
    memo = {id(getattr(model, a)): None for a in (_SAMPLER, _HOOK) if hasattr(model, a)}
    clone = copy.deepcopy(model, memo)
    for a in (_SAMPLER, _HOOK):
        clone.__dict__.pop(a, None)
    clone._forward_pre_hooks.clear()
    for handle in getattr(model, _HOOK).handles if hasattr(model, _HOOK) else ():
        clone._forward_hooks.pop(handle.id, None)
    return to_float_(clone)


def uniform_plan(model: nn.Module, space: SearchSpace, bits: int, act_bits: int | None = None) -> PrecisionPlan:
    """The plan with every group of `model` (float or prepared) under `space` at `bits`, and
    every input the space searches at `act_bits` (None: activations stay in float)."""
    probe = _structure_copy(model)
    _prepare_with_space(probe, space)
    plan = derive_plan(probe, space).with_bits({g.name: bits for g in search_groups(probe)})
    acts = {} if act_bits is None else {n: ActivationPlan(act_bits) for n in plan.activations}
    return dataclasses.replace(plan, activations=acts)


def apply_plan_(model: nn.Module, plan: PrecisionPlan, space: SearchSpace | None = None) -> nn.Module:
    """Make `model` (float or supernet) a fixed-precision QAT model in place: each group of the
    plan gets the single quantizer of its bits and settings, each layer input the plan quantizes
    its activation quantizer. The plan is all it needs; a `space` given is checked against the
    plan too. Raises ValueError naming mismatched groups."""
    check_plan_matches(model, plan, space)
    return _prepare(model, _PlanGrouping(plan), lambda net, replaced: {n: [a.bits] for n, a in plan.activations.items()})
