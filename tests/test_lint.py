import os
import subprocess
import sys
from pathlib import Path

import pytest

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
