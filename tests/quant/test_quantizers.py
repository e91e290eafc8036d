import pytest
import torch

from nas_mpq.quant import (VALID_BITS, BinaryQuantizer, FullPrecision, LSQQuantizer, UniformQuantizer,
                           check_bits, make_quantizer, qmax, round_ste)
from nas_mpq.quant import functional as F


@pytest.fixture
def w():
    torch.manual_seed(0)
    return torch.randn(6, 10)


def test_check_bits_names_bad_value_and_valid_ones():
    assert [check_bits(b) for b in VALID_BITS] == list(VALID_BITS)
    for bad in (5, 7, 64, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"unknown bit-width .*valid bit-widths are \[0, 1, 2, 3, 4, 8, 16, 32\]"):
            check_bits(bad)
    with pytest.raises(ValueError, match="unknown bit-width 5"):
        make_quantizer(5, torch.zeros(2, 2))


def test_qmax_grid():
    assert [qmax(b) for b in (2, 3, 4, 8)] == [1, 3, 7, 127]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_uniform_values_are_scale_times_codes_in_range(w, bits, per_channel):
    q = UniformQuantizer(bits, per_channel)
    out = q(w)
    s = F.uniform_scale(w, bits, per_channel)
    codes = out / s
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert codes.abs().max() <= qmax(bits) + 1e-5
    assert torch.equal(out, q.value(w))
    distinct = out.unique().numel() if not per_channel else max(r.unique().numel() for r in out)
    assert distinct <= 2 * qmax(bits) + 1


def test_uniform_scale_rules(w):
    # max-abs for b >= 4, mean-based for b <= 3
    assert torch.allclose(F.uniform_scale(w, 8), w.abs().max() / 127)
    assert torch.allclose(F.uniform_scale(w, 2), 2 * w.abs().mean() / 1.0)
    per_row = F.uniform_scale(w, 4, per_channel=True)
    assert per_row.shape == (6, 1)
    assert torch.allclose(per_row.squeeze(1), w.abs().amax(1) / 7)


def test_binary_is_mean_abs_times_sign(w):
    w = w.clone()
    w[0, 0] = 0.0
    out = BinaryQuantizer()(w)
    a = w.abs().mean()
    expected = torch.where(w >= 0, a, -a)
    assert torch.equal(out, expected)
    assert out[0, 0] == a  # sign(0) = +1
    per = BinaryQuantizer(per_channel=True).value(w)
    assert torch.allclose(per.abs(), w.abs().mean(1, keepdim=True).expand_as(w))


def test_full_precision(w):
    assert FullPrecision(32)(w) is w
    assert torch.equal(FullPrecision(16)(w), w.half().float())


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_identity_ste_gradient(w, bits):
    w = w.clone().requires_grad_(True)
    g = torch.randn_like(w)
    make_quantizer(bits, w.detach())(w).backward(g)
    assert torch.equal(w.grad, g)


def test_round_ste_value_exact_and_gradient_identity():
    x = torch.tensor([0.4, 1.5, -2.6, 3.49999], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, x.detach().round())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))


def test_lsq_gradients(w):
    q = LSQQuantizer(4, w)
    x = w.clone().requires_grad_(True)
    out = q(x)
    s = q.scale.detach()
    assert torch.allclose(out / s, (out / s).round(), atol=1e-5)
    out.sum().backward()
    inside = (w / s).abs() <= 7
    # STE: gradient 1 inside the clipping range, 0 outside
    assert torch.equal(x.grad, inside.float())
    # scale gradient of LSQ: sum over elements of (round(v) - v) inside, +-q outside, times g
    v = w / s
    per_elem = torch.where(inside, v.round() - v, torch.sign(v) * 7)
    g = 1 / (w.numel() * 7) ** 0.5
    assert torch.allclose(q.scale.grad, per_elem.sum() * g, rtol=1e-4, atol=1e-6)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"unknown quantization method 'pact'; valid: \['uniform', 'lsq'\]"):
        make_quantizer(4, torch.zeros(2, 2), method="pact")
