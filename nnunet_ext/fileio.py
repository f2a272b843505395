"""Writing outputs so that a failure never leaves a half-written folder behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def dataset_id_clashes(root: Path, dataset_id: int, target: Path) -> list[Path]:
    """Other data set folders with target's id: nnU-Net resolves ids by folder name and fails on duplicates."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in root.glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir() and p != Path(target)]


def first_existing_path(*paths: Path) -> Path | None:
    return next((Path(p) for p in paths if Path(p).exists()), None)


@contextmanager
def atomic_output_dir(target: Path, overwrite: bool = False, also_replace: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside target; it replaces target (and removes also_replace) only when the block
    finishes without error. Living in target's parent keeps the final rename on one file system (atomic)."""
    target = Path(target)
    existing = first_existing_path(target, *also_replace)
    if existing is not None and not overwrite:
        raise FileExistsError(f"{existing}: already exists; pass overwrite=True (--overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            # move the old folder aside first so that target is never missing and never mixed
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
        for other in also_replace:
            if Path(other).exists():
                shutil.rmtree(other)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
