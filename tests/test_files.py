"""Result files are whole or absent: written beside their destination and renamed over it."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas_mpq.files import atomic_output, write_atomic
from nas_mpq.lit import AtomicCheckpointIO


def test_write_atomic_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    assert write_atomic(path, '{"a": 1}\n') == path
    assert path.read_text() == '{"a": 1}\n'
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["metrics.json"]  # no temporary file left


def test_renamed_from_the_same_directory(tmp_path, monkeypatch):
    moves = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moves.append((a, b)), real(a, b)))
    with atomic_output(tmp_path / "plan.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"  # writers that go by the suffix
        tmp.write_bytes(b"png")
    [(source, target)] = moves
    assert Path(source).parent == tmp_path and Path(target) == tmp_path / "plan.png"


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["plan.json"]


def test_a_killed_writer_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_text("old")
    code = ("import os, signal, sys\nfrom nas_mpq.files import atomic_output\n"
            "with atomic_output(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL
    assert path.read_text() == "old"


def test_checkpoints_are_saved_atomically(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))
    monkeypatch.setattr(torch, "save", lambda obj, f: (open(f, "wb").write(b"trunc"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    assert torch.equal(io.load_checkpoint(path, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert os.listdir(path.parent) == ["last.ckpt"]
