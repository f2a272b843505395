"""A 2D grey phantom with image-level labels, for WeakCycleTrainer (weak-label convention of docs/conversion.md,
"Weak labels").

Each image: a textured elliptic "body" on a black background (the foreground the pseudo-masks are restricted to).
"Disease" images carry one to three bright blobs (the lesions, label 1); "normal" images none. Training labels
follow the weak convention: a disease case is the ignore label 2 over its body (0 outside), a normal case entirely
0. A few disease
cases keep their full masks as fold 0's validation set (splits_final.json), where WeakCycleTrainer chooses its
pseudo-mask threshold and nnU-Net its best checkpoint. The true masks of the weak training cases are kept beside
the data set in referenceTr/ (nnU-Net ignores the folder), so that pseudo-masks can be scored; test cases (disease
only) have their full masks in labelsTs.

The `distractors` variant (id 798) defeats an intensity prior: every image, normal ones included, also holds
elongated bright ridges and round dark spots of the lesions' contrast, so a threshold on intensity marks ridges as
lesions; what tells a lesion apart is its round shape, which only the normal/disease contrast can teach.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from PIL import Image
from scipy import ndimage

from nnunet_ext.fileio import atomic_output_dir, dataset_id_clashes
from nnunet_ext.phantoms.common import case_rng, grid, smooth_noise

LABELS = {"background": 0, "lesion": 1, "ignore": 2}
IGNORE = 2
CONFIGURATION = "2d"
DEFAULT_ID = 796
NAME = "PhantomWeak"
DISTRACTOR_ID = 798
DISTRACTOR_NAME = "PhantomWeakDistractors"


def _inside_point(rng: np.random.Generator, size: int, cy: float, cx: float, ry: float, rx: float, margin: float):
    """A point well inside the body ellipse (at most 20 draws)."""
    for _attempt in range(20):
        y, x = rng.uniform(0.2, 0.8, 2) * size
        if ((y - cy) / (ry - margin)) ** 2 + ((x - cx) / (rx - margin)) ** 2 < 1:
            break
    return y, x


def make_case(rng: np.random.Generator, size: int = 64, disease: bool = True, distractors: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8 HxW, lesion mask uint8 HxW 0/1); a normal case has an empty mask. distractors: bright ridges
    and dark spots of the lesions' contrast in every image."""
    yy, xx = grid((size, size))
    cy, cx = size / 2 + rng.normal(0, 0.03 * size, 2)
    ry, rx = rng.uniform(0.38, 0.46, 2) * size
    body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image = 0.45 + 0.12 * smooth_noise(rng, (size, size), sigma=size / 16) + 0.05 * smooth_noise(rng, (size, size), 1.5)
    mask = np.zeros((size, size), bool)
    if distractors:
        for _ in range(int(rng.integers(2, 4))):  # ridges: the lesions' brightness, elongated
            y, x = _inside_point(rng, size, cy, cx, ry, rx, 0.12 * size)
            angle = rng.uniform(0, np.pi)
            along = (yy - y) * np.cos(angle) + (xx - x) * np.sin(angle)
            across = -(yy - y) * np.sin(angle) + (xx - x) * np.cos(angle)
            ridge = (along / (rng.uniform(0.16, 0.24) * size)) ** 2 + (across / (rng.uniform(0.03, 0.045) * size)) ** 2
            image = image + 0.4 * np.exp(-2 * ridge ** 2) * (ridge < 1.3)
        for _ in range(int(rng.integers(1, 3))):  # spots: the lesions' shape and contrast, dark
            y, x = _inside_point(rng, size, cy, cx, ry, rx, 0.12 * size)
            spot = ((yy - y) ** 2 + (xx - x) ** 2) / (rng.uniform(0.06, 0.1) * size) ** 2
            image = image - 0.3 * np.exp(-2 * spot ** 2) * (spot < 1.3)
    if disease:
        for _ in range(int(rng.integers(1, 4))):
            y, x = _inside_point(rng, size, cy, cx, ry, rx, 8)  # a centre well inside the body
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


def generate(out_root: Path, dataset_id: int | None = None, n_train: int = 32, n_test: int = 8, size: int = 64,
             seed: int = 0, overwrite: bool = False, n_val: int = 4, distractors: bool = False) -> Path:
    """n_train training cases, half disease (weak: ignore over the body) and half normal (all 0), plus n_val fully
    labelled disease cases for validation and n_test fully labelled disease cases in imagesTs/labelsTs. dataset_id:
    796, or 798 for the distractors variant, by default."""
    name = DISTRACTOR_NAME if distractors else NAME
    if dataset_id is None:
        dataset_id = DISTRACTOR_ID if distractors else DEFAULT_ID
    if n_train < 2:
        raise ValueError(f"{name}: n_train must be at least 2 (one disease and one normal case), got {n_train}")
    target = Path(out_root) / f"Dataset{dataset_id:03d}_{name}"
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
                image, mask = make_case(case_rng(seed, index), size, disease=role != "normal",
                                        distractors=distractors)
                if role == "test":
                    _save(image, mask, tmp / "imagesTs", tmp / "labelsTs", case)
                else:
                    # the ignore label over the body (nnU-Net's non-zero region), 0 outside, as the converters
                    label = np.where(ndimage.binary_fill_holes(image > 0), np.uint8(IGNORE), np.uint8(0)) \
                        if role == "weak" else mask
                    _save(image, label, tmp / "imagesTr", tmp / "labelsTr", case)
                    roles[role].append(case)
                    if role == "weak":
                        Image.fromarray(mask, mode="L").save(tmp / "referenceTr" / f"{case}.png")
                index += 1
        distractor_text = "; bright ridges and dark spots of the same contrast in every image" if distractors else ""
        if n_val:
            split = {"train": sorted(roles["weak"] + roles["normal"]), "val": sorted(roles["validation"])}
            (tmp / "splits_final.json").write_text(json.dumps([split], indent=1))
        generate_dataset_json(str(tmp), channel_names={"0": "grey"}, labels=LABELS,
                              num_training_cases=n_train + n_val, file_ending=".png", dataset_name=name,
                              description=f"nnunet-ext weak-label phantom: {size}x{size} grey, bright blobs in "
                                          f"disease images{distractor_text}, seed {seed}",
                              weak_labels="disease cases: ignore (2) over the body, 0 outside; normal cases: all 0; "
                                          "fold 0 validates on fully labelled disease cases; referenceTr/ holds the "
                                          "weak cases' true masks for scoring only")
    return target
