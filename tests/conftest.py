import os
from pathlib import Path

import pytest

from nnunet_ext.stock import work_environment

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples beside the checkout (../shared/data). Required in CI, optional elsewhere."""
    if not SHARED_DATA.is_dir():
        message = f"real data samples not found at {SHARED_DATA}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: they must be there)")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def nnunet_env(tmp_path) -> dict:
    """A process environment whose nnUNet_raw/preprocessed/results live in this test's tmp_path, CPU settings."""
    return work_environment(tmp_path / "nnunet", device="cpu")
