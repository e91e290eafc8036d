"""A prepared supernet run at one plan: each choice pinned to the plan's bit-width (evaluation
forwards use it instead of the argmax), and, inside `training_at_plan`, the training forwards too
(the sampler draws nothing; the weight step of `weights_at: plan`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ..plan import PrecisionPlan
from .activations import activation_groups
from .groups import search_groups
from .surgery import get_sampler


def pin_plan_(net: nn.Module, plan: PrecisionPlan | None) -> None:
    """Evaluation forwards of `net` run `plan` (None: the argmax again); training samples are unaffected."""
    _pin(search_groups(net) + activation_groups(net), plan)


def _pin(groups: list, plan: PrecisionPlan | None) -> None:
    bits = {} if plan is None else {**plan.bits, **plan.activation_bits}
    for g in groups:
        g.choice.pinned = g.choice.candidates.index(bits[g.name]) if bits else None


@contextmanager
def training_at_plan(net: nn.Module, plan: PrecisionPlan) -> Iterator[None]:
    """Inside the block every forward of `net` runs `plan`, training ones too: no sample drawn, one
    candidate per group. After it the pins and the picks are forgotten (the argmax is read afresh)."""
    sampler, groups = get_sampler(net), search_groups(net) + activation_groups(net)
    _pin(groups, plan)
    sampler.fixed = True
    try:
        yield
    finally:
        sampler.fixed = False
        _pin(groups, None)
        for g in groups:
            g.choice.set_sample(None)
