import hashlib
import io
import zipfile

import pytest

from nas_mpq.data import download
from nas_mpq.data.download import Source, download_corpus, verify


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_verify():
    verify(b"abc", sha(b"abc"), "x")
    verify(b"abc", "md5:" + hashlib.md5(b"abc").hexdigest(), "x")
    with pytest.raises(ValueError, match="x: sha256 checksum mismatch"):
        verify(b"abd", sha(b"abc"), "x")
    with pytest.raises(ValueError, match="unknown digest algorithm 'crc'"):
        verify(b"abc", "crc:00", "x")


def test_canonical_sources_are_pinned():
    assert download.WIKITEXT2.url.endswith("wikitext-2-v1.zip") and download.WIKITEXT2.digest.startswith("sha256:")
    assert set(download.PTB) == {"train", "valid", "test"}
    assert all(len(s.digest.split(":")[1]) in (32, 64) for s in download.PTB.values())


def test_ptb_download_with_local_fetch(tmp_path, monkeypatch):
    files = {s: f"{s} text\n".encode() for s in ("train", "valid", "test")}
    monkeypatch.setattr(download, "PTB", {s: Source(f"https://example/ptb.{s}.txt", sha(d)) for s, d in files.items()})
    fetched = []

    def fetch(url):
        fetched.append(url)
        return files[url.split(".")[-2]]

    folder = download_corpus("ptb", tmp_path, fetch=fetch)
    assert folder == tmp_path / "ptb"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {f"{s}.txt": d for s, d in files.items()}
    assert len(fetched) == 3
    download_corpus("ptb", tmp_path, fetch=fetch)  # reused, not fetched again
    assert len(fetched) == 3


def test_wikitext2_download_and_corrupt_archive(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for s in ("train", "valid", "test"):
            z.writestr(f"wikitext-2/wiki.{s}.tokens", f" = {s} = \n")
    archive = buf.getvalue()
    monkeypatch.setattr(download, "WIKITEXT2", Source("https://example/wikitext-2-v1.zip", sha(archive)))
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_corpus("wikitext2", tmp_path, fetch=lambda url: archive[:-5])
    assert not (tmp_path / "wikitext2").exists()
    folder = download_corpus("wikitext2", tmp_path, fetch=lambda url: archive)
    assert (folder / "valid.txt").read_text() == " = valid = \n"


def test_unknown_corpus(tmp_path):
    with pytest.raises(ValueError, match="no download for corpus 'c4'"):
        download_corpus("c4", tmp_path)
