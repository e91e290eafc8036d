"""Perplexity and accuracy of a network over batches, in plain PyTorch (no Lightning): what the
LightningModules log per pass, and what `nas-mpq evaluate` and the stages' test figures compute in
one process.

Batches are (inputs, targets) or (inputs, targets, first). The network says the task: one that
returns (logits, hidden) is a language model (logits per position; with `first` in its batches
the hidden state is carried from batch to batch and reset where `first` is set, without it every
batch starts afresh), and so is one that returns logits alone with one more dimension than
targets of two or more (B, T, V against B, T: no hidden state); any other is a classifier.

Example:
    >>> stream_metrics(net, datamodule.evaluation_batches("test"))
    {'ppl': 131.2}
    >>> split_metrics(net, datamodule, "test")
    {'test_ppl': 131.2}
"""
from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy), capped so a diverged model reports a large finite number."""
    return math.exp(min(mean_loss, 50.0))


class BatchOutput(NamedTuple):
    logits: torch.Tensor  # (N, C): per position for a language model, per example for a classifier
    targets: torch.Tensor  # (N,)
    hidden: Any  # a language model's new hidden state; None for a classifier
    classifier: bool


def forward_batch(net: nn.Module, batch: tuple, hidden: Any) -> BatchOutput:
    """`net` on one batch (inputs, targets[, first]); `hidden` is the state a language model
    carries over from the previous batch of its stream, used unless the batch has no `first` or
    `first` is set."""
    x, y, *first = batch
    out = net(x, None if first[0] else hidden) if first else net(x)
    if isinstance(out, tuple):
        logits, hidden = out
        return BatchOutput(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), hidden, False)
    if out.dim() == y.dim() + 1 and y.dim() > 1:  # logits per position, (B, T, V) against (B, T)
        return BatchOutput(out.reshape(-1, out.shape[-1]), y.reshape(-1), None, False)
    return BatchOutput(out, y, None, True)


def batch_logits(net: nn.Module, batch: tuple, hidden: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(logits (N, C), targets (N,), new hidden state) of one batch, as forward_batch."""
    logits, targets, hidden, _ = forward_batch(net, batch, hidden)
    return logits, targets, hidden


@torch.no_grad()
def stream_metrics(net: nn.Module, batches: Iterable[tuple]) -> dict[str, float]:
    """{"ppl": perplexity, and for a classifier "acc": accuracy} of `net` over the batches in
    order, carrying an LM's hidden state as the LightningModules do, in a plain loop: no Trainer,
    no distributed metric sync, so one process can evaluate while others have finished."""
    was_training = net.training
    net.eval()
    total, count, correct, hidden, classifier = 0.0, 0, 0, None, False
    for batch in batches:
        logits, y, hidden, classifier = forward_batch(net, batch, hidden)
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        count += y.numel()
    net.train(was_training)
    out = {"ppl": perplexity(total / max(count, 1))}
    if classifier:
        out["acc"] = correct / max(count, 1)
    return out


def split_metrics(net: nn.Module, datamodule: Any, split: str = "test") -> dict[str, float]:
    """{"<split>_ppl", and for a classifier "<split>_acc"} of `net` over a data module's
    `evaluation_batches(split)`, in one process (as `nas-mpq evaluate` reports them)."""
    return {f"{split}_{k}": v for k, v in stream_metrics(net, datamodule.evaluation_batches(split)).items()}
