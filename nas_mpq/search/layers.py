"""Searchable layers: float layers whose weights go through mixed-precision choices.

Each subclasses its float layer, so state dicts keep their names; `from_float` shares the float
layer's parameters (tied weights stay tied) and `to_float` gives the plain layer back. A layer's
`choices` are keyed by parameter name, with ":<gate>" for a row slice of an LSTM weight.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import _VF, nn
from torch.nn import functional as F

from ..quant.functional import abs_stats
from .choice import MixedPrecisionChoice
from .space import LSTM_GATES

ChoiceFactory = Callable[[str, torch.Tensor], MixedPrecisionChoice]
"""Builds the choice of one group from its key and weight slice."""


class SearchableMixin:
    """Holds the choices and their row slices, and builds composite weights."""

    choices: nn.ModuleDict
    slices: dict[str, tuple[str, tuple[int, int] | None]]

    def _init_choices(self, groups: dict[str, tuple[str, tuple[int, int] | None]],
                      make_choice: ChoiceFactory,
                      shared: dict[str, MixedPrecisionChoice] | None = None) -> None:
        self.slices = groups
        self.choices = nn.ModuleDict()
        for key, (param, rows) in groups.items():
            if shared and key in shared:
                self.choices[key] = shared[key]
                continue
            w = getattr(self, param).detach()
            self.choices[key] = make_choice(key, w if rows is None else w[rows[0]:rows[1]])

    def composite_weight(self, param: str) -> torch.Tensor:
        """The weight `param` with every group replaced by its composite (row slices concatenated)."""
        w = getattr(self, param)
        parts = [(rows, key) for key, (p, rows) in self.slices.items() if p == param]
        if len(parts) == 1 and parts[0][0] is None:
            return self.choices[parts[0][1]].composite(w)
        parts.sort(key=lambda item: item[0][0])
        return torch.cat([self.choices[key].composite(w[a:b]) for (a, b), key in parts], dim=0)


class SearchLinear(SearchableMixin, nn.Linear):
    @classmethod
    def from_float(cls, mod: nn.Linear, make_choice: ChoiceFactory,
                   shared: dict[str, MixedPrecisionChoice] | None = None) -> "SearchLinear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = mod.in_features, mod.out_features
        new.weight, new.bias = mod.weight, mod.bias
        new._init_choices({"weight": ("weight", None)}, make_choice, shared)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.composite_weight("weight"), self.bias)

    def to_float(self) -> nn.Linear:
        mod = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        mod.weight, mod.bias = self.weight, self.bias
        return mod


class SearchEmbedding(SearchableMixin, nn.Embedding):
    _FIELDS = ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
               "scale_grad_by_freq", "sparse")

    @classmethod
    def from_float(cls, mod: nn.Embedding, make_choice: ChoiceFactory,
                   shared: dict[str, MixedPrecisionChoice] | None = None) -> "SearchEmbedding":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for f in cls._FIELDS:
            setattr(new, f, getattr(mod, f))
        new.weight = mod.weight
        new._init_choices({"weight": ("weight", None)}, make_choice, shared)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.choices["weight"]
        per_channel = {q.per_channel for q in choice.quantizers}
        if (self.padding_idx is not None or self.max_norm is not None or not choice.elementwise
                or len(per_channel) != 1):
            return F.embedding(x, self.composite_weight("weight"), self.padding_idx, self.max_norm,
                               self.norm_type, self.scale_grad_by_freq, self.sparse)
        # quantize only the rows this batch looks up, with the statistics of the whole table
        # (per-row statistics come from the rows themselves)
        used, inverse = torch.unique(x, return_inverse=True)
        stats = None if per_channel == {True} else abs_stats(self.weight, False)
        rows = choice.composite(self.weight[used], stats)
        return F.embedding(inverse, rows, None, None, self.norm_type, self.scale_grad_by_freq, self.sparse)

    def to_float(self) -> nn.Embedding:
        mod = nn.Embedding(self.num_embeddings, self.embedding_dim, device="meta")
        for f in self._FIELDS:
            setattr(mod, f, getattr(self, f))
        mod.weight = self.weight
        return mod


class SearchLSTM(SearchableMixin, nn.LSTM):
    """nn.LSTM whose weight_ih/weight_hh are composites (per tensor or per gate i, f, g, o); the
    fused LSTM kernel runs once per forward with them. Batched input, no proj_size."""

    @classmethod
    def from_float(cls, mod: nn.LSTM, make_choice: ChoiceFactory, granularity: str = "gate",
                   shared: dict[str, MixedPrecisionChoice] | None = None) -> "SearchLSTM":
        if mod.proj_size:
            raise ValueError(f"SearchLSTM does not support proj_size (got {mod.proj_size})")
        new = cls.__new__(cls)
        new.__dict__.update(_copy_state(mod, skip=("_modules",)))
        new._modules = {}
        h = mod.hidden_size
        groups: dict[str, tuple[str, tuple[int, int] | None]] = {}
        for name in mod._flat_weights_names:
            if not name.startswith("weight_"):
                continue
            if granularity == "gate":
                for j, gate in enumerate(LSTM_GATES):
                    groups[f"{name}:{gate}"] = (name, (j * h, (j + 1) * h))
            else:
                groups[name] = (name, None)
        new._init_choices(groups, make_choice, shared)
        return new

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        if x.dim() != 3:
            raise ValueError(f"SearchLSTM expects batched 3-D input, got shape {tuple(x.shape)}")
        if hx is None:
            n = self.num_layers * (2 if self.bidirectional else 1)
            zeros = x.new_zeros(n, x.shape[0 if self.batch_first else 1], self.hidden_size)
            hx = (zeros, zeros)
        weights = [self.composite_weight(n) if n.startswith("weight_") else getattr(self, n)
                   for n in self._flat_weights_names]
        out, h, c = _VF.lstm(x, hx, weights, self.bias, self.num_layers, float(self.dropout),
                             self.training, self.bidirectional, self.batch_first)
        return out, (h, c)

    def to_float(self) -> nn.LSTM:
        mod = nn.LSTM.__new__(nn.LSTM)
        mod.__dict__.update(_copy_state(self, skip=("_modules", "slices")))
        mod._modules = {}
        return mod


def _copy_state(mod: nn.Module, skip: tuple[str, ...]) -> dict:
    """A module's attributes with its containers copied, so the two modules share tensors only."""
    return {k: (v.copy() if isinstance(v, (dict, list)) else v)
            for k, v in mod.__dict__.items() if k not in skip}


SEARCHABLE: dict[type[nn.Module], type[SearchableMixin]] = {
    nn.Linear: SearchLinear, nn.Embedding: SearchEmbedding, nn.LSTM: SearchLSTM,
}
"""Float layer type -> its searchable subclass."""
