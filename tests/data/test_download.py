"""Corpus downloads: pinned sources, checksums verified before anything is written or reused.
Nothing here touches the network: sources are local files served through file:// URLs."""
import hashlib

import pytest

from nas_mpq.data import download
from nas_mpq.data.download import Source, download_corpus, verify

SPLITS = ("train", "valid", "test")


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_verify():
    verify(b"abc", sha(b"abc"), "x")
    verify(b"abc", "md5:" + hashlib.md5(b"abc").hexdigest(), "x")
    with pytest.raises(ValueError, match="x: sha256 checksum mismatch"):
        verify(b"abd", sha(b"abc"), "x")
    with pytest.raises(ValueError, match="unknown digest algorithm 'crc'"):
        verify(b"abc", "crc:00", "x")


def test_git_blob_digest_is_gits_object_id():
    # `printf 'hello\n' | git hash-object --stdin` and git's id of the empty file
    verify(b"hello\n", "git-blob:ce013625030ba8dba906f756967f9e9ca394464a", "x")
    verify(b"", "git-blob:e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", "x")
    with pytest.raises(ValueError, match="git-blob checksum mismatch"):
        verify(b"hello", "git-blob:ce013625030ba8dba906f756967f9e9ca394464a", "x")


def test_every_split_of_every_corpus_is_pinned():
    assert set(download.CORPORA) == set(download.DOWNLOADABLE) == {"ptb", "wikitext2"}
    lengths = {"md5": 32, "sha256": 64, "git-blob": 40}
    for sources in download.CORPORA.values():
        assert set(sources) == set(SPLITS)
        for split, src in sources.items():
            algorithm, _, hexdigest = src.digest.partition(":")
            assert len(hexdigest) == lengths[algorithm] and int(hexdigest, 16) >= 0
            assert src.url.startswith("https://") and split in src.url.rsplit("/", 1)[1]
    wikitext = download.CORPORA["wikitext2"]
    assert wikitext["train"].digest == "git-blob:2d84b35af79e411d73ea7cae83c73964c6ac83b4"
    assert "s3.amazonaws.com" not in str(download.CORPORA)


def serve_locally(tmp_path, monkeypatch, name, texts, digest=sha):
    """Point corpus `name` at local files (file:// URLs) pinned by `digest` of `texts`."""
    sources = {}
    for split, data in texts.items():
        path = tmp_path / "upstream" / f"{split}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        sources[split] = Source(path.as_uri(), digest(data))
    monkeypatch.setitem(download.CORPORA, name, sources)
    return sources


@pytest.mark.parametrize("name", ["ptb", "wikitext2"])
def test_download_verifies_writes_and_reuses(tmp_path, monkeypatch, name):
    texts = {s: f" = {s} = \n".encode() for s in SPLITS}
    serve_locally(tmp_path, monkeypatch, name, texts, lambda data: "git-blob:" + download.hexdigest(data, "git-blob"))
    fetched = []

    def fetch(url):
        fetched.append(url)
        return download.fetch_url(url)

    folder = download_corpus(name, tmp_path / "data", fetch=fetch)
    assert folder == tmp_path / "data" / name
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {f"{s}.txt": d for s, d in texts.items()}
    assert len(fetched) == 3
    assert download_corpus(name, tmp_path / "data", fetch=fetch) == folder  # reused, not fetched again
    assert len(fetched) == 3


def test_a_mismatching_checksum_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    texts = {s: f"{s} text\n".encode() for s in SPLITS}
    serve_locally(tmp_path, monkeypatch, "wikitext2", texts)
    (tmp_path / "upstream" / "valid.txt").write_bytes(b"valid text, changed upstream\n")
    with pytest.raises(ValueError, match=r"valid.txt: sha256 checksum mismatch"):
        download_corpus("wikitext2", tmp_path / "data")
    assert not (tmp_path / "data" / "wikitext2").exists()
    (tmp_path / "upstream" / "valid.txt").write_bytes(texts["valid"])
    folder = download_corpus("wikitext2", tmp_path / "data")
    assert (folder / "valid.txt").read_bytes() == texts["valid"]
    (folder / "test.txt").write_bytes(b"edited by hand\n")  # a reused folder is verified again
    with pytest.raises(ValueError, match=r"test.txt \(delete .* to download it again\): sha256 checksum mismatch"):
        download_corpus("wikitext2", tmp_path / "data", fetch=lambda url: pytest.fail(f"fetched {url}"))


def test_unknown_corpus(tmp_path):
    with pytest.raises(ValueError, match="no download for corpus 'c4'"):
        download_corpus("c4", tmp_path)
