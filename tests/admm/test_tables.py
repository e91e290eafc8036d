import pytest
import torch

from nas_mpq.admm import on_table, project


@pytest.fixture
def v():
    torch.manual_seed(0)
    return torch.randn(16, 12)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("per_row", [False, True])
def test_projection_lands_on_the_table(v, bits, per_row):
    codes, scale = project(v, bits, per_row)
    assert torch.equal(codes, codes.round())
    limit = 1 if bits <= 2 else 2 ** (bits - 1) - 1
    assert codes.abs().max() <= limit
    assert scale.shape == ((16, 1) if per_row else ())
    assert on_table(codes * scale, bits, scale)
    if bits == 1:
        assert set(codes.unique().tolist()) == {-1.0, 1.0}


def test_binary_projection_is_the_closed_form(v):
    codes, scale = project(v, 1)
    assert torch.equal(codes, torch.sign(v))
    assert torch.allclose(scale, v.abs().mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_alternating_fit_does_not_increase_the_error(v, bits):
    from nas_mpq.quant.functional import fit_scale, qmax, uniform_codes
    s0 = fit_scale(v, bits, iters=0)
    err0 = (v - uniform_codes(v, bits, s0) * s0).norm()
    codes, scale = project(v, bits, iters=5)
    assert (v - codes * scale).norm() <= err0 + 1e-6
    # ADMM projects onto the grid the search and QAT use: the same scale
    assert torch.equal(project(v, bits)[1], fit_scale(v, bits))
    # the codes are the nearest table points for the returned scale: no code of the table is
    # nearer any element (ties aside) than the one picked
    table = torch.arange(-qmax(bits), qmax(bits) + 1, dtype=v.dtype)
    distance = (v.unsqueeze(-1) - table * scale).abs()
    picked = (v - codes * scale).abs()
    assert (picked <= distance.min(dim=-1).values + 1e-6).all()


def test_ternary_thresholds():
    codes, scale = project(torch.tensor([0.9, 1.1, -1.0, 0.1, -0.05, 1.0]), 2, iters=0)
    assert codes.tolist() == [1.0, 1.0, -1.0, 0.0, 0.0, 1.0]


def test_projection_of_all_zero_and_special_bits():
    z = torch.zeros(4, 3)
    codes, scale = project(z, 4)
    assert torch.equal(codes * scale, z) and scale > 0
    assert torch.equal(project(z + 1, 0)[0], z)
    v = torch.tensor([1.0001, -2.5])
    assert torch.equal(project(v, 16)[0], v.half().float())
    assert torch.equal(project(v, 32)[0], v)
    with pytest.raises(ValueError, match="unknown bit-width 5"):
        project(v, 5)
