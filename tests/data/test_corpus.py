import pytest

from conftest import shakespeare_text
from nas_mpq.data.corpus import Vocabulary, contiguous_split, read_corpus_folder, tokenize


def test_tokenizers():
    text = "First Citizen:\nBefore we proceed, hear me.\n\n"
    assert tokenize(text, "words_punct", True) == ["first", "citizen", ":", "<eos>", "before", "we",
                                                   "proceed", ",", "hear", "me", ".", "<eos>"]
    assert tokenize("a b\nc\n", "whitespace", False) == ["a", "b", "<eos>", "c", "<eos>"]
    assert tokenize("ab\n", "chars", False) == ["a", "b", "\n"]
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'"):
        tokenize("x", "bpe", False)


def test_vocabulary_cap_and_unk():
    vocab = Vocabulary.build(["a", "b", "a", "c", "a", "b"], max_size=3)
    assert vocab.itos == ["<unk>", "a", "b"]
    assert vocab.encode(["a", "c", "z", "b"]).tolist() == [1, 0, 0, 2]
    with pytest.raises(ValueError, match="max_vocab"):
        Vocabulary.build(["a"], max_size=1)


def test_bundled_split_is_contiguous_90_5_5():
    text = shakespeare_text()
    parts = contiguous_split(text)
    assert "".join(parts[s] for s in ("train", "valid", "test")) == text
    n = len(text.splitlines())
    assert abs(len(parts["train"].splitlines()) - 0.9 * n) <= 1
    assert abs(len(parts["valid"].splitlines()) - 0.05 * n) <= 1


def test_missing_split_names_the_file(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    (tmp_path / "valid.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match=r"is missing \['test.txt'\]"):
        read_corpus_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_corpus_folder(tmp_path / "nope")


def test_unreadable_or_empty_split_names_the_file(tmp_path):
    for split in ("valid", "test"):
        (tmp_path / f"{split}.txt").write_text("a b\n")
    (tmp_path / "train.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"train.txt is not UTF-8 text \(byte 5"):
        read_corpus_folder(tmp_path)
    (tmp_path / "train.txt").write_text(" \n\n")
    with pytest.raises(ValueError, match=r"train.txt is empty"):
        read_corpus_folder(tmp_path)
