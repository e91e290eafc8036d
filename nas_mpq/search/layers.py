"""Searchable layers: float layers whose weights go through mixed-precision choices.

Each subclasses its float layer, so state dicts keep their names, and is registered for it
(registry.py). `from_float` takes over the float module's state, sharing its parameters (tied
weights stay tied); `to_float` gives back a module of the original class. A layer's groups are
keyed by parameter name, with ":<label>" for a slice of it (an LSTM gate, a head, a block of rows,
a frequency bucket); `slices` says where each group sits and `choice(key)` holds its choice.

A searchable layer of your own: subclass SearchableMixin (or SubstitutedForward, which runs the
float layer's forward with the composite weights in place of its parameters) and the float
layer, list the parameters it searches in `weight_names`, build weights with
`self.composite_weight(param)` in `forward`, and register it with `register_layer(FloatLayer)`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import _VF, nn
from torch.nn import functional as F

from ..plan import slice_of
from .choice import MixedPrecisionChoice, block_composite
from .registry import register_layer
from .space import LSTM_GATES, GroupRule

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
    token) in `buckets` buckets, each holding an equal share of (token share + row share) / 2, with
    token frequencies taken as Zipfian (f_r proportional to 1 / (r + 1)). Equal token shares alone
    would put most rows in the last bucket (10,000 rows, 4 buckets: 9,000); the blend keeps the
    frequent head in small buckets and cuts the long tail into similar row ranges (10,000 rows,
    8 buckets: 6, 64, 450, ... 2,240 rows), so no one group holds most of the table. Every bucket
    has at least one row."""
    if not 1 <= buckets <= rows:
        raise ValueError(f"cannot split {rows} vocabulary rows into {buckets} frequency buckets")
    ranks = torch.arange(1, rows + 1, dtype=torch.float64)
    mass = torch.cumsum(1.0 / ranks, 0)
    blend = (mass / float(mass[-1]) + ranks / rows) / 2
    stops = [int(torch.searchsorted(blend, k / buckets)) + 1 for k in range(1, buckets)] + [rows]
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

    def slices(self, w: torch.Tensor, param: str = "weight") -> dict[str, GroupSlice]:
        return {f"{param}:f{i}": GroupSlice(param, bounds)
                for i, bounds in enumerate(zipf_bucket_rows(w.shape[0], self.buckets))}


class BlockSplit(NamedTuple):
    """Split a layer's weight into `blocks` equal blocks along `axis`, labelled `prefix<i>`
    (attention heads: "h0", "h1", ...; output-channel blocks: "b0", ...)."""

    blocks: int
    axis: int = 0
    prefix: str = "b"

    def slices(self, w: torch.Tensor, param: str = "weight") -> dict[str, GroupSlice]:
        if self.axis >= w.dim():
            raise ValueError(f"cannot split a {w.dim()}-D weight along dimension {self.axis}")
        return block_slices(param, w.shape[self.axis], [f"{self.prefix}{i}" for i in range(self.blocks)],
                            self.axis)


def _choice_key(key: str) -> str:
    """A group key as a ModuleDict key (no dots: "out_proj.weight" -> "out_proj/weight")."""
    return key.replace(".", "/")


class SearchableMixin:
    """Holds the choices and the slices they quantize, and builds composite weights."""

    choices: nn.ModuleDict
    slices: dict[str, GroupSlice]
    float_class: type[nn.Module]
    positions: int | None = 1
    """MACs per sample = weight elements x positions: 1 for a Linear or LSTM (per token or row),
    output height x width for a convolution (recorded by its forward), 0 for an embedding."""
    default_grouping = "tensor"
    groupings: tuple[str, ...] = ()
    """The groupings besides "tensor" (and the default) that the layer's weights take."""
    owned_children: tuple[str, ...] = ()
    """Child modules whose weights this layer searches and reads itself (their forward never runs)."""

    @classmethod
    def weight_names(cls, mod: nn.Module) -> list[str]:
        """The parameters of `mod` (dotted for those of owned children) that the layer searches."""
        return ["weight"]

    @classmethod
    def param_slices(cls, mod: nn.Module, param: str, grouping: str,
                     rule: GroupRule | None) -> dict[str, GroupSlice]:
        """The groups of `param` for `grouping` (the rule gives blocks and axis)."""
        if grouping == "tensor":
            return {param: GroupSlice(param)}
        w = mod.get_parameter(param)
        if grouping == "freq_buckets":
            return FreqBuckets(rule.blocks).slices(w, param)
        return BlockSplit(rule.blocks, rule.axis, "h" if grouping == "head" else "b").slices(w, param)

    @classmethod
    def from_float(cls, mod: nn.Module, make_choice: ChoiceFactory, groups: Mapping[str, GroupSlice] | None = None,
                   shared: Mapping[str, MixedPrecisionChoice] | None = None) -> Any:
        """The searchable layer holding `mod`'s parameters, with a choice per group (default: one
        per searched parameter); choices in `shared` (tied weights) are reused, not built."""
        new = cls.__new__(cls)
        new.__dict__.update(_copy_state(mod))
        new.float_class = type(mod)
        new._init_choices(groups or {p: GroupSlice(p) for p in cls.weight_names(mod)}, make_choice, shared)
        new.register_forward_pre_hook(_no_fused_parent)
        return new

    def to_float(self) -> nn.Module:
        """A module of the original float class with the same parameters."""
        mod = self.float_class.__new__(self.float_class)
        state = _copy_state(self, skip=("slices", "float_class", "positions"))
        del state["_modules"]["choices"]
        state["_forward_pre_hooks"] = type(self._forward_pre_hooks)(
            (k, h) for k, h in self._forward_pre_hooks.items() if h is not _no_fused_parent)
        mod.__dict__.update(state)
        return mod

    def _init_choices(self, groups: Mapping[str, GroupSlice], make_choice: ChoiceFactory,
                      shared: Mapping[str, MixedPrecisionChoice] | None = None) -> None:
        self.slices = dict(groups)
        self.choices = nn.ModuleDict()
        for key, where in groups.items():
            if shared and key in shared:
                self.choices[_choice_key(key)] = shared[key]
                continue
            self.choices[_choice_key(key)] = make_choice(key, where.of(self.get_parameter(where.param).detach()))

    def choice(self, key: str) -> MixedPrecisionChoice:
        return self.choices[_choice_key(key)]

    def composite_weight(self, param: str) -> torch.Tensor:
        """The weight `param` with every group replaced by its composite (blocks concatenated);
        the weight itself when no group covers it."""
        w = self.get_parameter(param)
        parts = [(where, key) for key, where in self.slices.items() if where.param == param]
        if not parts:
            return w
        if len(parts) == 1 and parts[0][0].rows is None:
            return self.choice(parts[0][1]).composite(w)
        parts.sort(key=lambda item: item[0].rows[0])
        axis = parts[0][0].axis
        if _equal_blocks([where for where, _ in parts], w.shape[axis]):
            blocks = w.unflatten(axis, (len(parts), -1)).movedim(axis, 0)
            out = block_composite(blocks, [self.choice(key) for _, key in parts])
            if out is not None:
                return out.movedim(0, axis).flatten(axis, axis + 1)
        return torch.cat([self.choice(key).composite(where.of(w)) for where, key in parts], dim=axis)


