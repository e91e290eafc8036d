"""Corpora in the PTB/WikiText layout (a folder with train.txt, valid.txt, test.txt), tokenised at
word or character level, with a frequency-capped vocabulary built on the training split."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

SPLITS = ("train", "valid", "test")
TOKENIZERS = ("whitespace", "words_punct", "chars")
UNK, EOS = "<unk>", "<eos>"
_WORD_PUNCT = re.compile(r"[\w']+|[^\w\s]")


def tokenize(text: str, tokenizer: str, lowercase: bool) -> list[str]:
    """Tokens of `text`. whitespace: split on spaces, <eos> per line (PTB/WikiText convention);
    words_punct: words and punctuation marks as tokens, <eos> per non-empty line; chars: every
    character, newlines included."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {list(TOKENIZERS)}")
    if lowercase:
        text = text.lower()
    if tokenizer == "chars":
        return list(text)
    split = str.split if tokenizer == "whitespace" else _WORD_PUNCT.findall
    tokens: list[str] = []
    for line in text.splitlines():
        words = split(line)
        if words:
            tokens.extend(words)
            tokens.append(EOS)
    return tokens


@dataclass
class Vocabulary:
    """Token <-> id. Id 0 is <unk>; the rest by descending training frequency (ties: first seen)."""

    itos: list[str]

    def __post_init__(self) -> None:
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, tokens: Iterable[str], max_size: int | None) -> "Vocabulary":
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_vocab must be at least 2 (<unk> and one token), got {max_size}")
        counts = Counter(tokens)
        ordered = [t for t, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if t != UNK]
        keep = ordered if max_size is None else ordered[: max_size - 1]
        return cls([UNK] + keep)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        return torch.tensor([self.stoi.get(t, 0) for t in tokens], dtype=torch.long)


def read_corpus_folder(folder: str | Path) -> dict[str, str]:
    """The three split texts of a folder; a missing split is a clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {folder} does not exist")
    missing = [f"{s}.txt" for s in SPLITS if not (folder / f"{s}.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"corpus folder {folder} is missing {missing}; a corpus folder needs "
                                f"{[s + '.txt' for s in SPLITS]}")
    return {s: read_split(folder / f"{s}.txt") for s in SPLITS}


def read_split(path: Path) -> str:
    """The text of one split file; text that is not UTF-8, or a file with no text, is a
    ValueError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); corpus files must be "
                         "UTF-8") from None
    if not text.strip():
        raise ValueError(f"{path} is empty; every split of a corpus folder ({', '.join(s + '.txt' for s in SPLITS)}) "
                         "needs text")
    return text


def contiguous_split(text: str, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)) -> dict[str, str]:
    """Split one text into train/valid/test by whole lines, in order (no shuffling)."""
    lines = text.splitlines(keepends=True)
    a = int(len(lines) * fractions[0])
    b = a + int(len(lines) * fractions[1])
    return {"train": "".join(lines[:a]), "valid": "".join(lines[a:b]), "test": "".join(lines[b:])}
