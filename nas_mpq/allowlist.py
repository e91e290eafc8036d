"""What a model file may make nas-mpq build. A packed model is data from whoever sent it: the
classes its metadata names (the network of its search space, the data module it was evaluated on)
must belong to an allowed package, `nas_mpq` and `search_spaces` unless the caller passes others,
and that is checked before anything is imported; their arguments must be parameters of the
class's constructor, and no integer among them may exceed MAX_INT_ARGUMENT.

Example:
    >>> cls = allowed_class("nas_mpq.data.LMDataModule")      # imported: nas_mpq is allowed
    >>> check_arguments(cls, {"corpus": "ptb", "batch_size": 32}, "data")
    >>> allowed_class("os.system")      # ValueError, and nothing is imported
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Iterable, Mapping

TRUSTED_PACKAGES = ("nas_mpq", "search_spaces")
MAX_INT_ARGUMENT = 10**7
"""The largest integer a model file may pass to a constructor (a vocabulary, a width, a number of
layers): a 10^7-word vocabulary at 256 dimensions is already 10 GB of float32 weights."""
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def package_of(name: str) -> str:
    """The top-level package of a dotted module or class name."""
    return name.split(".", 1)[0]


def check_allowed_module(module: str, what: str, allowed: Iterable[str] = TRUSTED_PACKAGES) -> None:
    """ValueError naming `what` and the allowed packages unless `module` belongs to one of them."""
    allowed = list(allowed)
    if package_of(module) not in allowed:
        raise ValueError(f"{what} is not allowed: a model file may name classes of {allowed} only")


def allowed_class(class_path: Any, allowed: Iterable[str] = TRUSTED_PACKAGES, base: type | None = None) -> type:
    """The class `class_path` names, imported only once its package is known to be allowed; it must
    be defined in an allowed package (not merely imported there) and subclass `base` if given."""
    allowed = list(allowed)
    if not isinstance(class_path, str) or not _DOTTED.fullmatch(class_path):
        raise ValueError(f"class path {class_path!r} is not a dotted Python name (package.module.Class)")
    check_allowed_module(class_path, f"class path {class_path!r}", allowed)
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as e:
        raise ValueError(f"class path {class_path!r} cannot be imported ({e})") from None
    if not isinstance(cls, type) or package_of(cls.__module__) not in allowed:
        raise ValueError(f"class path {class_path!r} does not name a class defined in {allowed}")
    if base is not None and not issubclass(cls, base):
        raise ValueError(f"class path {class_path!r} is not a {base.__name__}")
    return cls


def check_arguments(cls: type, args: Any, what: str) -> None:
    """ValueError naming `what` unless `args` is a mapping of `cls`'s named constructor parameters,
    with every required one present and no integer (at any depth) beyond MAX_INT_ARGUMENT."""
    if not isinstance(args, Mapping):
        raise ValueError(f"{what} must be a mapping of constructor arguments, got {type(args).__name__}")
    params = {n: p for n, p in inspect.signature(cls).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"{what}: {cls.__name__} takes no argument(s) {unknown}; valid: {list(params)}")
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in args)
    if missing:
        raise ValueError(f"{what}: {cls.__name__} needs the argument(s) {missing}")
    for key, value in args.items():
        check_sizes(value, f"{what}: {key}")


def check_sizes(value: Any, what: str) -> None:
    """ValueError naming `what` if an integer in `value` (a number, or inside lists and mappings)
    is larger in magnitude than MAX_INT_ARGUMENT."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_sizes(v, f"{what}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_sizes(v, what)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARGUMENT:
        raise ValueError(f"{what} = {value} exceeds the limit of {MAX_INT_ARGUMENT:,} for an integer argument "
                         "of a model file")
