"""Writing outputs so that a failure never leaves a half-written folder behind."""

from __future__ import annotations

import os
import secrets
import shutil
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


def new_hidden_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder parent/.{prefix}XXXXXXXX created with the usual permissions (umask applied).

    tempfile.mkdtemp creates 0700 folders; renamed into place, a data set would be unreadable to everyone else.
    """
    while True:
        path = Path(parent) / f".{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextmanager
def atomic_output_dir(target: Path, overwrite: bool = False, also_replace: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside target; it replaces target (and removes also_replace) only when the block
    finishes without error. Living in target's parent keeps the final rename on one file system (atomic)."""
    target = Path(target)
    existing = first_existing_path(target, *also_replace)
    if existing is not None and not overwrite:
        raise FileExistsError(f"{existing}: already exists; pass overwrite=True (--overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_hidden_dir(target.parent, f"{target.name}.tmp-")
    try:
        yield tmp
        if target.exists():
            # move the old folder aside first so that target is never missing and never mixed
            old = new_hidden_dir(target.parent, f"{target.name}.old-")
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


@contextmanager
def atomic_files_into(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `folder`; when the block finishes without error, each file written into it
    is moved into `folder` (created if needed), replacing files of the same name and leaving other files alone.

    For outputs that share a folder with the user's own files (an evaluation written into a prediction folder), where
    replacing the whole folder is not an option; a failure leaves `folder` as it was.
    """
    folder = Path(folder)
    folder.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = new_hidden_dir(folder.absolute().parent, f"{folder.name}.tmp-")
    try:
        yield tmp
        folder.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp)
