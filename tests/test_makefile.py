import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_never_deletes_runs():
    commands = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    removed = [arg for line in commands.splitlines() if line.split()[:1] == ["rm"]
               for arg in shlex.split(line)[1:] if not arg.startswith("-")]
    assert removed, commands
    runs = ROOT / "runs"
    for arg in removed:  # neither runs/ nor anything in or above it, however spelt, nor a pattern
        target = (ROOT / arg).resolve()
        assert target not in (runs, *runs.parents) and runs not in target.parents, arg
        assert not any(c in arg for c in "$*?["), arg


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_checks_the_import_contracts_before_the_tests():
    commands = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = commands.splitlines()
    lint = next(i for i, line in enumerate(lines) if "lint-imports" in line)
    tests = next(i for i, line in enumerate(lines) if "pytest" in line)
    assert lint < tests
