"""Search-space specs: which weights are searched, split into which groups, over which bit-widths.

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
from typing import Any, Iterable, Mapping

from ..quant import QUANT_METHODS, QuantizerSettings, check_activation_bits, check_bits

DEFAULT_CANDIDATES = (1, 2, 4, 8, 32)
GROUPINGS = ("tensor", "gate", "head", "block", "freq_buckets")
"""tensor: one group per weight; gate: an LSTM weight per gate (i, f, g, o); head: `blocks` equal
blocks along `axis` labelled h0.. (attention heads); block: `blocks` equal blocks of output
channels (rows) labelled b0..; freq_buckets: `blocks` row ranges of an embedding or softmax layer
over a frequency-sorted vocabulary, each holding an equal share of tokens and rows averaged
(search.layers.zipf_bucket_rows; labelled f0..)."""
LSTM_GATES = ("i", "f", "g", "o")
RENAMED_KEYS = {"granularity": "grouping"}
"""Keys of a space's options and of its rules that have a new name (old: new); the old name is
refused with a message naming the new one, never read silently."""


@dataclass
class GroupRule:
    """Applies to the weights of layers whose qualified module name, or to weights whose qualified
    parameter name, matches `pattern` (fnmatch). `grouping` "gate" splits each LSTM weight into
    its four gates, "head" and "block" split a weight into `blocks` equal blocks along `axis`
    (for nn.MultiheadAttention "head" splits Q, K, V by rows and O by columns); `candidates`
    replaces the space's; `exclude` keeps the weights in FP32."""

    pattern: str
    grouping: str | None = None
    candidates: list[int] | None = None
    exclude: bool = False
    blocks: int | None = None
    axis: int = 0

    def __post_init__(self) -> None:
        if self.grouping is not None and self.grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {self.grouping!r} in rule {self.pattern!r}; "
                             f"valid: {list(GROUPINGS)}")
        if self.grouping in ("head", "block", "freq_buckets") and not (isinstance(self.blocks, int) and self.blocks >= 1):
            raise ValueError(f"grouping {self.grouping!r} in rule {self.pattern!r} needs blocks >= 1, "
                             f"got {self.blocks!r}")
        if self.axis not in (0, 1) or (self.grouping in ("block", "freq_buckets") and self.axis != 0):
            raise ValueError(f"axis must be 0 (rows) or 1 (columns, grouping head only) in rule "
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
        self.rules = [as_rule(r) for r in self.rules]

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
    return [GroupRule(p, grouping="freq_buckets", blocks=buckets) for p in patterns]


def renamed_key_message(keys: Iterable[str], where: str) -> str | None:
    """The message "<where> has no key 'old'; it was renamed to 'new'" for the first of `keys`
    that was renamed (RENAMED_KEYS), or None."""
    old = next((k for k in keys if k in RENAMED_KEYS), None)
    return None if old is None else f"{where} has no key {old!r}; it was renamed to {RENAMED_KEYS[old]!r}"


def check_renamed(keys: Iterable[str], where: str) -> None:
    """ValueError if one of `keys` was renamed (renamed_key_message)."""
    message = renamed_key_message(keys, where)
    if message:
        raise ValueError(message)


def as_rule(rule: GroupRule | Mapping[str, Any]) -> GroupRule:
    """`rule`, or the GroupRule a mapping of its fields gives (a renamed key is a ValueError)."""
    if isinstance(rule, GroupRule):
        return rule
    check_renamed(rule, "a rule")
    return GroupRule(**rule)


def check_grouping(space: str, grouping: str, valid: tuple[str, ...]) -> None:
    """ValueError naming `grouping` and the `valid` ones if the space `space` does not take it."""
    if grouping not in valid:
        raise ValueError(f"unknown grouping {grouping!r} for {space}; valid: {list(valid)}")
