"""A group's candidates quantized and mixed in one pass, compiled with `torch.compile`.

`mix(w, y, scales, kinds)` is `sum_k y_k Q_k(w)` and `inner(w, grad, scales, kinds)` is
`<grad, Q_k(w)>` for every k, each written as one elementwise expression over the candidates, so
that `torch.compile` turns it into one loop over the weight (one kernel on a GPU) instead of
three to five operators per candidate, each a pass over memory. `kinds` holds each candidate's
`fused_kind` (its quantizer's: ("binary", 0), ("uniform", q) for the grid [-q, q] or ("full", 0),
32 bits; not 16 bits, whose rounding through float16 the compiler may elide); `scales` its fitted
scale (per tensor, per channel or per block, broadcast against w; None for "full").

Where compilation is unavailable (no C++ compiler, an unsupported platform), fails, or would pass
RECOMPILE_LIMIT graphs, the first such call warns once and the same expressions run uncompiled
from then on: the numbers agree with the compiled ones to float rounding, and with the
candidates' own `value` to float rounding too (float32 and float64 weights: in reduced precision
the compiled code computes in float32 and could round a weight to another code).

    >>> w, y = torch.randn(64, 32), torch.softmax(torch.randn(3), 0)
    >>> mix(w, y, [w.abs().mean(), torch.tensor(0.3), None], (("binary", 0), ("uniform", 7), ("full", 0)))
"""
from __future__ import annotations

import shutil
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


RECOMPILE_LIMIT = 32
"""Graphs each fused function may compile (one per rank, stride pattern and candidate set in
use; torch's own default, 8, is shared with everything else a process compiles). Past it the
call falls back, with the warning, instead of dynamo running it uncompiled unnoticed."""


class _Compiled:
    """`torch.compile(fn)`, built on first use. Where a compiled call fails and `fn` itself does
    not (the compiler's failure, not the arguments'), a warning and `fn` for good (each compiled
    function falls back on its own); an error `fn` raises too is raised."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self._compiled = fn, None
        self.failed: str | None = None

    def __call__(self, *args):
        if self.failed is not None:
            return self.fn(*args)
        if self._compiled is None:  # torch.compile imports dynamo: not at nas_mpq's import
            self._compiled = torch.compile(self.fn, dynamic=None)
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
                return self._compiled(*args)
        except Exception as err:  # noqa: BLE001 - judged by whether the uncompiled call succeeds
            out = self.fn(*args)
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            hint = "" if compiler_available() else "; no C++ compiler (c++, g++, clang++) on the PATH"
            warnings.warn(f"fuse_candidates: torch.compile failed ({self.failed}{hint}); the candidates are "
                          f"quantized uncompiled from now on", RuntimeWarning, stacklevel=2)
            return out


_mix_compiled, _inner_compiled = _Compiled(_mix), _Compiled(_inner)


def mix(w: torch.Tensor, y: torch.Tensor, scales: Sequence[torch.Tensor | None], kinds: tuple[Kind, ...]) -> torch.Tensor:
    """`sum_k y[k] Q_k(w)` in one compiled pass (y[k] broadcast against w: a number, or one per block)."""
    return _mix_compiled(w.detach(), y.detach(), list(scales), tuple(kinds))


def inner(w: torch.Tensor, grad: torch.Tensor, scales: Sequence[torch.Tensor | None], kinds: tuple[Kind, ...],
          blocks: int = 0) -> torch.Tensor:
    """`<grad, Q_k(w)>` for every candidate k in one compiled pass: shape (K,), or (K, blocks) for a
    weight of `blocks` equal blocks along its first dimension, one number per block."""
    return _inner_compiled(w.detach(), grad, list(scales), tuple(kinds), blocks)
