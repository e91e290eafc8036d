"""Hutchinson estimates of the Hessian trace of the loss per weight group, and the HAWQ-V2
perturbation metric (ALGORITHMS.md section 5).

One Hessian-vector product serves every group: with v Rademacher over all searched parameters,
Tr(H_g) ~ E[<v_g, (Hv)_g>] where the subscript takes the group's slice. Samples are drawn until the
relative change of the running means (L1 over groups) is below `tol` (after `min_samples`), at
most `max_samples`, on each of the given batches; the traces are averaged over batches.

Example:
    >>> traces = hutchinson_traces(net, loss_fn, batches, plan.groups)
    >>> omega = hawq_omega(net, plan.groups, traces, candidates=[1, 2, 4, 8, 32])
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..admm import group_weight
from ..plan import GroupPlan
from ..quant import make_quantizer

LossFn = Callable[[nn.Module, object], torch.Tensor]


@dataclass
class TraceEstimate:
    traces: dict[str, float]
    samples: list[int]  # Hutchinson samples used on each batch


def _rademacher(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A +-1 vector shaped like p, drawn on the host (the same draws on every device), on p's device."""
    return (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.device, p.dtype)


@contextmanager
def double_backward_kernels() -> Iterator[None]:
    """Kernels that can be differentiated twice: the math attention (the fused attention kernels
    have no double backward, on the CPU as on CUDA) and no cuDNN (its RNN backward has none)."""
    with sdpa_kernel(SDPBackend.MATH), torch.backends.cudnn.flags(enabled=False):
        yield


@double_backward_kernels()
def hutchinson_traces(model: nn.Module, loss_fn: LossFn, batches: Iterable[object],
                      groups: Mapping[str, GroupPlan], max_samples: int = 100, min_samples: int = 10,
                      tol: float = 1e-3, seed: int = 0) -> TraceEstimate:
    """Tr(H_g) per group of the loss `loss_fn(model, batch)`, averaged over `batches`."""
    if not groups:
        raise ValueError("no groups to estimate traces for")
    params = list(dict.fromkeys(model.get_parameter(g.param) for g in groups.values()))
    index = {id(p): i for i, p in enumerate(params)}
    where = [index[id(model.get_parameter(g.param))] for g in groups.values()]
    generator = torch.Generator().manual_seed(seed)
    totals = {n: 0.0 for n in groups}
    used: list[int] = []
    for batch in batches:
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        means = {n: 0.0 for n in groups}
        for k in range(1, max_samples + 1):
            v = [_rademacher(p, generator) for p in params]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            moved = size = 0.0
            products = [(g.view(v[i]) * g.view(hv[i])).sum() for g, i in zip(groups.values(), where)]
            for n, sample in zip(groups, torch.stack(products).tolist()):  # one read from the device
                new = means[n] + (sample - means[n]) / k
                moved, size = moved + abs(new - means[n]), size + abs(new)
                means[n] = new
            if k >= min_samples and moved < tol * max(size, 1e-12):
                break
        used.append(k)
        for n in groups:
            totals[n] += means[n]
        del grads, loss
    if not used:
        raise ValueError("no batches to estimate traces on")
    return TraceEstimate({n: t / len(used) for n, t in totals.items()}, used)


@torch.no_grad()
def hawq_omega(model: nn.Module, groups: Mapping[str, GroupPlan], traces: Mapping[str, float],
               candidates: Iterable[int], method: str = "uniform",
               per_channel: bool = False) -> dict[str, dict[int, float]]:
    """`Omega_g(b) = max(Tr(H_g), 0) / n_g * ||Q_b(W_g) - W_g||^2` (negative trace estimates are
    clamped at 0)."""
    out: dict[str, dict[int, float]] = {}
    for n, g in groups.items():
        w = group_weight(model, g).detach()
        trace = max(traces[n], 0.0)
        out[n] = {b: trace / g.numel * float(((make_quantizer(b, w, method, per_channel).value(w) - w) ** 2).sum())
                  for b in candidates}
    return out
