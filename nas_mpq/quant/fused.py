"""A group's candidates quantized and mixed in one pass, compiled with `torch.compile`.

`mix(w, y, scales, kinds)` is `sum_k y_k Q_k(w)` and `inner(w, grad, scales, kinds)` is
`<grad, Q_k(w)>` for every k, each written as one elementwise expression over the candidates, so
that `torch.compile` turns it into one loop over the weight (one kernel on a GPU) instead of
three to five operators per candidate, each a pass over memory. `kinds` holds each candidate's
`fused_kind` (its quantizer's: ("binary", 0), ("uniform", q) for the grid [-q, q] or ("full", 0),
32 bits; not 16 bits, whose rounding through float16 the compiler may elide); `scales` its fitted
scale (per tensor, per channel or per block, broadcast against w; None for "full").

Where compilation is unavailable (no C++ compiler, an unsupported platform) or fails, the first
call warns once and the same expressions run uncompiled from then on: the numbers agree with the
compiled ones to float rounding, and with the candidates' own `value` to float rounding too.

    >>> w, y = torch.randn(64, 32), torch.softmax(torch.randn(3), 0)
    >>> mix(w, y, [w.abs().mean(), torch.tensor(0.3), None], (("binary", 0), ("uniform", 7), ("full", 0)))
"""
from __future__ import annotations

import shutil
import threading
import warnings
from typing import Callable, Sequence

import torch

Kind = tuple[str, int]


def _value(w: torch.Tensor, kind: Kind, scale: torch.Tensor | None) -> torch.Tensor:
    """Q(w) of one candidate, as its quantizer's `value` computes it."""
    name, q = kind
    if name == "binary":
        return torch.copysign(scale, w)
    if name == "uniform":
        return torch.clamp(torch.round(w * scale.reciprocal()), -q, q) * scale
    return w


def _mix(w: torch.Tensor, y: torch.Tensor, scales: Sequence[torch.Tensor | None],
         kinds: tuple[Kind, ...]) -> torch.Tensor:
    out = _value(w, kinds[0], scales[0]) * y[0]
    for k in range(1, len(kinds)):
        out = out + _value(w, kinds[k], scales[k]) * y[k]
    return out


def _inner(w: torch.Tensor, grad: torch.Tensor, scales: Sequence[torch.Tensor | None],
           kinds: tuple[Kind, ...], blocks: int) -> torch.Tensor:
    """(K,) or, for `blocks` > 0 equal blocks along w's first dimension, (K, blocks)."""
    shape = (blocks, -1) if blocks else (-1,)
    return torch.stack([(grad * _value(w, kind, s)).reshape(shape).sum(-1) for kind, s in zip(kinds, scales)])


def compiler_available() -> bool:
    """Whether torch.compile can build CPU kernels here: a C++ compiler on the PATH."""
    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


class _Compiled:
    """`torch.compile(fn)`, built on first use; on a compilation error, a warning and `fn` itself
    for good (each compiled function falls back on its own)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self._compiled, self._lock = fn, None, threading.Lock()
        self.failed: str | None = None

    def __call__(self, *args):
        if self.failed is not None:
            return self.fn(*args)
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=None)
        try:
            return self._compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            hint = "" if compiler_available() else "; no C++ compiler (c++, g++, clang++) on the PATH"
            warnings.warn(f"fuse_candidates: torch.compile failed ({self.failed}{hint}); the candidates are "
                          f"quantized uncompiled from now on", RuntimeWarning, stacklevel=2)
            return self.fn(*args)


_mix_compiled, _inner_compiled = _Compiled(_mix), _Compiled(_inner)


def mix(w: torch.Tensor, y: torch.Tensor, scales: Sequence[torch.Tensor | None], kinds: tuple[Kind, ...]) -> torch.Tensor:
    """`sum_k y[k] Q_k(w)` in one compiled pass (y[k] broadcast against w: a number, or one per block)."""
    return _mix_compiled(w.detach(), y.detach(), list(scales), tuple(kinds))


def inner(w: torch.Tensor, grad: torch.Tensor, scales: Sequence[torch.Tensor | None], kinds: tuple[Kind, ...],
          blocks: int = 0) -> torch.Tensor:
    """`<grad, Q_k(w)>` for every candidate k in one compiled pass: shape (K,), or (K, blocks) for a
    weight of `blocks` equal blocks along its first dimension, one number per block."""
    return _inner_compiled(w.detach(), grad, list(scales), tuple(kinds), blocks)
