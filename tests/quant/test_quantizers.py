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
    s = F.fit_scale(w, bits, per_channel)
    codes = out / s
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert codes.abs().max() <= qmax(bits) + 1e-5
    assert torch.equal(out, q.value(w))
    distinct = out.unique().numel() if not per_channel else max(r.unique().numel() for r in out)
    assert distinct <= 2 * qmax(bits) + 1


def _relative_error(w: torch.Tensor, bits: int, per_channel: bool = False, iters: int = F.FIT_ITERS) -> float:
    if bits == 1:
        w_hat = BinaryQuantizer(per_channel=per_channel).value(w)
    else:
        s = F.fit_scale(w, bits, per_channel, iters)
        w_hat = F.uniform_codes(w, bits, s) * s
    return float(((w_hat - w) ** 2).sum() / (w ** 2).sum())


WEIGHT_DISTRIBUTIONS = {
    "gaussian": lambda n: torch.randn(n),
    "laplace": lambda n: torch.distributions.Laplace(0.0, 1.0).sample((n,)),
    "student_t3": lambda n: torch.distributions.StudentT(3.0).sample((n,)),
}


@pytest.mark.parametrize("dist", list(WEIGHT_DISTRIBUTIONS))
@pytest.mark.parametrize("per_channel", [False, True])
def test_fitted_error_falls_strictly_with_bits(dist, per_channel):
    torch.manual_seed(0)
    w = WEIGHT_DISTRIBUTIONS[dist](256 * 512).reshape(256, 512)
    errors = [_relative_error(w, b, per_channel) for b in (1, 2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # the old max-abs grid at 4 bits was worse than 2 bits on heavy tails; the fit is far better
    assert errors[3] < 0.5 * errors[1]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fit_is_near_a_long_fit_and_below_max_abs(bits):
    torch.manual_seed(1)
    w = torch.distributions.StudentT(3.0).sample((40000,))
    fitted, long_fit = _relative_error(w, bits), _relative_error(w, bits, iters=60)
    assert fitted <= 1.03 * long_fit + 5e-4  # within 3 % (or 5e-4 of relative error at 8 bits)
    s = w.abs().max() / qmax(bits)
    max_abs = float(((F.uniform_codes(w, bits, s) * s - w) ** 2).sum() / (w ** 2).sum())
    assert fitted < max_abs


def test_fit_scale_shapes_and_zero_weights(w):
    assert F.fit_scale(w, 4).shape == ()
    assert F.fit_scale(w, 4, per_channel=True).shape == (6, 1)
    assert F.fit_scale(torch.randn(5, 3, 3, 3), 2, per_channel=True).shape == (5, 1, 1, 1)
    assert F.fit_scale(torch.zeros(3, 4), 4) > 0
    # a large weight is fitted on a fixed spread subset: deterministic, and close to the full fit
    big = torch.randn(300, 1000)
    assert torch.equal(F.fit_scale(big, 4), F.fit_scale(big.clone(), 4))
    assert abs(_relative_error(big, 4) - _relative_error(big[:64], 4)) < 0.01


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


def _fit_alone(w: torch.Tensor, bits: int, per_channel: bool, iters: int = F.FIT_ITERS) -> torch.Tensor:
    """The alternating fit of one width written out on its own, every intermediate a new tensor:
    the reference that the shared statistics, the batched widths and in-place steps reproduce (up
    to the order of long sums)."""
    rows = F._fit_sample(w, per_channel).contiguous()
    q, tiny = qmax(bits), torch.finfo(rows.dtype).tiny
    gauss = rows.square().mean(dim=1, keepdim=True).sqrt() * F._STEP_PER_RMS.get(bits, 4.0 / q)
    starts = torch.cat([gauss * m for m in F._START_MULTIPLES] + [rows.abs().amax(dim=1, keepdim=True) / q], dim=1)
    starts = starts.clamp_min(tiny).T.unsqueeze(-1)
    errors = (torch.clamp(torch.round(rows / starts), -q, q) * starts - rows).square().sum(dim=-1)
    s = torch.gather(starts.squeeze(-1), 0, errors.argmin(dim=0, keepdim=True)).T
    for _ in range(iters):
        c = torch.clamp(torch.round(rows / s), -q, q)
        cc = (c * c).sum(dim=1, keepdim=True)
        s = torch.where(cc > 0, (rows * c).sum(dim=1, keepdim=True) / cc.clamp_min(1.0), s).clamp_min(tiny)
    return s.reshape((-1,) + (1,) * (w.dim() - 1) if per_channel else ())


@pytest.mark.parametrize("shape", [(6, 10), (256, 256), (3000, 40), (8, 3, 3, 3), (64, 64, 3, 3)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_widths_fitted_together_equal_each_fitted_alone(shape, per_channel):
    """WeightStats reads the sample, its rms and its max-abs once for every width, and fits a
    group's widths in one batched pass: each width's scale is exactly the one fit_scale gives it
    alone, also where a long sum into one output is split between threads (two threads here), and
    agrees with the fit written out on its own up to the order of its sums."""
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample(shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together, alone = F.WeightStats(w, per_channel, widths=(1, 2, 3, 4, 8, 32)), F.WeightStats(w, per_channel)
        for bits in (8, 2, 4, 3):
            assert torch.equal(together.scale(bits), F.fit_scale(w, bits, per_channel)), bits
            assert torch.equal(alone.scale(bits), F.fit_scale(w, bits, per_channel)), bits
            assert torch.allclose(alone.scale(bits), _fit_alone(w, bits, per_channel), rtol=1e-5, atol=0), bits
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_widths_fitted_together_in_other_dtypes(dtype, per_channel):
    """float64 is fitted in one batched pass, bfloat16 one width at a time (its scalars would round
    differently as tensors): either way each width's scale is the one it gets alone."""
    for shape in [(48, 30), (64, 64), (300, 20)]:
        torch.manual_seed(0)
        w = torch.randn(shape).to(dtype)
        together = F.WeightStats(w, per_channel, widths=(2, 3, 4, 8))
        for bits in (4, 2, 8, 3):
            s = together.scale(bits)
            assert s.dtype == dtype and torch.equal(s, F.fit_scale(w, bits, per_channel)), (shape, bits)


def test_widths_past_the_batch_limit_are_fitted_one_at_a_time(monkeypatch):
    w = torch.randn(64, 64)
    monkeypatch.setattr(F, "FIT_BATCH_ELEMENTS", 6 * w.numel())
    stats = F.WeightStats(w, widths=(2, 4, 8))
    assert stats._fitted_together(4, F.FIT_ITERS)[0] == [4]
    monkeypatch.setattr(F, "FIT_BATCH_ELEMENTS", 18 * w.numel())
    assert stats._fitted_together(4, F.FIT_ITERS)[0] == [2, 4, 8]
    assert all(torch.equal(stats.scale(b), F.fit_scale(w, b)) for b in (2, 4, 8))


@pytest.mark.parametrize("bits", [0, 1, 2, 3, 4, 8, 16, 32])
@pytest.mark.parametrize("per_channel", [False, True])
def test_a_value_written_into_a_buffer_equals_the_value_alone(w, bits, per_channel):
    q = make_quantizer(bits, w, per_channel=per_channel)
    buffer = torch.full_like(w, float("nan"))
    written = q.value(w, F.WeightStats(w, per_channel), out=buffer)
    assert torch.equal(written, q.value(w)) and torch.equal(written, q(w).detach())
    if bits in (1, 2, 3, 4, 8):
        assert written is buffer
