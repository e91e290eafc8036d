"""Searchable layers: float layers whose weights go through mixed-precision choices.

Each subclasses its float layer, so state dicts keep their names; `from_float` shares the float
layer's parameters (tied weights stay tied) and `to_float` gives the plain layer back. A layer's
`choices` are keyed by parameter name, with ":<gate>" for a row slice of an LSTM weight.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import _VF, nn
from torch.nn import functional as F

from ..plan import slice_of
from .choice import MixedPrecisionChoice
from .space import LSTM_GATES

ChoiceFactory = Callable[[str, torch.Tensor], MixedPrecisionChoice]
"""Builds the choice of one group from its key and weight slice."""


class GroupSlice(NamedTuple):
    """Where a group sits in its layer: parameter `param`, the range `rows` along `axis` (None:
    the whole parameter)."""

    param: str
    rows: tuple[int, int] | None = None
    axis: int = 0

    def of(self, w: torch.Tensor) -> torch.Tensor:
        return slice_of(w, self.rows, self.axis)


def block_slices(param: str, size: int, labels: Sequence[str], axis: int = 0) -> dict[str, GroupSlice]:
    """Equal blocks of `param` along `axis` (of length `size`), keyed "<param>:<label>"."""
    n = len(labels)
    if n < 1 or size % n:
        raise ValueError(f"cannot split {param!r} (size {size} along dimension {axis}) into {n} equal blocks")
    step = size // n
    return {f"{param}:{label}": GroupSlice(param, (i * step, (i + 1) * step), axis)
            for i, label in enumerate(labels)}


def zipf_bucket_rows(rows: int, buckets: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of a frequency-sorted vocabulary (row r the (r+1)-th most frequent
    token) in `buckets` buckets holding equal shares of the tokens, with token frequencies taken
    as Zipfian (f_r proportional to 1 / (r + 1)): the first bucket is a few very frequent words,
    the last the long tail. Every bucket has at least one row."""
    if not 1 <= buckets <= rows:
        raise ValueError(f"cannot split {rows} vocabulary rows into {buckets} frequency buckets")
    mass = torch.cumsum(1.0 / torch.arange(1, rows + 1, dtype=torch.float64), 0)
    mass /= float(mass[-1])
    stops = [int(torch.searchsorted(mass, k / buckets)) + 1 for k in range(1, buckets)] + [rows]
    bounds, start = [], 0
    for i, stop in enumerate(stops):
        stop = max(stop, start + 1)
        stop = min(stop, rows - (buckets - 1 - i))  # leave a row for every later bucket
        bounds.append((start, stop))
        start = stop
    return bounds


class FreqBuckets(NamedTuple):
    """Split an embedding or softmax weight into `buckets` frequency buckets of rows (zipf_bucket_rows),
    labelled f0 (most frequent) .. f<buckets-1>."""

    buckets: int

    def slices(self, w: torch.Tensor) -> dict[str, GroupSlice]:
        return {f"weight:f{i}": GroupSlice("weight", bounds)
                for i, bounds in enumerate(zipf_bucket_rows(w.shape[0], self.buckets))}


class BlockSplit(NamedTuple):
    """Split a layer's weight into `blocks` equal blocks along `axis`, labelled `prefix<i>`
    (attention heads: "h0", "h1", ...; output-channel blocks: "b0", ...)."""

    blocks: int
    axis: int = 0
    prefix: str = "b"

    def slices(self, w: torch.Tensor) -> dict[str, GroupSlice]:
        if self.axis >= w.dim():
            raise ValueError(f"cannot split a {w.dim()}-D weight along dimension {self.axis}")
        return block_slices("weight", w.shape[self.axis], [f"{self.prefix}{i}" for i in range(self.blocks)],
                            self.axis)


def _weight_groups(mod: nn.Module, split: BlockSplit | FreqBuckets | None) -> dict[str, GroupSlice]:
    return {"weight": GroupSlice("weight")} if split is None else split.slices(mod.weight)


class SearchableMixin:
    """Holds the choices and the slices they quantize, and builds composite weights."""

    choices: nn.ModuleDict
    slices: dict[str, GroupSlice]
    positions: int | None = 1
    """MACs per sample = weight elements x positions: 1 for a Linear or LSTM (per token or row),
    output height x width for a convolution (recorded by its forward), 0 for an embedding."""

    def _init_choices(self, groups: dict[str, GroupSlice], make_choice: ChoiceFactory,
                      shared: dict[str, MixedPrecisionChoice] | None = None) -> None:
        self.slices = groups
        self.choices = nn.ModuleDict()
        for key, where in groups.items():
            if shared and key in shared:
                self.choices[key] = shared[key]
                continue
            self.choices[key] = make_choice(key, where.of(getattr(self, where.param).detach()))

    def composite_weight(self, param: str) -> torch.Tensor:
        """The weight `param` with every group replaced by its composite (blocks concatenated)."""
        w = getattr(self, param)
        parts = [(where, key) for key, where in self.slices.items() if where.param == param]
        if len(parts) == 1 and parts[0][0].rows is None:
            return self.choices[parts[0][1]].composite(w)
        parts.sort(key=lambda item: item[0].rows[0])
        return torch.cat([self.choices[key].composite(where.of(w)) for where, key in parts], dim=parts[0][0].axis)


