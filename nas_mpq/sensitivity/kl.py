"""KL sensitivity per weight group (ALGORITHMS.md section 5): quantize only group g to b bits and
measure the mean KL divergence of the next-token distributions from the FP32 model's on held-out
tokens. G x K forward passes per batch; no gradients.

Example:
    >>> omega = kl_sensitivity(net, plan.groups, [1, 2, 4, 8, 32], batches, forward)
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..admm import group_weight
from ..plan import GroupPlan
from ..quant import make_quantizer

Logits = Callable[[nn.Module, object], torch.Tensor]


@torch.no_grad()
def kl_sensitivity(model: nn.Module, groups: Mapping[str, GroupPlan], candidates: Iterable[int],
                   batches: Iterable[object], logits_fn: Logits, method: str = "uniform",
                   per_channel: bool = False) -> dict[str, dict[int, float]]:
    """`Omega^KL_g(b) = mean_t KL(p_fp(.|x_t) || p_{g<-b}(.|x_t))`; the model is left unchanged."""
    candidates = list(candidates)
    was_training = model.training
    model.eval()
    values: list[torch.Tensor] = []  # KL per batch, group and candidate, in that order, on the device
    tokens = 0
    try:
        for batch in batches:
            ref = F.log_softmax(logits_fn(model, batch).flatten(0, -2), dim=-1)
            tokens += ref.shape[0]
            for n, g in groups.items():
                w = group_weight(model, g)
                original = w.detach().clone()
                for b in candidates:
                    w.copy_(make_quantizer(b, original, method, per_channel).value(original))
                    out = F.log_softmax(logits_fn(model, batch).flatten(0, -2), dim=-1)
                    kl = F.kl_div(out, ref, log_target=True, reduction="sum")
                    values.append(kl)
                w.copy_(original)
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no batches to measure the KL sensitivity on")
    sums = {n: {b: 0.0 for b in candidates} for n in groups}
    slots = [(n, b) for n in groups for b in candidates]
    for i, kl in enumerate(torch.stack(values).tolist() if values else []):  # one read from the device
        n, b = slots[i % len(slots)]
        sums[n][b] += kl  # batch after batch, as float32 values summed in float64
    return {n: {b: max(s / tokens, 0.0) for b, s in per.items()} for n, per in sums.items()}
