"""Decoder-only causal Transformer LM (token + position embeddings, pre-LN blocks, tied or untied
output) and its default search space: per layer one group each for W_Q, W_K, W_V, W_O, FFN1 and
FFN2, one for each embedding and one for the softmax layer (shared when tied). With
`grouping="head"` the Q, K and V weights split by rows and W_O by columns into one group per
head. LayerNorms and biases stay FP32.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nas_mpq.search.space import GroupRule, SearchSpace, check_candidates, check_grouping, vocabulary_buckets

from . import register_search_space
from .word_dropout import WordDropout

DEFAULT_CANDIDATES = [1, 2, 4, 8, 32]
GROUPINGS = ("tensor", "head")


def transformer_lm_space(candidates: list[int] | None = None, grouping: str = "tensor",
                         blocks: int | None = None, prune: bool = False, method: str = "uniform",
                         per_channel: bool = False,
                         activation_candidates: list[int] | None = None,
                         freq_buckets: int | None = None) -> SearchSpace:
    """`grouping="head"` gives per-head groups for Q, K, V and O; `blocks` is then the
    network's number of heads. `prune` adds the 0-bit candidate to the per-head groups (a head
    can be removed; never every head of a projection). `freq_buckets=N` splits the token
    embedding and the softmax layer into N frequency buckets of rows."""
    check_grouping("transformer_lm", grouping, GROUPINGS)
    cands = check_candidates(candidates if candidates is not None else DEFAULT_CANDIDATES)
    rules: list[GroupRule] = vocabulary_buckets(freq_buckets)
    if grouping == "head":
        if blocks is None:
            raise ValueError("grouping 'head' needs blocks = the number of attention heads")
        heads = sorted(set(cands) | {0}) if prune else cands
        rules += [GroupRule("*.attn.[qkv]", grouping="head", blocks=blocks, candidates=heads),
                  GroupRule("*.attn.o", grouping="head", blocks=blocks, axis=1, candidates=heads)]
    elif prune:
        raise ValueError("prune needs grouping 'head' (a whole projection is never pruned)")
    return SearchSpace("transformer_lm", cands, rules=rules, method=method, per_channel=per_channel,
                       activation_candidates=activation_candidates)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate Q, K, V and output projections."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                           dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + FFN2(GELU(FFN1(LN(x))))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, dropout)
        self.ffn1, self.ffn2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ffn2(F.gelu(self.ffn1(self.ln2(x)))))


@register_search_space("transformer_lm", transformer_lm_space,
                       example_args={"vocab_size": 40, "d_model": 16, "num_heads": 2, "num_layers": 2,
                                     "max_len": 16, "dropout": 0.0},
                       example_space={"grouping": "head", "blocks": 2, "prune": True,
                                      "activation_candidates": [4, 8, 32], "freq_buckets": 2})
class TransformerLM(nn.Module):
    """Token + learned position embeddings -> `num_layers` pre-LN blocks -> LayerNorm -> softmax
    layer. The forward takes and returns a hidden state like the LSTM LM (always None: each BPTT
    window is attended to on its own), so the same training loop serves both. `word_dropout` drops
    whole word types from the token embedding in training (search_spaces.word_dropout).

    Example:
        >>> net = TransformerLM(vocab_size=10000, d_model=128, num_heads=4, num_layers=2)
        >>> logits, _ = net(torch.randint(0, 10000, (20, 64)))
    """

    def __init__(self, vocab_size: int, d_model: int = 128, num_heads: int = 4, num_layers: int = 2,
                 d_ff: int | None = None, max_len: int = 256, dropout: float = 0.1,
                 tie_weights: bool = False, word_dropout: float = 0.0) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of num_heads ({num_heads})")
        self.vocab_size, self.max_len, self.num_heads = vocab_size, max_len, num_heads
        self.encoder = nn.Embedding(vocab_size, d_model)
        self.word_drop = WordDropout(vocab_size, word_dropout)
        self.pos = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, d_ff or 4 * d_model, dropout)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, vocab_size)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if tie_weights:
            self.decoder.weight = self.encoder.weight

    def forward(self, tokens: torch.Tensor, hidden: None = None) -> tuple[torch.Tensor, None]:
        """tokens (B, T) -> logits (B, T, V), None."""
        t = tokens.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}; raise max_len or "
                             "shorten the BPTT window")
        x = self.drop(self.word_drop(tokens, self.encoder(tokens)) + self.pos(torch.arange(t, device=tokens.device)))
        for block in self.blocks:
            x = block(x)
        return self.decoder(self.ln_f(x)), None

    def example_input(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, self.vocab_size, (batch_size, min(8, self.max_len)), generator=g),)
