import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    """Style is part of the contract (ruff, line length 120, configured in pyproject.toml)."""
    try:
        import ruff  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ruff is not installed: CI installs the [test] extra")
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_module_imports_a_source_folder_by_its_folder_name():
    """evaluation/, dataset_conversion/ and plans/ are installed as nnunet_ext.<name>: an import by the folder's own
    name works only where the repository root happens to be on sys.path (pytest, a shell in the root), not for a
    user's `python bench/...` (bench/av_fusion/branch_decisions.py failed that way)."""
    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = {folder for package, folder in mapped.items() if package != folder}
    assert folders, "pyproject.toml maps no folder into nnunet_ext: update this test"
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        if any(part.startswith(".") or part in {"build", "node_modules"} for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in folders]
    assert not offenders, "\n".join(offenders)
