"""A 2D grey phantom with image-level labels, for WeakCycleTrainer (weak-label convention of docs/conversion.md,
"Weak labels").

Each image: a textured elliptic "body" on a black background (the foreground the pseudo-masks are restricted to).
"Disease" images carry one to three bright blobs (the lesions, label 1); "normal" images none. Training labels
follow the weak convention: a disease case is entirely the ignore label 2, a normal case entirely 0. A few disease
cases keep their full masks as fold 0's validation set (splits_final.json), where WeakCycleTrainer chooses its
pseudo-mask threshold and nnU-Net its best checkpoint. The true masks of the weak training cases are kept beside
the data set in referenceTr/ (nnU-Net ignores the folder), so that pseudo-masks can be scored; test cases (disease
only) have their full masks in labelsTs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from PIL import Image

from nnunet_ext.fileio import atomic_output_dir, dataset_id_clashes
from nnunet_ext.phantoms.common import case_rng, grid, smooth_noise

LABELS = {"background": 0, "lesion": 1, "ignore": 2}
IGNORE = 2
CONFIGURATION = "2d"
DEFAULT_ID = 796
NAME = "PhantomWeak"


def make_case(rng: np.random.Generator, size: int = 64, disease: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8 HxW, lesion mask uint8 HxW 0/1); a normal case has an empty mask."""
    yy, xx = grid((size, size))
    cy, cx = size / 2 + rng.normal(0, 0.03 * size, 2)
    ry, rx = rng.uniform(0.38, 0.46, 2) * size
    body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image = 0.45 + 0.12 * smooth_noise(rng, (size, size), sigma=size / 16) + 0.05 * smooth_noise(rng, (size, size), 1.5)
    mask = np.zeros((size, size), bool)
    if disease:
        for _ in range(int(rng.integers(1, 4))):
            for _attempt in range(20):  # a centre well inside the body
                y, x = rng.uniform(0.2, 0.8, 2) * size
                if ((y - cy) / (ry - 8)) ** 2 + ((x - cx) / (rx - 8)) ** 2 < 1:
                    break
            r = rng.uniform(0.06, 0.12) * size
            blob = ((yy - y) ** 2 + (xx - x) ** 2) / r ** 2
            mask |= blob < 1
            image = image + 0.4 * np.exp(-2 * blob ** 2) * (blob < 1.3)
    mask &= body
    image = image + rng.normal(0, 0.02, image.shape)
    image[~body] = 0.0
    return np.clip(image * 255, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _save(image: np.ndarray, label: np.ndarray, image_dir: Path, label_dir: Path, case: str) -> None:
    Image.fromarray(image, mode="L").save(image_dir / f"{case}_0000.png")
    Image.fromarray(label, mode="L").save(label_dir / f"{case}.png")


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 32, n_test: int = 8, size: int = 64,
             seed: int = 0, overwrite: bool = False, n_val: int = 4) -> Path:
    """n_train training cases, half disease (weak, all ignore) and half normal (all 0), plus n_val fully labelled
    disease cases for validation and n_test fully labelled disease cases in imagesTs/labelsTs."""
    if n_train < 2:
        raise ValueError(f"{NAME}: n_train must be at least 2 (one disease and one normal case), got {n_train}")
    target = Path(out_root) / f"Dataset{dataset_id:03d}_{NAME}"
    clashes = dataset_id_clashes(Path(out_root), dataset_id, target)
    prefix = NAME.lower()
    with atomic_output_dir(target, overwrite=overwrite, also_replace=clashes) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "referenceTr"):
            (tmp / sub).mkdir()
        roles = {"weak": [], "normal": [], "validation": []}
        index = 0
        for role, n in (("weak", (n_train + 1) // 2), ("normal", n_train // 2), ("validation", n_val),
                        ("test", n_test)):
            for _ in range(n):
                case = f"{prefix}_{index:03d}"
                image, mask = make_case(case_rng(seed, index), size, disease=role != "normal")
                if role == "test":
                    _save(image, mask, tmp / "imagesTs", tmp / "labelsTs", case)
                else:
                    label = np.full_like(mask, IGNORE) if role == "weak" else mask
                    _save(image, label, tmp / "imagesTr", tmp / "labelsTr", case)
                    roles[role].append(case)
                    if role == "weak":
                        Image.fromarray(mask, mode="L").save(tmp / "referenceTr" / f"{case}.png")
                index += 1
        if n_val:
            split = {"train": sorted(roles["weak"] + roles["normal"]), "val": sorted(roles["validation"])}
            (tmp / "splits_final.json").write_text(json.dumps([split], indent=1))
        generate_dataset_json(str(tmp), channel_names={"0": "grey"}, labels=LABELS,
                              num_training_cases=n_train + n_val, file_ending=".png", dataset_name=NAME,
                              description=f"nnunet-ext weak-label phantom: {size}x{size} grey, bright blobs in "
                                          f"disease images, seed {seed}",
                              weak_labels="disease cases: all ignore (2); normal cases: all 0; fold 0 validates "
                                          "on fully labelled disease cases; referenceTr/ holds the weak cases' "
                                          "true masks for scoring only")
    return target