class SearchLinear(SearchableMixin, nn.Linear):
    @classmethod
    def from_float(cls, mod: nn.Linear, make_choice: ChoiceFactory,
                   shared: dict[str, MixedPrecisionChoice] | None = None,
                   split: BlockSplit | FreqBuckets | None = None) -> "SearchLinear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = mod.in_features, mod.out_features
        new.weight, new.bias = mod.weight, mod.bias
        new._init_choices(_weight_groups(mod, split), make_choice, shared)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.composite_weight("weight"), self.bias)

    def to_float(self) -> nn.Linear:
        mod = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        mod.weight, mod.bias = self.weight, self.bias
        return mod


class SearchEmbedding(SearchableMixin, nn.Embedding):
    positions = 0
    _FIELDS = ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
               "scale_grad_by_freq", "sparse")

    @classmethod
    def from_float(cls, mod: nn.Embedding, make_choice: ChoiceFactory,
                   shared: dict[str, MixedPrecisionChoice] | None = None,
                   split: FreqBuckets | None = None) -> "SearchEmbedding":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for f in cls._FIELDS:
            setattr(new, f, getattr(mod, f))
        new.weight = mod.weight
        new._init_choices(_weight_groups(mod, split), make_choice, shared)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.choices["weight"] if "weight" in self.choices else None
        per_channel = {q.per_channel for q in choice.quantizers} if choice is not None else set()
        if (choice is None or self.padding_idx is not None or self.max_norm is not None
                or not choice.elementwise or len(per_channel) != 1):
            return F.embedding(x, self.composite_weight("weight"), self.padding_idx, self.max_norm,
                               self.norm_type, self.scale_grad_by_freq, self.sparse)
        # one group (no frequency buckets): quantize only the rows this batch looks up, with the
        # scales of the whole table (per-row scales come from the rows themselves)
        used, inverse = torch.unique(x, return_inverse=True)
        stats = None if per_channel == {True} else choice.shared_stats(self.weight)
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
        groups: dict[str, GroupSlice] = {}
        for name in mod._flat_weights_names:
            if not name.startswith("weight_"):
                continue
            if granularity == "gate":
                groups.update(block_slices(name, 4 * h, LSTM_GATES))
            else:
                groups[name] = GroupSlice(name)
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


class SearchConv2d(SearchableMixin, nn.Conv2d):
    """nn.Conv2d with a composite weight (one group, or blocks of output channels)."""

    positions = None

    @classmethod
    def from_float(cls, mod: nn.Conv2d, make_choice: ChoiceFactory,
                   shared: dict[str, MixedPrecisionChoice] | None = None,
                   split: BlockSplit | None = None) -> "SearchConv2d":
        new = cls.__new__(cls)
        new.__dict__.update(_copy_state(mod, skip=("_modules",)))
        new._modules = {}
        new._init_choices(_weight_groups(mod, split), make_choice, shared)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.composite_weight("weight"), self.bias)
        self.positions = out.shape[-2] * out.shape[-1]
        return out

    def to_float(self) -> nn.Conv2d:
        mod = nn.Conv2d.__new__(nn.Conv2d)
        mod.__dict__.update(_copy_state(self, skip=("_modules", "slices", "positions")))
        mod._modules = {}
        return mod


def _copy_state(mod: nn.Module, skip: tuple[str, ...]) -> dict:
    """A module's attributes with its containers copied, so the two modules share tensors only."""
    return {k: (v.copy() if isinstance(v, (dict, list)) else v)
            for k, v in mod.__dict__.items() if k not in skip}


SEARCHABLE: dict[type[nn.Module], type[SearchableMixin]] = {
    nn.Linear: SearchLinear, nn.Embedding: SearchEmbedding, nn.LSTM: SearchLSTM, nn.Conv2d: SearchConv2d,
}
"""Float layer type -> its searchable subclass."""

SPLITTABLE = {SearchLinear: ("head", "block", "freq_buckets"), SearchConv2d: ("head", "block"),
              SearchEmbedding: ("freq_buckets",)}
"""Which row/column splits each searchable layer takes."""