def _equal_blocks(slices: Sequence[GroupSlice], size: int) -> bool:
    """Whether `slices` (sorted) cut a weight's dimension of length `size` into equal blocks."""
    step = size // len(slices)
    return step * len(slices) == size and all(
        where.axis == slices[0].axis and where.rows == (i * step, (i + 1) * step) for i, where in enumerate(slices))


def _no_fused_parent(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing. Its presence keeps fused inference paths of enclosing
    PyTorch modules (nn.TransformerEncoderLayer's, which read their layers' weights directly) off,
    as they are whenever a submodule has hooks, so the composite weights are the ones used."""


class SubstitutedForward(SearchableMixin):
    """A searchable layer that runs its float class's forward with every searched parameter
    replaced by its composite weight, for float layers whose forward reads their weights as
    attributes (nn.MultiheadAttention, transformers' Conv1D)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        params = dict.fromkeys(where.param for where in self.slices.values())
        with substituted(self, {p: self.composite_weight(p) for p in params}):
            return self.float_class.forward(self, *args, **kwargs)


@contextmanager
def substituted(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, `module`'s parameters named in `tensors` (dotted for submodules) read
    as the given tensors; the parameters are back afterwards, whatever happens."""
    saved = []
    try:
        for name, t in tensors.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            saved.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = t
        yield
    finally:
        for owner, leaf, p in reversed(saved):
            owner._parameters[leaf] = p


@register_layer(nn.Linear)
class SearchLinear(SearchableMixin, nn.Linear):
    groupings = ("head", "block", "freq_buckets")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.composite_weight("weight"), self.bias)


@register_layer(nn.Embedding)
class SearchEmbedding(SearchableMixin, nn.Embedding):
    positions = 0
    groupings = ("freq_buckets",)

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


@register_layer(nn.LSTM)
class SearchLSTM(SearchableMixin, nn.LSTM):
    """nn.LSTM whose weight_ih/weight_hh are composites (per tensor or per gate i, f, g, o); the
    fused LSTM kernel runs once per forward with them. Batched input, no proj_size."""

    default_grouping = "gate"

    @classmethod
    def weight_names(cls, mod: nn.LSTM) -> list[str]:
        return [n for n in mod._flat_weights_names if n.startswith("weight_")]

    @classmethod
    def param_slices(cls, mod: nn.LSTM, param: str, grouping: str,
                     rule: GroupRule | None) -> dict[str, GroupSlice]:
        if grouping == "gate":
            return block_slices(param, 4 * mod.hidden_size, LSTM_GATES)
        return super().param_slices(mod, param, grouping, rule)

    @classmethod
    def from_float(cls, mod: nn.LSTM, make_choice: ChoiceFactory, groups: Mapping[str, GroupSlice] | None = None,
                   shared: Mapping[str, MixedPrecisionChoice] | None = None) -> "SearchLSTM":
        if mod.proj_size:
            raise ValueError(f"SearchLSTM does not support proj_size (got {mod.proj_size})")
        return super().from_float(mod, make_choice, groups, shared)

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


@register_layer(nn.Conv2d)
class SearchConv2d(SearchableMixin, nn.Conv2d):
    """nn.Conv2d with a composite weight (one group, or blocks of output channels)."""

    positions = None
    groupings = ("head", "block")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.composite_weight("weight"), self.bias)
        self.positions = out.shape[-2] * out.shape[-1]
        return out


def _copy_state(mod: nn.Module, skip: tuple[str, ...] = ()) -> dict:
    """A module's attributes with its containers copied, so the two modules share tensors only."""
    return {k: (v.copy() if isinstance(v, (dict, list, set)) else v)
            for k, v in mod.__dict__.items() if k not in skip}
