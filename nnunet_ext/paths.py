"""Where nnU-Net keeps its data and where it finds our trainers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TRAINERS_DIR = Path(__file__).resolve().parent / "trainers"
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DATA_ROOT_ENV = "NNUNET_EXT_DATA"


def default_data_root(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(DATA_ROOT_ENV) or Path.home() / "nnUNet_data")


def ext_trainer_path(existing: str | None) -> str:
    """nnUNet_extTrainer with our trainer folder first and the user's other folders kept."""
    parts = [p for p in (existing or "").split(os.pathsep) if p.strip()]
    ours = str(TRAINERS_DIR)
    return os.pathsep.join([ours] + [p for p in parts if os.path.abspath(p) != ours])


def nnunet_environment(environ: Mapping[str, str] = os.environ, root: Path | None = None) -> dict[str, str]:
    """The four variables nnU-Net needs to train with our trainers; values already set are kept."""
    root = Path(root) if root is not None else default_data_root(environ)
    env = {name: environ.get(name) or str(root / name) for name in FOLDERS}
    env["nnUNet_extTrainer"] = ext_trainer_path(environ.get("nnUNet_extTrainer"))
    return env


def environment_for_root(root: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A full process environment whose nnU-Net folders all live under root (demo and test work folders)."""
    env = dict(environ)
    for name in FOLDERS:
        env.pop(name, None)
    env.update(nnunet_environment(env, root))
    return env
