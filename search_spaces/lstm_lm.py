"""Word- or character-level LSTM language model and its default search space: one group per LSTM
gate and direction of input/recurrent weights (8 per layer), one for the embedding and one for the
softmax layer (one shared group when tied). Biases stay FP32."""
from __future__ import annotations

import torch
from torch import nn

from nas_mpq.search.space import GroupRule, SearchSpace, check_grouping, vocabulary_buckets

from . import register_search_space
from .word_dropout import WordDropout

DEFAULT_CANDIDATES = [1, 2, 4, 8, 32]
GROUPINGS = ("gate", "tensor")


def lstm_lm_space(candidates: list[int] | None = None, grouping: str = "gate",
                  method: str = "uniform", per_channel: bool = False,
                  activation_candidates: list[int] | None = None,
                  freq_buckets: int | None = None) -> SearchSpace:
    """The default space; `grouping="tensor"` gives one group per LSTM weight instead of one per
    gate. `freq_buckets=N` splits the embedding and softmax weights into N frequency buckets of
    rows (the vocabulary is sorted by frequency; see search.layers.zipf_bucket_rows)."""
    check_grouping("lstm_lm", grouping, GROUPINGS)
    return SearchSpace("lstm_lm", list(candidates if candidates is not None else DEFAULT_CANDIDATES),
                       rules=[GroupRule("rnn", grouping=grouping), *vocabulary_buckets(freq_buckets)],
                       method=method, per_channel=per_channel,
                       activation_candidates=activation_candidates)


@register_search_space("lstm_lm", lstm_lm_space,
                       example_args={"vocab_size": 40, "embed_dim": 8, "hidden_dim": 8, "num_layers": 2,
                                     "dropout": 0.0},
                       example_space={"grouping": "tensor", "method": "lsq", "freq_buckets": 3})
class LSTMLM(nn.Module):
    """Embedding -> dropout -> n-layer LSTM -> dropout -> linear softmax layer; `word_dropout`
    drops whole word types from the embedding in training (search_spaces.word_dropout).

    Example:
        >>> net = LSTMLM(vocab_size=10000, embed_dim=256, hidden_dim=256, num_layers=2)
        >>> logits, hidden = net(torch.randint(0, 10000, (20, 35)))
    """

    def __init__(self, vocab_size: int, embed_dim: int = 256, hidden_dim: int = 256,
                 num_layers: int = 2, dropout: float = 0.5, tie_weights: bool = False,
                 word_dropout: float = 0.0) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if tie_weights and embed_dim != hidden_dim:
            raise ValueError(f"tie_weights needs embed_dim == hidden_dim, got {embed_dim} and {hidden_dim}")
        self.vocab_size, self.hidden_dim, self.num_layers = vocab_size, hidden_dim, num_layers
        self.encoder = nn.Embedding(vocab_size, embed_dim)
        self.word_drop = WordDropout(vocab_size, word_dropout)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(embed_dim, hidden_dim, num_layers,
                           dropout=dropout if num_layers > 1 else 0.0, batch_first=True)
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.encoder.weight

    def forward(self, tokens: torch.Tensor,
                hidden: tuple[torch.Tensor, torch.Tensor] | None = None):
        """tokens (B, T) -> logits (B, T, V), new hidden state."""
        x = self.drop(self.word_drop(tokens, self.encoder(tokens)))
        out, hidden = self.rnn(x, hidden)
        return self.decoder(self.drop(out)), hidden

    def example_input(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, self.vocab_size, (batch_size, 8), generator=g),)
