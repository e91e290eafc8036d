"""LM corpora and their LightningDataModule; the scikit-learn digits for CNNs; a search split
for any LightningDataModule."""
from .corpus import SPLITS, TOKENIZERS, Vocabulary, read_corpus_folder, tokenize
from .datamodule import BPTTBatches, LMDataModule
from .digits import DigitsDataModule
from .download import download_corpus, verify
from .search_split import WithSearchSplit

__all__ = ["SPLITS", "TOKENIZERS", "Vocabulary", "read_corpus_folder", "tokenize", "BPTTBatches",
           "LMDataModule", "DigitsDataModule", "WithSearchSplit", "download_corpus", "verify"]
