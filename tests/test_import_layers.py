"""The import contracts of pyproject.toml ([tool.importlinter]: dependencies point down, cli ->
stages -> lit -> (export, sensitivity, admm, search) -> plan -> quant; Lightning stays out of the
lower layers) hold, and they are live: an upward import, even one inside a function, breaks them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="needs import-linter (the dev extra)")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under `root` with the contracts of its pyproject.toml."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)


def test_every_module_has_a_layer():
    """A module outside the layers could import upwards unnoticed: each of nas_mpq's modules and
    subpackages, and search_spaces, is named in the layers contract."""
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    placed = {name.strip() for layer in config["layers"] for name in layer.split("|")}
    modules = {f"nas_mpq.{p.stem}" for p in (ROOT / "nas_mpq").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert modules | {"search_spaces"} <= placed, sorted(modules | {"search_spaces"} - placed)


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, upward, broken", [
    ("nas_mpq/plan/__init__.py", "from nas_mpq.stages import run", "nas_mpq.plan -> nas_mpq.stages.run"),
    ("nas_mpq/lit/supernet.py", "import nas_mpq.cli", "nas_mpq.lit.supernet -> nas_mpq.cli"),
    ("nas_mpq/stages/base.py", "from nas_mpq.stages import sweep", "nas_mpq.stages.base -> nas_mpq.stages.sweep"),
    ("nas_mpq/search/knapsack.py", "import pytorch_lightning", "nas_mpq.search.knapsack -> pytorch_lightning"),
    ("nas_mpq/files.py", "import nas_mpq.plots", "nas_mpq.files -> nas_mpq.plots"),
    ("search_spaces/lstm_lm.py", "import nas_mpq.lit", "search_spaces.lstm_lm -> nas_mpq.lit"),
])
def test_an_upward_import_inside_a_function_breaks_a_contract(tmp_path, module, upward, broken):
    for package in ("nas_mpq", "search_spaces"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "corpora"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n\ndef _upward() -> None:\n    {upward}  # noqa: F401\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0 and "BROKEN" in out.stdout and broken in out.stdout, out.stdout[-3000:]
