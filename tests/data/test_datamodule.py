import pytest
import torch

from nas_mpq.data import LMDataModule


def test_batches_and_search_split(corpus_dir):
    dm = LMDataModule(str(corpus_dir), max_vocab=300, batch_size=4, eval_batch_size=2, bptt=10,
                      search_fraction=0.2)
    assert dm.vocab_size == 300 and dm.vocab.itos[0] == "<unk>"
    train, search = dm.split_tokens("train"), dm.split_tokens("search")
    # the search split is the held-out tail of the training text
    total = len(train) + len(search)
    assert len(search) == total - int(total * 0.8)
    batches = list(dm.train_dataloader())
    x, y, first = batches[0]
    assert x.shape == (4, 10) and first and not batches[1][2]
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(batches[1][0][:, 0], y[:, -1])  # streams continue across batches
    sx, _, _ = next(iter(dm.search_dataloader()))
    assert torch.equal(sx[0, :10], search[:10])
    vx, _, _ = next(iter(dm.val_dataloader()))
    assert vx.shape == (2, 10)


def test_char_level(corpus_dir):
    dm = LMDataModule(str(corpus_dir), level="char", max_vocab=None)
    assert 30 < dm.vocab_size < 80
    assert dm.tokenizer == "chars"


def test_bundled_defaults():
    dm = LMDataModule()
    assert dm.tokenizer == "words_punct" and dm.lowercase
    assert dm.vocab_size == 10000
    assert dm.split_tokens("valid").numel() > 10000


def test_bad_arguments(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match=r"missing \['valid.txt', 'test.txt'\]"):
        LMDataModule(str(tmp_path))
    with pytest.raises(ValueError, match="search_fraction"):
        LMDataModule(search_fraction=1.0)
    with pytest.raises(ValueError, match="unknown level 'byte'"):
        LMDataModule(level="byte")
    with pytest.raises(FileNotFoundError, match="set download: true"):
        LMDataModule("ptb", data_dir=str(tmp_path)).vocab_size
