import pytest
import torch

from nas_mpq.quant import ActivationQuantizer


def test_unsigned_pact_grid_and_calibration():
    x = torch.relu(torch.randn(4000, generator=torch.Generator().manual_seed(0)))
    q = ActivationQuantizer(2)
    y = q(x)
    assert bool(q.calibrated) and not bool(q.signed)
    assert float(q.alpha) == pytest.approx(float(torch.quantile(x, 0.999)), rel=1e-6)
    a = float(q.alpha)
    levels = torch.tensor([0.0, a / 3, 2 * a / 3, a])
    assert torch.isclose(y[:, None], levels[None, :], atol=1e-6).any(1).all()
    assert float(y.max()) == pytest.approx(a) and float(y.min()) == 0.0


def test_signed_grid_and_gradients():
    x = torch.linspace(-3, 3, 601, requires_grad=True)
    q = ActivationQuantizer(4)
    q.calibrate_(x)
    q.alpha.data.fill_(2.0)
    assert bool(q.signed)
    y = q(x)
    step = 2.0 / 7
    assert torch.allclose(y / step, (y / step).round(), atol=1e-5) and float(y.abs().max()) == pytest.approx(2.0)
    y.sum().backward()
    inside, outside = x.detach().abs() < 1.999, x.detach().abs() > 2.001
    assert torch.equal(x.grad[inside], torch.ones(int(inside.sum())))  # straight through inside the clip range
    assert torch.equal(x.grad[outside], torch.zeros(int(outside.sum())))
    q.alpha.grad = None
    q(torch.linspace(-1, 3, 401)).sum().backward()  # more inputs clipped above than below
    assert q.alpha.grad is not None and float(q.alpha.grad) > 0  # through the clipping (PACT) and the step


def test_full_precision_and_bad_bits():
    x = torch.randn(10)
    assert torch.equal(ActivationQuantizer(32)(x), x)
    assert torch.equal(ActivationQuantizer(16)(x), x.half().float())
    assert list(dict(ActivationQuantizer(32).named_parameters())) == []
    for bad in (1, 0, 5):
        with pytest.raises(ValueError, match=r"bit-width|not supported"):
            ActivationQuantizer(bad)


def test_calibration_travels_with_the_state_dict():
    q = ActivationQuantizer(8)
    q(torch.randn(100) - 5)
    r = ActivationQuantizer(8)
    r.load_state_dict(q.state_dict())
    assert bool(r.calibrated) and bool(r.signed) and float(r.alpha) == float(q.alpha)
    x = torch.randn(50)
    assert torch.equal(r(x), q(x))
