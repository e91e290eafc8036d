"""Result files that are either whole or absent: each is written to a temporary file in its own
directory and renamed over its destination (os.replace, atomic on one file system), so a run
killed at any point leaves the previous file or the new one, never a part of one.

Example:
    >>> write_atomic("run/metrics.json", json.dumps(metrics))
    >>> with atomic_output("run/model.safetensors") as tmp:
    ...     save_file(tensors, str(tmp))       # any writer that takes a path
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; when the block ends without an exception the
    file is flushed to disk and renamed to `path`, otherwise it is removed and `path` is left as
    it was. The temporary name keeps `path`'s suffix (writers that pick a format by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns `path`."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
