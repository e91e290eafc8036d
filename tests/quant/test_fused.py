"""quant.fused: a group's candidates mixed, and their inner products with a gradient, in one pass;
the compiled pass against the candidates' own values, and the fallback where compilation fails."""
from __future__ import annotations

import warnings

import pytest
import torch

from nas_mpq.quant import FullPrecision, fused, make_quantizer
from nas_mpq.quant.functional import WeightStats

BITS = (1, 2, 4, 8, 32)


def _candidates(w: torch.Tensor, per_channel: bool = False, per_block: bool = False):
    quantizers = [make_quantizer(b, w[0] if per_block else w, per_channel=per_channel) for b in BITS]
    stats = WeightStats(w, per_channel, BITS, per_block)
    return quantizers, [q.fitted_scale(w, stats) for q in quantizers], tuple(q.fused_kind for q in quantizers), stats


@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_pass_is_every_candidates_value_mixed(uncompiled_fusion, per_channel):
    torch.manual_seed(0)
    w, y = torch.randn(48, 20), torch.softmax(torch.randn(len(BITS)), 0)
    quantizers, scales, kinds, stats = _candidates(w, per_channel)
    values = [q.value(w, stats) for q in quantizers]
    assert torch.equal(fused.mix(w, y, scales, kinds), sum(v * y[k] for k, v in enumerate(values)))
    grad = torch.randn_like(w)
    assert torch.equal(fused.inner(w, grad, scales, kinds), torch.stack([(grad * v).sum() for v in values]))


def test_fused_pass_per_block(uncompiled_fusion):
    """Equal blocks (an LSTM weight's gates), each with its own scales and its own y: the inner
    products come one per candidate and block."""
    torch.manual_seed(1)
    w = torch.randn(4, 16, 8)
    y = torch.softmax(torch.randn(len(BITS), 4), 0).view(len(BITS), 4, 1, 1)
    quantizers, scales, kinds, stats = _candidates(w, per_block=True)
    values = [q.value(w, stats) for q in quantizers]
    assert torch.equal(fused.mix(w, y, scales, kinds), sum(v * y[k] for k, v in enumerate(values)))
    grad = torch.randn_like(w)
    expected = torch.stack([(grad * v).reshape(4, -1).sum(1) for v in values])
    assert torch.equal(fused.inner(w, grad, scales, kinds, blocks=4), expected)


def test_only_quantizers_the_pass_computes_exactly_have_a_kind():
    w = torch.randn(8, 8)
    assert make_quantizer(4, w).fused_kind == ("uniform", 7)
    assert make_quantizer(1, w).fused_kind == ("binary", 0)
    assert make_quantizer(32, w).fused_kind == ("full", 0)
    assert FullPrecision(16).fused_kind is None  # a compiler may elide the rounding through float16
    assert make_quantizer(4, w, method="lsq").fused_kind is None
    assert make_quantizer(0, w).fused_kind is None


def test_a_compiler_failure_warns_once_and_falls_back(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_mix_compiled", fused._Compiled(fused._mix))
    torch.manual_seed(2)
    w, y = torch.randn(32, 8), torch.softmax(torch.randn(len(BITS)), 0)
    _, scales, kinds, _ = _candidates(w)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\)"):
        first = fused.mix(w, y, scales, kinds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fused.mix(w, y, scales, kinds)
    assert torch.equal(first, fused._mix(w, y, scales, kinds)) and torch.equal(first, again)
    assert "no C++ compiler" in fused._mix_compiled.failed


def test_an_error_of_the_arguments_is_raised_not_taken_for_the_compilers(uncompiled_fusion):
    """A call that fails uncompiled too (here: scales of the wrong shape) raises its error and
    leaves compilation on."""
    w, y = torch.randn(6, 4), torch.softmax(torch.randn(len(BITS)), 0)
    _, scales, kinds, _ = _candidates(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="size of tensor"):
            fused.mix(w, y, [torch.ones(5, 1)] + scales[1:], kinds)
    assert fused._mix_compiled.failed is None


@pytest.mark.slow
def test_past_the_recompile_limit_it_warns_and_falls_back(monkeypatch):
    """Really compiled: with room for one graph, a weight of another rank does not run uncompiled
    unnoticed (dynamo's own behaviour at its limit) but warns and falls back."""
    torch._dynamo.reset()  # dynamo keeps graphs per code object: earlier tests' graphs of _mix count too
    monkeypatch.setattr(fused, "RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(fused, "_mix_compiled", fused._Compiled(fused._mix))
    torch.manual_seed(4)
    for w in (torch.randn(16, 8), torch.randn(2, 16, 8)):
        y = torch.softmax(torch.randn(len(BITS)), 0)
        _, scales, kinds, _ = _candidates(w)
        if w.dim() == 2:
            fused.mix(w, y, scales, kinds)
            assert fused._mix_compiled.failed is None
            continue
        with pytest.warns(RuntimeWarning, match="FailOnRecompileLimitHit"):
            out = fused.mix(w, y, scales, kinds)
        assert torch.equal(out, fused._mix(w, y, scales, kinds))


@pytest.mark.slow
def test_compiled_pass_matches_the_candidates_values():
    """Really compiled (a C++ compiler on the CPU): per tensor, per channel and per block, the mix
    to float rounding, the inner products to the order of a float sum."""
    torch.manual_seed(3)
    for w, per_channel, per_block in ((torch.randn(96, 40), False, False), (torch.randn(96, 40), True, False),
                                      (torch.randn(4, 24, 16), False, True)):
        quantizers, scales, kinds, stats = _candidates(w, per_channel, per_block)
        y = torch.softmax(torch.randn(len(BITS), *((w.shape[0],) if per_block else ())), 0)
        y = y.view(len(BITS), w.shape[0], 1, 1) if per_block else y
        values = [q.value(w, stats) for q in quantizers]
        expected = sum(v * y[k] for k, v in enumerate(values))
        torch.testing.assert_close(fused.mix(w, y, scales, kinds), expected, rtol=1e-6, atol=1e-6)
        grad = torch.randn_like(w)
        shape = (w.shape[0], -1) if per_block else (-1,)
        inner = torch.stack([(grad * v).reshape(shape).sum(-1) for v in values])
        got = fused.inner(w, grad, scales, kinds, w.shape[0] if per_block else 0)
        torch.testing.assert_close(got, inner, rtol=1e-5, atol=1e-4)
    compiled = fused._mix_compiled.failed is None and fused._inner_compiled.failed is None
    assert compiled == fused.compiler_available()  # without a C++ compiler: the uncompiled fallback
