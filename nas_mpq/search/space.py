"""Search-space specs: which weights are searched, at what granularity, over which bit-widths.

A space is a list of rules over names, first match wins: a rule's `pattern` (fnmatch) is tried
against a layer's qualified module name ("rnn", "blocks.0.attn.q") and against the qualified names
of the parameters it searches ("rnn.weight_hh_l0", "attn.in_proj_weight", "attn.out_proj.weight"),
so rules can be written for any network, registered or not (FQN rules).

Example:
    >>> space = SearchSpace("lstm_lm", candidates=[1, 2, 4, 8, 32],
    ...                     rules=[GroupRule("decoder", candidates=[2, 4, 8])])
    >>> gpt2 = SearchSpace("gpt2", rules=[GroupRule("*.c_attn.weight", candidates=[4, 8]),
    ...                                   GroupRule("lm_head", exclude=True)], full_coverage=True)
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from ..quant import QUANT_METHODS, QuantizerSettings, check_activation_bits, check_bits

DEFAULT_CANDIDATES = (1, 2, 4, 8, 32)
GRANULARITIES = ("tensor", "gate", "head", "block", "freq_buckets")
"""tensor: one group per weight; gate: an LSTM weight per gate (i, f, g, o); head: `blocks` equal
blocks along `axis` labelled h0.. (attention heads); block: `blocks` equal blocks of output
channels (rows) labelled b0..; freq_buckets: `blocks` row ranges of an embedding or softmax layer
over a frequency-sorted vocabulary, each holding an equal share of tokens and rows averaged
(search.layers.zipf_bucket_rows; labelled f0..)."""
LSTM_GATES = ("i", "f", "g", "o")


@dataclass
class GroupRule:
    """Applies to the weights of layers whose qualified module name, or to weights whose qualified
    parameter name, matches `pattern` (fnmatch). `granularity` "gate" splits each LSTM weight into
    its four gates, "head" and "block" split a weight into `blocks` equal blocks along `axis`
    (for nn.MultiheadAttention "head" splits Q, K, V by rows and O by columns); `candidates`
    replaces the space's; `exclude` keeps the weights in FP32."""

    pattern: str
    granularity: str | None = None
    candidates: list[int] | None = None
    exclude: bool = False
    blocks: int | None = None
    axis: int = 0

    def __post_init__(self) -> None:
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r} in rule {self.pattern!r}; "
                             f"valid: {list(GRANULARITIES)}")
        if self.granularity in ("head", "block", "freq_buckets") and not (isinstance(self.blocks, int) and self.blocks >= 1):
            raise ValueError(f"granularity {self.granularity!r} in rule {self.pattern!r} needs blocks >= 1, "
                             f"got {self.blocks!r}")
        if self.axis not in (0, 1) or (self.granularity in ("block", "freq_buckets") and self.axis != 0):
            raise ValueError(f"axis must be 0 (rows) or 1 (columns, head granularity only) in rule "
                             f"{self.pattern!r}, got {self.axis!r}")
        if self.candidates is not None:
            self.candidates = check_candidates(self.candidates)


@dataclass
class SearchSpace:
    """The default candidates, rules (first match wins), quantizer settings, and the activation
    candidates for the input of every searched Linear/Conv2d layer (None: activations stay in
    float). `full_coverage` makes preparing a model fail, naming the weights, when any weight
    matrix is left unsearched without a rule excluding it."""

    name: str
    candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    rules: list[GroupRule] = field(default_factory=list)
    method: str = "uniform"
    per_channel: bool = False
    activation_candidates: list[int] | None = None
    full_coverage: bool = False

    def __post_init__(self) -> None:
        self.candidates = check_candidates(self.candidates)
        if self.activation_candidates is not None:
            self.activation_candidates = check_candidates(self.activation_candidates, "activation_candidates")
            for b in self.activation_candidates:
                check_activation_bits(b)
        if self.method not in QUANT_METHODS:
            raise ValueError(f"unknown quantization method {self.method!r}; valid: {list(QUANT_METHODS)}")
        self.rules = [r if isinstance(r, GroupRule) else GroupRule(**r) for r in self.rules]

    @property
    def settings(self) -> QuantizerSettings:
        return QuantizerSettings(self.method, bool(self.per_channel))

    def rule_for(self, *names: str) -> GroupRule | None:
        """The first rule whose pattern matches one of `names`."""
        return next((r for r in self.rules if any(fnmatch.fnmatchcase(n, r.pattern) for n in names)), None)


def rule_names(layer_name: str, param: str) -> tuple[str, ...]:
    """The names a rule may match for parameter `param` of the layer `layer_name`: the layer's
    name, the names of the submodules on the way (an attention layer's "out_proj") and the
    parameter's qualified name."""
    parts = param.split(".")
    prefix = [layer_name] if layer_name else []
    return tuple(".".join(prefix + parts[:i]) for i in range(0 if layer_name else 1, len(parts) + 1))


def check_candidates(candidates: list[int], key: str = "candidates") -> list[int]:
    """The candidate bit-widths sorted; ValueError naming `key` and the value if they are empty,
    repeated or not supported bit-widths."""
    if not candidates:
        raise ValueError(f"{key} {list(candidates)!r} is empty; give at least one bit-width")
    bits = [check_bits(b) for b in candidates]
    if len(set(bits)) != len(bits):
        raise ValueError(f"{key} must be distinct bit-widths, got {list(candidates)}")
    return sorted(bits)


def vocabulary_buckets(buckets: int | None, patterns: tuple[str, ...] = ("encoder", "decoder")) -> list[GroupRule]:
    """Rules splitting a language model's embedding and softmax layer (`patterns`) into `buckets`
    frequency buckets of rows; none for None."""
    if buckets is None:
        return []
    return [GroupRule(p, granularity="freq_buckets", blocks=buckets) for p in patterns]
