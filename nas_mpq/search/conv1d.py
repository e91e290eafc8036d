"""Hugging Face transformers' Conv1D (GPT-2's attention and MLP projections) as a searchable layer.

Conv1D computes `x W + b` with W stored (in_features, out_features), the transpose of nn.Linear.
It is registered by class path, so transformers is imported only by models that use it (install
the extra: `pip install nas-mpq[transformers]`). The searchable layer keeps Conv1D's state and
runs Conv1D's own forward with the composite weight in place; it is not a Conv1D subclass (that
would import transformers). Groups slice the stored weight: rows are input features, so
`per_channel` scales and "head" blocks along axis 0 are per input feature.
"""
from __future__ import annotations

from torch import nn

from .layers import SubstitutedForward
from .registry import register_layer

CONV1D = "transformers.pytorch_utils.Conv1D"


@register_layer(CONV1D)
class SearchConv1D(SubstitutedForward, nn.Module):
    groupings = ("head",)
