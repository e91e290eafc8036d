"""LM corpora and their LightningDataModule."""
from .corpus import SPLITS, TOKENIZERS, Vocabulary, read_corpus_folder, tokenize
from .datamodule import BPTTBatches, LMDataModule
from .download import download_corpus, verify

__all__ = ["SPLITS", "TOKENIZERS", "Vocabulary", "read_corpus_folder", "tokenize", "BPTTBatches",
           "LMDataModule", "download_corpus", "verify"]
