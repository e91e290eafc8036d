"""LM corpora and their LightningDataModule; the scikit-learn digits for CNNs."""
from .corpus import SPLITS, TOKENIZERS, Vocabulary, read_corpus_folder, tokenize
from .datamodule import BPTTBatches, LMDataModule
from .digits import DigitsDataModule
from .download import download_corpus, verify

__all__ = ["SPLITS", "TOKENIZERS", "Vocabulary", "read_corpus_folder", "tokenize", "BPTTBatches",
           "LMDataModule", "DigitsDataModule", "download_corpus", "verify"]
