"""Word-type dropout for language models (embedding dropout, Gal & Ghahramani 2016): in training,
every word type of the vocabulary is dropped with probability p for the whole batch (each of its
occurrences gets a zero embedding) and the kept types are scaled by 1 / (1 - p). Rare words'
vectors, which the corpus fits least, are regularised as a unit; an ordinary dropout on the
embedding output drops single coordinates of single occurrences instead."""
from __future__ import annotations

import torch
from torch import nn


class WordDropout(nn.Module):
    """Scales the embeddings `x` (B, T, D) of `tokens` (B, T) by a mask drawn per word type.

    Example:
        >>> drop = WordDropout(vocab_size=10000, p=0.1)
        >>> x = drop(tokens, embedding(tokens))
    """

    def __init__(self, vocab_size: int, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"word-type dropout probability must be in [0, 1), got {p}")
        self.vocab_size, self.p = vocab_size, p

    def forward(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(self.vocab_size).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * keep[tokens].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"p={self.p}"
