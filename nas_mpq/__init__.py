"""nas-mpq: differentiable mixed-precision search for language models and CNNs."""

__version__ = "0.1.0"
