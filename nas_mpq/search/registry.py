"""Which float layers model surgery can search: a registry from a float layer class to its
searchable class, matched by isinstance (a dict plus a decorator).

A module is searched by the searchable class registered for the nearest class in its MRO, so a
subclass of nn.Linear is searched as a Linear, unless it overrides `forward`: the searchable class
replaces the forward, so such a subclass is left unsearched and the coverage report says why. A
float layer can also be named by its dotted class path ("transformers.pytorch_utils.Conv1D"),
matched without importing its package.

Example:
    >>> @register_layer(MyLinear)                      # a layer of your own
    ... class SearchMyLinear(SearchableMixin, MyLinear):
    ...     def forward(self, x):
    ...         return my_op(x, self.composite_weight("weight"))
    >>> find_layer(MyLinear(4, 4)).searchable is SearchMyLinear
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from torch import nn

S = TypeVar("S", bound=type)

_LAYERS: dict[type | str, type] = {}
RENAMED_ATTRIBUTES = {"granularities": "groupings", "default_granularity": "default_grouping"}
"""Class attributes of a searchable layer that have a new name (old: new): a class setting an old
one is refused, since its value would otherwise be ignored."""


@dataclass(frozen=True)
class LayerMatch:
    """The outcome of a registry lookup: the searchable class (None: not searchable) and, when
    there is none, why."""

    searchable: type | None
    reason: str | None = None


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer(float_layer: type[nn.Module] | str) -> Callable[[S], S]:
    """Class decorator: search modules of `float_layer` (a class, or its dotted class path) and
    its subclasses with the decorated searchable class (a SearchableMixin)."""
    def wrap(searchable: S) -> S:
        if float_layer in _LAYERS:
            name = float_layer if isinstance(float_layer, str) else class_path(float_layer)
            raise ValueError(f"a searchable layer is already registered for {name}: "
                             f"{_LAYERS[float_layer].__name__}")
        old = next((a for a in RENAMED_ATTRIBUTES if hasattr(searchable, a)), None)
        if old is not None:
            raise ValueError(f"{searchable.__name__} sets {old!r}; it was renamed to {RENAMED_ATTRIBUTES[old]!r}")
        _LAYERS[float_layer] = searchable
        return searchable
    return wrap


def registered_layers() -> dict[str, str]:
    """{float layer class path: searchable class name}."""
    return {(k if isinstance(k, str) else class_path(k)): v.__name__ for k, v in _LAYERS.items()}


def find_layer(module: nn.Module) -> LayerMatch:
    """The searchable class for `module`: the registration of the nearest class in its MRO that
    has one. A module whose class overrides that class's forward is not searchable."""
    for cls in type(module).__mro__:
        searchable = _LAYERS.get(cls) or _LAYERS.get(class_path(cls))
        if searchable is None:
            continue
        if type(module).forward is not cls.forward:
            return LayerMatch(None, f"{type(module).__name__} overrides the forward of {cls.__name__}; "
                                    "register a searchable layer for it (register_layer)")
        return LayerMatch(searchable)
    return LayerMatch(None, f"no searchable layer is registered for {type(module).__name__} (register_layer adds one)")
