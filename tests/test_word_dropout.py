"""Word-type dropout: a whole word type is dropped or kept, the same way at every occurrence, and
the language models pass it their token embeddings in training only."""
import pytest
import torch

from search_spaces.lstm_lm import LSTMLM
from search_spaces.transformer_lm import TransformerLM
from search_spaces.word_dropout import WordDropout


def test_every_occurrence_of_a_word_type_is_dropped_or_kept_together_and_kept_ones_are_rescaled():
    drop = WordDropout(vocab_size=50, p=0.4).train()
    tokens = torch.randint(0, 50, (8, 30), generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 30, 6)
    torch.manual_seed(1)
    mask = drop(tokens, torch.ones_like(x))
    torch.manual_seed(1)
    assert torch.equal(drop(tokens, x), x * mask)  # one factor per occurrence, the same draw
    assert torch.equal(mask, mask[..., :1].expand_as(mask))
    factors = {t: mask[..., 0][tokens == t].unique().tolist() for t in tokens.unique().tolist()}
    assert all(f in ([0.0], [pytest.approx(1 / 0.6)]) for f in factors.values()), factors
    dropped = sum(f == [0.0] for f in factors.values())
    assert 0 < dropped < len(factors)


def test_it_is_the_identity_in_evaluation_and_at_p_0():
    tokens, x = torch.randint(0, 10, (2, 5)), torch.randn(2, 5, 3)
    assert torch.equal(WordDropout(10, 0.5).eval()(tokens, x), x)
    assert torch.equal(WordDropout(10, 0.0).train()(tokens, x), x)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_a_probability_outside_0_1_is_refused_naming_it(p):
    with pytest.raises(ValueError, match=rf"\[0, 1\), got {p}"):
        WordDropout(10, p)


@pytest.mark.parametrize("make", [lambda w: LSTMLM(30, 8, 8, 1, dropout=0.0, word_dropout=w),
                                  lambda w: TransformerLM(30, 8, 2, 1, max_len=16, dropout=0.0, word_dropout=w)])
def test_the_models_drop_word_types_in_training_only_and_keep_their_state_dict(make):
    torch.manual_seed(0)
    plain, dropped = make(0.0), make(0.9)
    dropped.load_state_dict(plain.state_dict())  # no parameter or buffer of its own
    tokens = torch.randint(0, 30, (4, 12))
    plain.eval(), dropped.eval()
    assert torch.equal(plain(tokens)[0], dropped(tokens)[0])
    plain.train(), dropped.train()
    assert not torch.allclose(plain(tokens)[0], dropped(tokens)[0])
