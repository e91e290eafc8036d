import math

import pytest
import torch

from nas_mpq.quant.packing import pack_codes, unpack_codes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("numel", [1, 7, 8, 1001])
def test_round_trip_and_size(bits, numel):
    q = 1 if bits <= 2 else 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(bits * numel)
    codes = torch.randint(-q, q + 1, (numel,), generator=g).float()
    if bits == 1:
        codes = torch.where(codes >= 0, 1.0, -1.0)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_errors():
    with pytest.raises(ValueError, match="outside the 2-bit table"):
        pack_codes(torch.tensor([2.0]), 2)
    with pytest.raises(ValueError, match="cannot pack 16-bit codes"):
        pack_codes(torch.tensor([1.0]), 16)
    with pytest.raises(ValueError, match="need 2 uint8"):
        unpack_codes(torch.zeros(1, dtype=torch.uint8), 4, 4)
