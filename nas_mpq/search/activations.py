"""Activation bit-width choices: the input of a Linear or Conv2d layer goes through a
MixedPrecisionChoice over activation quantizers (composed element-wise, `sum_k y_k Q_k(x)`), held
by the layer as `input_choice` and applied by a forward pre-hook, so it works on float and
searchable layers alike and survives model surgery (`move_input_choice`).

Example:
    >>> attach_input_choices_(net, {"decoder": [4, 8, 32]})
    >>> [g.name for g in activation_groups(net)]
    ['decoder']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..quant import ActivationQuantizer
from .choice import MixedPrecisionChoice

ACTIVATION_LAYERS = (nn.Linear, nn.Conv2d)
"""Layer types whose input can be quantized (searchable subclasses included)."""


@dataclass(frozen=True)
class ActivationGroup:
    name: str
    module: nn.Module
    choice: MixedPrecisionChoice


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_choice.composite(args[0]),) + tuple(args[1:])


def _has_hook(module: nn.Module) -> bool:
    return any(h is _quantize_input for h in module._forward_pre_hooks.values())


def attach_input_choice(module: nn.Module, choice: MixedPrecisionChoice) -> None:
    if not isinstance(module, ACTIVATION_LAYERS):
        raise ValueError(f"activations can be quantized at the input of Linear and Conv2d layers, not "
                         f"{type(module).__name__}")
    module.input_choice = choice
    if not _has_hook(module):
        module.register_forward_pre_hook(_quantize_input)


def detach_input_choice(module: nn.Module) -> MixedPrecisionChoice | None:
    """Remove the module's input choice and its hook; returns the choice (None if it had none)."""
    for key in [k for k, h in module._forward_pre_hooks.items() if h is _quantize_input]:
        del module._forward_pre_hooks[key]
    return module._modules.pop("input_choice", None)


def move_input_choice(old: nn.Module, new: nn.Module) -> None:
    """`new` replaces `old` in a model (surgery): it takes over the input choice, if any."""
    choice = old._modules.get("input_choice")
    detach_input_choice(new)
    if choice is not None and new is not old:
        attach_input_choice(new, choice)


def attach_input_choices_(model: nn.Module, candidates: Mapping[str, list[int]]) -> nn.Module:
    """Give each named layer an input choice over `candidates[name]` (one bit-width: a fixed
    activation quantizer). Raises ValueError naming layers that are missing or not Linear/Conv2d."""
    modules = dict(model.named_modules())
    bad = sorted(n for n in candidates if not isinstance(modules.get(n), ACTIVATION_LAYERS))
    if bad:
        raise ValueError(f"cannot quantize the input of {bad}: not Linear or Conv2d layers of the model")
    for name, bits in candidates.items():
        attach_input_choice(modules[name], MixedPrecisionChoice([ActivationQuantizer(b) for b in bits]))
    return model


def detach_input_choices_(model: nn.Module) -> nn.Module:
    for mod in model.modules():
        detach_input_choice(mod)
    return model


def activation_groups(model: nn.Module) -> list[ActivationGroup]:
    """Every layer with an input choice, in module order."""
    return [ActivationGroup(name, mod, mod.input_choice) for name, mod in model.named_modules()
            if isinstance(mod._modules.get("input_choice"), MixedPrecisionChoice)]


@torch.no_grad()
def calibrate_activations_(model: nn.Module, inputs: tuple[Any, ...]) -> bool:
    """Calibrate every uncalibrated activation quantizer (all candidates) on the layer inputs of
    one forward of `inputs` (eval mode); returns whether there were any. Run it on the same batch
    in every process, so data-parallel replicas start from the same clipping values."""
    pending = {g.module: [q for q in g.choice.quantizers if isinstance(q, ActivationQuantizer)
                          and q.bits < 16 and not q.flags()[0]] for g in activation_groups(model)}
    pending = {m: qs for m, qs in pending.items() if qs}
    if not pending:
        return False

    def calibrate(module: nn.Module, args: tuple) -> None:
        for q in pending.get(module, ()):
            if not q.flags()[0]:
                q.calibrate_(args[0])

    handles = [m.register_forward_pre_hook(calibrate, prepend=True) for m in pending]
    was_training = model.training
    try:
        model.eval()
        model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return True
