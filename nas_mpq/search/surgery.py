"""Model surgery: turn a float model into a supernet, a supernet or float model into a fixed-plan
QAT model, and read the plan off a supernet.

Example:
    >>> net = LSTMLM(vocab_size=1000)
    >>> prepare_search_(net, space)            # every group gets a Gumbel-softmax choice
    >>> plan = derive_plan(net, space, budget=Budget("avg_bits", 2.0))
    >>> apply_plan_(LSTMLM(vocab_size=1000), plan, space)   # fixed precision, ready for QAT
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Mapping

import torch
from torch import nn

from ..plan import ActivationPlan, Budget, GroupPlan, PrecisionPlan, layers
from ..quant import make_quantizer
from .choice import GumbelSampler, MixedPrecisionChoice
from .knapsack import repair_plan
from .activations import (ACTIVATION_LAYERS, activation_groups, attach_input_choices_,
                          detach_input_choices_, move_input_choice)
from .layers import (SEARCHABLE, SPLITTABLE, BlockSplit, FreqBuckets, GroupSlice, SearchableMixin, SearchConv2d,
                     SearchLSTM)
from .space import GroupRule, SearchSpace

_SAMPLER = "_nas_mpq_sampler"
_HOOK = "_nas_mpq_hook"


@dataclass(frozen=True)
class SearchGroup:
    """A searched group as found in a prepared model."""

    name: str
    module: SearchableMixin
    key: str
    choice: MixedPrecisionChoice
    plan: GroupPlan


def _named_parameters_ids(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _group_candidates(space: SearchSpace, module_name: str, key: str,
                      override: Mapping[str, list[int]] | None) -> list[int]:
    name = f"{module_name}.{key}"
    if override is not None:
        if name not in override:
            raise KeyError(name)
        return override[name]
    rule = space.rule_for(module_name)
    return rule.candidates if rule and rule.candidates else space.candidates


def prepare_search_(model: nn.Module, space: SearchSpace, *,
                    candidates: Mapping[str, list[int]] | None = None,
                    activation_candidates: Mapping[str, list[int]] | None = None,
                    sampler: GumbelSampler | None = None) -> nn.Module:
    """Replace every searchable layer (Linear, Embedding, LSTM, Conv2d) of `model` in place by its
    searchable subclass, with one choice per weight group, and (when the space searches
    activations) give every searched Linear/Conv2d an input choice over the space's activation
    candidates. `candidates` / `activation_candidates` override them per group / layer name
    (apply_plan_ passes one bit-width each). Parameters shared between layers (tied
    embedding/output) form one group. Every forward of the model then draws fresh Gumbel noise
    from `sampler` in training mode and uses the argmax in eval mode."""
    to_float_(model)
    detach_input_choices_(model)
    by_param: dict[int, dict[str, MixedPrecisionChoice]] = {}
    slices: dict[int, dict[str, GroupSlice]] = {}
    inputs: dict[str, list[int]] = dict(activation_candidates or {})
    for module_name, mod in list(model.named_modules()):
        cls = SEARCHABLE.get(type(mod))
        rule = space.rule_for(module_name)
        if cls is None or (rule is not None and rule.exclude):
            continue

        def make_choice(key: str, w: torch.Tensor, _name: str = module_name) -> MixedPrecisionChoice:
            bits = _group_candidates(space, _name, key, candidates)
            return MixedPrecisionChoice([make_quantizer(b, w, space.method, space.per_channel)
                                         for b in bits])

        shared = by_param.get(id(getattr(mod, "weight", None)))
        split = _split_for(rule, cls, module_name)
        if cls is SearchLSTM:
            granularity = (rule.granularity if rule and rule.granularity else "gate")
            new = SearchLSTM.from_float(mod, make_choice, granularity)
        else:
            new = cls.from_float(mod, make_choice, shared, split)
            if shared is not None and slices[id(mod.weight)] != new.slices:
                raise ValueError(f"{module_name!r} shares its weight with a layer grouped differently "
                                 f"({sorted(shared)} vs {sorted(new.choices)}); give tied layers the same granularity")
            by_param.setdefault(id(mod.weight), dict(new.choices))
            slices.setdefault(id(mod.weight), dict(new.slices))
        _set_submodule(model, module_name, new)
        if activation_candidates is None and space.activation_candidates and isinstance(new, ACTIVATION_LAYERS):
            inputs[module_name] = space.activation_candidates
    _record_positions(model)  # before the input choices, which would calibrate on the probe
    attach_input_choices_(model, inputs)
    searched = [g.choice for g in search_groups(model) if g.choice.theta is not None]
    searched += [g.choice for g in activation_groups(model) if g.choice.theta is not None]
    if searched:
        sampler = sampler or GumbelSampler()
        setattr(model, _SAMPLER, sampler)
        setattr(model, _HOOK, model.register_forward_pre_hook(partial(_resample, sampler, searched)))
    return model


def _split_for(rule: GroupRule | None, cls: type, module_name: str) -> BlockSplit | FreqBuckets | None:
    """The row/column split a rule asks of a layer (None: one group), or ValueError if the layer
    cannot take it."""
    if rule is None or rule.granularity in (None, "tensor", "gate"):
        return None
    if rule.granularity not in SPLITTABLE.get(cls, ()):
        raise ValueError(f"granularity {rule.granularity!r} (rule {rule.pattern!r}) does not apply to the "
                         f"{cls.__name__.removeprefix('Search').lower()} {module_name!r}")
    if rule.granularity == "freq_buckets":
        return FreqBuckets(rule.blocks)
    return BlockSplit(rule.blocks, rule.axis, "h" if rule.granularity == "head" else "b")


@torch.no_grad()
def _record_positions(model: nn.Module) -> None:
    """Convolutions learn their output size (for MACs) from one forward of the model's
    `example_input(1)`, when it has one."""
    convs = [m for m in model.modules() if isinstance(m, SearchConv2d)]
    if not convs or not hasattr(model, "example_input"):
        return
    was_training = model.training
    model.eval()
    model(*model.example_input(1))
    model.train(was_training)


def _resample(sampler: GumbelSampler, choices: list[MixedPrecisionChoice],
              model: nn.Module, args: tuple) -> None:
    """Forward pre-hook: one fresh sample per choice and forward (tied layers share it)."""
    for choice in choices:
        choice.sample = sampler.sample(choice.theta) if model.training else None


def get_sampler(model: nn.Module) -> GumbelSampler:
    """The Gumbel sampler of a prepared supernet."""
    if not hasattr(model, _SAMPLER):
        raise ValueError("model has no mixed-precision choices; call prepare_search_ first")
    return getattr(model, _SAMPLER)


def to_float_(model: nn.Module) -> nn.Module:
    """Undo prepare_search_/apply_plan_ in place: plain float layers sharing the same parameters."""
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


def search_groups(model: nn.Module) -> list[SearchGroup]:
    """Every searched group of a prepared model, in module order, tied groups once (their MACs
    summed over the layers that share them, `layer` the one with the most)."""
    names = _named_parameters_ids(model)
    users: dict[int, list[tuple[str, SearchableMixin, str]]] = {}
    for module_name, mod in model.named_modules():
        if isinstance(mod, SearchableMixin):
            for key, choice in mod.choices.items():
                users.setdefault(id(choice), []).append((module_name, mod, key))
    out = []
    for sharers in users.values():
        module_name, mod, key = sharers[0]
        choice = mod.choices[key]
        where = mod.slices[key]
        w = getattr(mod, where.param)
        part = where.of(w)
        scales = max(q.num_scales(part.shape) for q in choice.quantizers) or 1
        positions = [(m.positions, n) for n, m, _ in sharers]
        macs = layer = None
        if all(p is not None for p, _ in positions):
            macs = part.numel() * sum(p for p, _ in positions)
            layer = max(positions)[1] if macs else None
        gp = GroupPlan(names[id(w)], where.rows, part.numel(), choice.argmax_bits(), scales,
                       tuple(choice.probs().tolist()), where.axis, macs, layer)
        out.append(SearchGroup(f"{module_name}.{key}", mod, key, choice, gp))
    return out


def fixed_numel(model: nn.Module) -> int:
    """Parameters outside every searched group (biases, norms, excluded layers), counted once;
    theta, quantizer scales and activation clipping values are not model weights (scales are
    counted with their group)."""
    groups = search_groups(model)
    searched = {id(getattr(g.module, g.module.slices[g.key].param)) for g in groups}
    machinery = {id(p) for g in groups for p in g.choice.parameters()}
    machinery |= {id(p) for g in activation_groups(model) for p in g.choice.parameters()}
    return sum(p.numel() for p in _unique_parameters(model)
               if id(p) not in searched and id(p) not in machinery)


def _unique_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    return iter(dict((id(p), p) for p in model.parameters()).values())


def derive_plan(model: nn.Module, space: SearchSpace, budget: Budget | None = None,
                min_fill: float | None = None) -> PrecisionPlan:
    """The plan of a supernet: argmax of theta per group, then (with a budget) the size-priced
    knapsack repair (knapsack.repair_plan), so the plan meets the budget; with `min_fill` it also
    uses at least that fraction of it. plan.extra["repair"] reports what the repair changed."""
    groups, acts = search_groups(model), activation_groups(model)
    activations = {a.name: ActivationPlan(a.choice.argmax_bits(), tuple(a.choice.probs().tolist())) for a in acts}
    plan = PrecisionPlan(space.name, sorted({b for g in groups for b in g.choice.candidates}),
                         {g.name: g.plan for g in groups}, fixed_numel(model), budget, activations=activations)
    if budget is None:
        return _keep_every_layer(plan, {g.name: g.choice for g in groups})
    return repair_plan(plan, {g.name: g.choice.candidates for g in groups},
                       {g.name: g.choice.probs().tolist() for g in groups}, min_fill,
                       {a.name: a.choice.candidates for a in acts}, {a.name: a.choice.probs().tolist() for a in acts})


def _keep_every_layer(plan: PrecisionPlan, choices: Mapping[str, MixedPrecisionChoice]) -> PrecisionPlan:
    """An argmax plan that prunes every group of a layer gets back the group and bit-width the
    search found most likely among the non-zero choices of that layer."""
    bits = plan.bits
    for names in layers(plan.groups).values():
        if all(bits[n] == 0 for n in names):
            _, name, b = max((p, n, b) for n in names
                             for b, p in zip(choices[n].candidates, choices[n].probs().tolist()) if b != 0)
            bits[name] = b
    return plan.with_bits(bits)


def check_plan_matches(model: nn.Module, plan: PrecisionPlan, space: SearchSpace) -> None:
    """Raise ValueError naming the groups if `plan` does not fit `model` under `space`."""
    probe = prepare_search_(_structure_copy(model), space)
    expected = {g.name: g.plan for g in search_groups(probe)}
    missing = sorted(set(expected) - set(plan.groups))
    extra = sorted(set(plan.groups) - set(expected))
    shape = sorted(n for n in set(expected) & set(plan.groups)
                   if (expected[n].param, expected[n].rows, expected[n].axis, expected[n].numel)
                   != (plan.groups[n].param, plan.groups[n].rows, plan.groups[n].axis, plan.groups[n].numel))
    modules = dict(probe.named_modules())
    inputs = sorted(n for n in plan.activations if not isinstance(modules.get(n), ACTIVATION_LAYERS))
    if missing or extra or shape or inputs:
        raise ValueError(
            "the plan does not match the model: "
            + "; ".join(f"{what}: {names}" for what, names in
                        (("groups missing from the plan", missing), ("plan groups not in the model", extra),
                         ("groups whose parameter, rows or size differ", shape),
                         ("activation layers that are not Linear/Conv2d layers of the model", inputs)) if names))


def _structure_copy(model: nn.Module) -> nn.Module:
    """A float copy of `model` (tied parameters stay tied; the sampler and its hook are not copied)."""
    memo = {id(getattr(model, a)): None for a in (_SAMPLER, _HOOK) if hasattr(model, a)}
    clone = copy.deepcopy(model, memo)
    for a in (_SAMPLER, _HOOK):
        clone.__dict__.pop(a, None)
    clone._forward_pre_hooks.clear()
    return to_float_(clone)


def uniform_plan(model: nn.Module, space: SearchSpace, bits: int, act_bits: int | None = None) -> PrecisionPlan:
    """The plan with every group of `model` (float or prepared) under `space` at `bits`, and
    every input the space searches at `act_bits` (None: activations stay in float)."""
    probe = prepare_search_(_structure_copy(model), space)
    plan = derive_plan(probe, space).with_bits({g.name: bits for g in search_groups(probe)})
    acts = {} if act_bits is None else {n: ActivationPlan(act_bits) for n in plan.activations}
    return dataclasses.replace(plan, activations=acts)


def apply_plan_(model: nn.Module, plan: PrecisionPlan, space: SearchSpace) -> nn.Module:
    """Make `model` (float or supernet) a fixed-precision QAT model in place: each group gets the
    single quantizer of its planned bits, each layer input the plan quantizes its activation
    quantizer. Raises ValueError naming mismatched groups."""
    check_plan_matches(model, plan, space)
    return prepare_search_(model, space, candidates={n: [g.bits] for n, g in plan.groups.items()},
                           activation_candidates={n: [a.bits] for n, a in plan.activations.items()})
