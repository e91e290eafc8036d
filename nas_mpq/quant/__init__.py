"""Pure-torch weight quantizers and straight-through estimators."""
from .activation import ACTIVATION_BIT_WIDTHS, ActivationQuantizer, check_activation_bits
from .functional import VALID_BITS, check_bits, identity_ste, qmax, round_ste
from . import fused
from .quantizers import (
    QUANT_METHODS,
    BinaryQuantizer,
    FullPrecision,
    LSQQuantizer,
    Prune,
    QuantizerSettings,
    UniformQuantizer,
    WeightQuantizer,
    make_quantizer,
)

__all__ = [
    "VALID_BITS", "QUANT_METHODS", "check_bits", "qmax", "round_ste", "identity_ste",
    "WeightQuantizer", "FullPrecision", "Prune", "BinaryQuantizer", "UniformQuantizer",
    "LSQQuantizer", "QuantizerSettings", "make_quantizer", "ACTIVATION_BIT_WIDTHS", "ActivationQuantizer", "check_activation_bits",
]
