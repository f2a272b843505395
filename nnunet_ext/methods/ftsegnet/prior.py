"""FTSegNet's classification prior outside the network: the class table that gives image-level targets, and a prior
trained elsewhere, read from a checkpoint."""

from __future__ import annotations

import json
from os.path import isfile, join

import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle

CLASS_TABLE = "classification.json"
PRIOR_ENV = "nnUNet_ext_ftsegnet_prior"
PRIOR_CLASSES_KEY = "ftsegnet_prior_classes"
PRIOR = "prior"


def read_class_table(path: str, case_ids: list[str] | None = None) -> dict[str, int]:
    """{case id: class index} from a classification.json, checked: integer classes 0..K-1, every case present."""
    try:
        with open(path) as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected a non-empty object {{case_id: class_index}}")
    bad = {k: v for k, v in table.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
    if bad:
        raise ValueError(f"{path}: class indices must be integers >= 0; bad entries: {dict(list(bad.items())[:5])}")
    if case_ids is not None:
        missing = sorted(set(case_ids) - set(table))
        if missing:
            raise ValueError(f"{path}: no class for {len(missing)} training case(s), e.g. {missing[:5]}")
    return table


def prior_state_from_file(path: str) -> dict:
    """P's state_dict from an FTSegNet checkpoint (network_weights 'prior.*') or from a plain state_dict of P."""
    if not isfile(path):
        raise FileNotFoundError(f"{PRIOR_ENV}={path}: no such file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    weights = checkpoint.get("network_weights", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"{PRIOR_ENV}={path}: neither an nnU-Net checkpoint nor a state_dict")
    state = {}
    for key, value in weights.items():
        key = key.removeprefix("_orig_mod.").removeprefix("module.")
        if key.startswith(f"{PRIOR}."):
            state[key[len(PRIOR) + 1:]] = value
        elif "network_weights" not in checkpoint and not key.startswith(("unet.", "cpb.", "transformers.")):
            state[key] = value
    if "head.weight" not in state:
        raise ValueError(f"{PRIOR_ENV}={path}: holds no FTSegNet classification prior (no 'prior.head.weight'; "
                         f"written by {checkpoint.get('trainer_name', 'an unknown trainer')})")
    return state


def classification_only_cases(preprocessed_folder: str, identifiers, label_manager) -> list[str]:
    """The cases whose label map is all ignore label: an image-level class and no mask. nnU-Net's preprocessing lists,
    per case, where the annotated (not ignored) pixels lie (class_locations under the key (-1, *labels)); a case with
    none has no mask. Without an ignore label every case has a mask."""
    if label_manager.ignore_label is None:
        return []
    annotated = tuple([-1] + list(label_manager.all_labels))
    found = []
    for case in identifiers:
        locations = load_pickle(join(preprocessed_folder, f"{case}.pkl")).get("class_locations", {})
        if annotated in locations and len(locations[annotated]) == 0:
            found.append(case)
    return found
