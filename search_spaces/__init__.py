"""The model families nas-mpq searches over, registered by name (a dict plus a decorator).

Each entry is a backbone nn.Module class, a function building its default SearchSpace, and the
constructor arguments of a tiny example network with the options of a rich variant of its space
(the registry-wide tests build it, feed it `net.example_input()` and search it both ways).

`build_space` adds rules of your own in front of a registered space's, or makes a space of rules
alone for a network nobody registered (any `class_path` network of a config).

Example:
    >>> entry = get_search_space("lstm_lm")
    >>> net = entry.build(vocab_size=10000, hidden_dim=256)
    >>> space = entry.space(candidates=[2, 4, 8])
    >>> gpt2 = build_space("gpt2", rules=[{"pattern": "lm_head", "exclude": True}], full_coverage=True)
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from nas_mpq.search.space import GroupRule, SearchSpace, as_rule, check_renamed

RULE_SPACE_OPTIONS = ("candidates", "method", "per_channel", "activation_candidates")
"""The options of a space made of rules alone (the others belong to the registered spaces)."""


@dataclass(frozen=True)
class SearchSpaceEntry:
    name: str
    model_cls: type[nn.Module]
    space_fn: Callable[..., SearchSpace]
    example_args: dict[str, Any] = field(default_factory=dict)
    example_space: dict[str, Any] = field(default_factory=dict)

    def build(self, **kwargs: Any) -> nn.Module:
        return self.model_cls(**kwargs)

    def space(self, **overrides: Any) -> SearchSpace:
        check_renamed(overrides, f"search space {self.name!r}")
        options = list(inspect.signature(self.space_fn).parameters)
        unknown = sorted(set(overrides) - set(options))
        if unknown:
            raise ValueError(f"search space {self.name!r} has no option(s) {unknown}; it takes {options}")
        return self.space_fn(**overrides)


_REGISTRY: dict[str, SearchSpaceEntry] = {}


def register_search_space(name: str, space_fn: Callable[..., SearchSpace],
                          example_args: dict[str, Any] | None = None,
                          example_space: dict[str, Any] | None = None):
    """Class decorator: register a backbone under `name` with its default-space builder, the
    arguments of a tiny example network and space options that exercise its finer groupings."""
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"search space {name!r} is already registered")
        _REGISTRY[name] = SearchSpaceEntry(name, cls, space_fn, dict(example_args or {}),
                                           dict(example_space or {}))
        return cls
    return wrap


def list_search_spaces() -> list[str]:
    return sorted(_REGISTRY)


def get_search_space(name: str | SearchSpaceEntry) -> SearchSpaceEntry:
    if isinstance(name, SearchSpaceEntry):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown search space {name!r}; registered: {list_search_spaces()}")
    return _REGISTRY[name]


def build_space(name: str, rules: list[GroupRule | Mapping[str, Any]] | None = None,
                full_coverage: bool | None = None, **options: Any) -> SearchSpace:
    """The registered space `name` with `options` (None keeps a default) and `rules` in front of
    its own (first match wins); for a name nobody registered, the space of `rules` alone (an
    empty list searches every searchable layer with the defaults), taking RULE_SPACE_OPTIONS.
    `full_coverage` demands that every weight matrix be searched or excluded by a rule."""
    check_renamed(options, f"search space {name!r}")
    options = {k: v for k, v in options.items() if v is not None}
    own = [as_rule(r) for r in rules or []]
    if name in _REGISTRY:
        space = _REGISTRY[name].space(**options)
        return dataclasses.replace(space, rules=[*own, *space.rules], full_coverage=bool(full_coverage))
    if rules is None:
        raise ValueError(f"unknown search space {name!r}; registered: {list_search_spaces()} "
                         "(or give rules for a network of your own)")
    unknown = sorted(set(options) - set(RULE_SPACE_OPTIONS))
    if unknown:
        raise ValueError(f"search space {name!r} is made of rules: it takes no option(s) {unknown} (options of "
                         f"the registered spaces); it takes rules, full_coverage and {list(RULE_SPACE_OPTIONS)}")
    return SearchSpace(name, rules=own, full_coverage=bool(full_coverage), **options)


from . import cnn, lstm_lm, transformer_lm  # noqa: E402,F401  (register)
