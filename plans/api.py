"""plan_dataset: fingerprint (if missing), planning with a preset's planner, preprocessing; input checked first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nnunet_ext.plans.presets import PRESETS, Preset


def _raw_dataset(dataset_id: int) -> Path:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("nnUNet_raw is not set (eval \"$(nnunet_ext env)\" sets the nnU-Net folders)")
    if not os.environ.get("nnUNet_preprocessed"):
        raise ValueError("nnUNet_preprocessed is not set (eval \"$(nnunet_ext env)\" sets the nnU-Net folders)")
    found = sorted(Path(raw).glob(f"Dataset{int(dataset_id):03d}_*")) if Path(raw).is_dir() else []
    found = [f for f in found if f.is_dir()]
    if not found:
        raise FileNotFoundError(f"data set {dataset_id} not found: no {raw}/Dataset{int(dataset_id):03d}_* folder")
    if len(found) > 1:
        raise ValueError(f"data set {dataset_id} is ambiguous in {raw}: {', '.join(f.name for f in found)}")
    if not (found[0] / "dataset.json").is_file():
        raise FileNotFoundError(f"{found[0] / 'dataset.json'} is missing")
    return found[0]


def _is_3d(raw_dataset: Path) -> bool:
    """Whether the data set's images are volumes: nnU-Net reads 2D images as (c, 1, y, x)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dataset_json = load_json(str(raw_dataset / "dataset.json"))
    cases = get_filenames_of_train_images_and_targets(str(raw_dataset), dataset_json)
    if not cases:
        raise ValueError(f"{raw_dataset} has no training cases")
    first = next(iter(cases.values()))["images"]
    data, _ = determine_reader_writer_from_dataset_json(dataset_json, first[0])().read_images(first)
    return data.shape[1] > 1


def check_request(dataset_id: int, preset: str, configurations: Sequence[str] | None = None
                  ) -> tuple[Preset, Path, tuple[str, ...]]:
    """(preset, raw data set folder, configurations to preprocess), or a ValueError / FileNotFoundError naming the
    problem. Writes nothing. configurations None: every configuration of the preset the data set has."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))} (nnunet_ext plan "
                         f"--list)")
    spec = PRESETS[preset]
    raw = _raw_dataset(dataset_id)
    volumes = _is_3d(raw)
    available = tuple(c for c in spec.configurations if volumes or c == "2d")
    if configurations is None:
        return spec, raw, available
    configurations = tuple(dict.fromkeys(configurations))
    for c in configurations:
        if c not in spec.configurations:
            raise ValueError(f"preset {preset!r} has no configuration {c!r}; it plans {', '.join(spec.configurations)}")
        if c not in available:
            raise ValueError(f"{raw.name} holds 2D images: configuration {c!r} needs volumes; use -c 2d")
    return spec, raw, configurations


def plan_dataset(dataset_id: int, preset: str, configurations: Sequence[str] | None = None,
                 num_processes: int = 1, verify: bool = False) -> str:
    """Plan and preprocess a data set with a preset; returns the plans identifier to pass as `-p`.

    The data set's fingerprint is extracted when nnUNet_preprocessed lacks it (what nnUNetv2_plan_and_preprocess
    would do; an existing one is reused, as `nnUNetv2_plan_experiment` does). The preset's plans file is written
    beside nnUNetPlans.json, and its data under nnUNet_preprocessed/<data set>/<plans identifier>_<configuration>."""
    spec, raw, configurations = check_request(dataset_id, preset, configurations)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    fingerprint = Path(os.environ["nnUNet_preprocessed"]) / raw.name / "dataset_fingerprint.json"
    # nnU-Net's memory estimate calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0 (a CPU setting)
    n_proc_da = os.environ.pop("nnUNet_n_proc_DA", None) if os.environ.get("nnUNet_n_proc_DA") == "0" else None
    try:
        if not fingerprint.is_file():
            extract_fingerprint_dataset(int(dataset_id), num_processes=num_processes, check_dataset_integrity=verify,
                                        clean=True, verbose=False)
        _, identifier = plan_experiment_dataset(int(dataset_id), spec.planner)
        preprocess_dataset(int(dataset_id), identifier, configurations, [num_processes] * len(configurations))
    finally:
        if n_proc_da is not None:
            os.environ["nnUNet_n_proc_DA"] = n_proc_da
    return identifier
