"""LightningDataModule for word- and character-level LM corpora with BPTT batches.

The training text is split in two, in order: the first (1 - search_fraction) trains the weights,
the tail is the held-out search split the choices are trained on (`search_dataloader`). valid and
test are only for reporting. Batches are (input, target, first) with input/target (B, bptt) and
`first` True on the first batch of a pass, where the model resets its carried hidden state.
Under data parallelism each process reads its own streams (Trainer(use_distributed_sampler=False);
the nas-mpq CLI sets it).

Example:
    >>> dm = LMDataModule("tinyshakespeare", max_vocab=10000, batch_size=32, bptt=35)
    >>> dm.vocab_size
"""
from __future__ import annotations

import math
from functools import cached_property
from importlib import resources
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .corpus import TOKENIZERS, Vocabulary, contiguous_split, read_corpus_folder, tokenize
from .download import DOWNLOADABLE, download_corpus

BUNDLED = ("tinyshakespeare",)
LEVELS = ("word", "char")


class BPTTBatches(Dataset):
    """A token stream cut into `batch_size` parallel streams and windows of `bptt` tokens. Under
    data parallelism the stream is cut into `world_size * batch_size` streams and each rank reads
    its own `batch_size` of them, so every rank still carries its hidden state along contiguous
    text and all ranks have the same number of batches."""

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int, rank: int = 0,
                 world_size: int = 1) -> None:
        streams = batch_size * world_size
        n = ids.numel() // streams
        if n < 2:
            raise ValueError(f"{ids.numel()} tokens are too few for batch_size={batch_size}"
                             + (f" on each of {world_size} processes" if world_size > 1 else ""))
        self.data = ids[: n * streams].view(streams, n)[rank * batch_size:(rank + 1) * batch_size]
        self.bptt = bptt

    def __len__(self) -> int:
        return math.ceil((self.data.shape[1] - 1) / self.bptt)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        a = i * self.bptt
        b = min(a + self.bptt, self.data.shape[1] - 1)
        return self.data[:, a:b], self.data[:, a + 1:b + 1], i == 0


class LMDataModule(pl.LightningDataModule):
    """`corpus`: "tinyshakespeare" (bundled), "ptb" or "wikitext2" (downloaded into data_dir when
    `download` is set), or a folder with train.txt, valid.txt and test.txt."""

    def __init__(self, corpus: str = "tinyshakespeare", data_dir: str = "data", level: str = "word",
                 tokenizer: str | None = None, lowercase: bool | None = None,
                 max_vocab: int | None = 10000, batch_size: int = 32, eval_batch_size: int = 10,
                 bptt: int = 35, search_fraction: float = 0.1, download: bool = False) -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; valid: {list(LEVELS)}")
        if tokenizer is not None and tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {list(TOKENIZERS)}")
        if not 0.0 < search_fraction < 1.0:
            raise ValueError(f"search_fraction must be in (0, 1), got {search_fraction}")
        for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("bptt", bptt)):
            if v < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        self.corpus, self.data_dir, self.level, self.download = corpus, data_dir, level, download
        bundled = corpus in BUNDLED
        self.tokenizer = tokenizer or ("chars" if level == "char" else
                                       "words_punct" if bundled else "whitespace")
        self.lowercase = bundled if lowercase is None else lowercase
        self.max_vocab, self.batch_size, self.eval_batch_size = max_vocab, batch_size, eval_batch_size
        self.bptt, self.search_fraction = bptt, search_fraction
        if not bundled and corpus not in DOWNLOADABLE and not download:
            read_corpus_folder(corpus)  # fail now, before any training, if a split is missing

    def _texts(self) -> dict[str, str]:
        if self.corpus in BUNDLED:
            text = resources.files("nas_mpq.data").joinpath(f"corpora/{self.corpus}.txt").read_text("utf-8")
            return contiguous_split(text)
        if self.corpus in DOWNLOADABLE:
            folder = Path(self.data_dir) / self.corpus
            if self.download:
                folder = download_corpus(self.corpus, self.data_dir)
            elif not folder.is_dir():
                raise FileNotFoundError(f"corpus {self.corpus!r} is not in {folder}; set download: true "
                                        "to fetch it (checksums verified)")
            return read_corpus_folder(folder)
        return read_corpus_folder(self.corpus)

    @cached_property
    def _encoded(self) -> tuple[Vocabulary, dict[str, torch.Tensor]]:
        tokens = {s: tokenize(t, self.tokenizer, self.lowercase) for s, t in self._texts().items()}
        vocab = Vocabulary.build(tokens["train"], self.max_vocab)
        ids = {s: vocab.encode(t) for s, t in tokens.items()}
        cut = int(len(ids["train"]) * (1.0 - self.search_fraction))
        ids["search"] = ids["train"][cut:]
        ids["train"] = ids["train"][:cut]
        return vocab, ids

    @property
    def vocab(self) -> Vocabulary:
        return self._encoded[0]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split_tokens(self, split: str) -> torch.Tensor:
        """Token ids of "train", "search", "valid" or "test"."""
        return self._encoded[1][split]

    def _loader(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        return DataLoader(BPTTBatches(self.split_tokens(split), batch_size, self.bptt, rank, world_size),
                          batch_size=None, shuffle=False)

    def _sharded(self, split: str, batch_size: int) -> DataLoader:
        """This process's streams of the split under the attached trainer (all of it alone)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return self._loader(split, batch_size)
        if getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError("LMDataModule shards its BPTT streams across processes itself; create the "
                             "Trainer with use_distributed_sampler=False (the nas-mpq CLI does)")
        return self._loader(split, batch_size, trainer.global_rank, trainer.world_size)

    def evaluation_batches(self, split: str = "test") -> DataLoader:
        """The whole split at eval_batch_size in one process, whatever the trainer's world size:
        what a reported test perplexity is computed on."""
        return self._loader(split, self.eval_batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._sharded("train", self.batch_size)

    def search_dataloader(self) -> DataLoader:
        """Batches of the held-out search split, for the architecture step."""
        return self._sharded("search", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._sharded("valid", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._sharded("test", self.eval_batch_size)
