"""Weak (image-level) labels in nnU-Net raw format, shared by the BraTS and ISIC converters.

Convention (docs/conversion.md, "Weak labels"): labels are 0 background, 1 lesion, 2 ignore (declared as
`"ignore": 2` in dataset.json, so nnU-Net's loss skips those pixels).
- weak case ("disease", lesion somewhere, location unknown): imagesTr, label map 2 over the image's non-zero region
  (nnU-Net's, holes filled) and 0 outside it, so that nnU-Net's preprocessing marks the outside (-1) and normalises
  it as in normal cases (an all-2 map would make masked z-score normalisation treat the black background as body,
  and disease images would differ from normal ones by their background value alone);
- normal case (known lesion-free): imagesTr, label map all 0;
- validation case (full mask): imagesTr with its mask, listed as fold 0's validation set in splits_final.json (nnU-Net
  2.8's planner copies it to nnUNet_preprocessed), so checkpoints are chosen on validation, never on test;
- test case (full mask): imagesTs/labelsTs, for evaluation only.
Folds other than 0 are nnU-Net's random ones and may train on the validation masks: use fold 0.

Sliced layout (the method's published preprocessing): `{train,trainA}/` disease images (in the folder or its
`images/`), `val/images` + `val/labels`, `{test,testA}/images` + `labels`, normal images in `normal/` (or `trainB/`,
`train/normal/`). Any of these may be missing: a source with only `test/` becomes imagesTs/labelsTs alone (no
training cases), for evaluating predictions on the official test split. Masks are `NAME.png`,
`NAME_segmentation.png` or `NAME_mask.png`; 0/1 masks are taken as they are, others thresholded at 127 (resized masks
carry interpolated values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    IMAGE_EXTENSIONS_2D,
    ConversionError,
    check_same_shape,
    find_partner,
    first_existing,
    list_files,
    read_grey_or_rgb,
    read_image_2d,
    safe_case_id,
    write_dataset_json,
    write_png,
    write_splits,
)

WEAK_LABELS = {"background": 0, "lesion": 1, "ignore": 2}
IGNORE = 2
ROLES = ("weak", "normal", "validation", "full", "test")
DEFAULT_ROLES = {"train": "weak", "val": "validation", "test": "test"}
MASK_SUFFIXES = ("_segmentation", "_mask", "")


def binary_lesion_mask(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.min() < 0 or arr.max() > 255:
        raise ConversionError(f"{path}: label values outside the scheme (masks are 0/1 or 0-255, found "
                              f"{arr.min()}..{arr.max()})")
    return (arr > (0 if arr.max() <= 1 else 127)).astype(np.uint8)


def resize(arr: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


def weak_label(image: np.ndarray) -> np.ndarray:
    """A disease case's label map (H x W): the ignore label over nnU-Net's non-zero region of the image (any channel
    non-zero, holes filled), 0 outside it."""
    nonzero = image != 0 if image.ndim == 2 else np.any(image != 0, axis=2)
    return np.where(ndimage.binary_fill_holes(nonzero), np.uint8(IGNORE), np.uint8(0)).astype(np.uint8)


class WeakDatasetWriter:
    """Writes cases of the five roles into a staged raw folder and finishes with dataset.json and the split."""

    def __init__(self, out: Path, grey: bool):
        self.out, self.grey = out, grey
        self.cases: dict[str, list[str]] = {role: [] for role in ROLES}
        self.sources: dict[str, Path] = {}
        for sub in ("imagesTs", "labelsTs"):
            (out / sub).mkdir(exist_ok=True)

    def add(self, case: str, image: np.ndarray, role: str, source: Path, mask: np.ndarray | None = None) -> None:
        case = safe_case_id(case)
        if case in self.sources:
            raise ConversionError(f"{source}: case name {case} also used by {self.sources[case]}")
        self.sources[case] = source
        if role not in ROLES:
            raise ValueError(f"role {role!r} not one of {ROLES}")
        if self.grey and image.ndim == 3:
            image = np.asarray(Image.fromarray(image).convert("L"))
        elif not self.grey and image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if role == "weak":
            label = weak_label(image)
        elif role == "normal":
            label = np.zeros(image.shape[:2], np.uint8)
        else:
            if mask is None:
                raise ConversionError(f"{source}: a {role} case needs a full mask")
            label = mask
        tr = "Ts" if role == "test" else "Tr"
        write_png(image, self.out / f"images{tr}" / f"{case}_0000.png")
        write_png(label, self.out / f"labels{tr}" / f"{case}.png")
        self.cases[role].append(case)

    def finish(self, name: str, channel_name: str, **kwargs) -> None:
        n_train = sum(len(v) for k, v in self.cases.items() if k != "test")
        # a source holding only the official test split is converted for evaluation: imagesTs/labelsTs alone
        if n_train == 0 and not self.cases["test"]:
            raise ConversionError(f"{name}: no cases found")
        channels = {0: channel_name} if self.grey else {0: "R", 1: "G", 2: "B"}
        counts = {role: len(v) for role, v in self.cases.items()}
        write_dataset_json(self.out, channels, WEAK_LABELS, n_train, ".png", dataset_name=name, case_counts=counts,
                           weak_labels="weak (disease) cases: all pixels ignore (2); normal cases: all 0; "
                                       "fold 0 of splits_final.json validates on the fully labelled cases",
                           **kwargs)
        if self.cases["validation"]:
            train = self.cases["weak"] + self.cases["normal"] + self.cases["full"]
            write_splits(self.out, [{"train": train, "val": self.cases["validation"]}])


def parse_roles(pairs: list[str] | None) -> dict[str, str]:
    """CLI `--role val=weak` entries over the defaults."""
    roles = dict(DEFAULT_ROLES)
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if key not in DEFAULT_ROLES or value not in ROLES:
            raise SystemExit(f"--role {pair}: expected one of {list(DEFAULT_ROLES)} = one of {list(ROLES)}")
        roles[key] = value
    return roles


def add_weak_arguments(p) -> None:
    p.add_argument("--role", action="append", metavar="SPLIT=ROLE",
                   help=f"what a source split becomes, e.g. val=weak (splits {list(DEFAULT_ROLES)}, roles "
                        f"{list(ROLES)}; default train=weak, val=validation, test=test)")


def _image_folder(folder: Path) -> Path:
    return folder / "images" if (folder / "images").is_dir() else folder


def is_sliced_layout(source: Path) -> bool:
    return any((source / n).is_dir() for n in ("normal", "trainA", "trainB", "val", "valA", "train", "test", "testA"))


def convert_sliced(source: Path, writer: WeakDatasetWriter, roles: dict[str, str], desc: str) -> None:
    """The sliced layout (module docstring) into the writer."""
    found = False
    for split, names in (("train", ("train", "trainA")), ("val", ("val", "valA")), ("test", ("test", "testA"))):
        folder = first_existing(source, names)
        if folder is None:
            continue
        role = roles[split]
        label_dir = first_existing(folder, ("labels", "masks", "label"))
        for image_file in tqdm(list_files(_image_folder(folder), IMAGE_EXTENSIONS_2D), desc=f"{desc} {split}"):
            found = True
            stem = image_file.name[: -len(image_file.suffix)]
            image = read_grey_or_rgb(image_file)
            mask = None
            if role in ("validation", "full", "test"):
                if label_dir is None:
                    raise ConversionError(f"{image_file}: missing partner file: no labels/ folder beside {folder}")
                mask_file = find_partner(label_dir, stem, MASK_SUFFIXES, (".png", ".gif", ".tif", ".bmp"), "mask",
                                         image_file)
                mask = binary_lesion_mask(read_image_2d(mask_file), mask_file)
                check_same_shape(image.shape, image_file, mask.shape, mask_file, what="mask")
            writer.add(stem, image, role, image_file, mask)
    for normal in (source / "normal", source / "trainB", source / "train" / "normal"):
        if normal.is_dir():
            for image_file in tqdm(list_files(normal, IMAGE_EXTENSIONS_2D), desc=f"{desc} normal"):
                found = True
                writer.add(image_file.name[: -len(image_file.suffix)], read_grey_or_rgb(image_file), "normal",
                           image_file)
    if not found:
        raise ConversionError(f"{source}: no images in the sliced layout (train/, val/, test/, normal/)")


def split_by_fraction(keys: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Seeded split of source-level keys (patients, images) into train/val/test, never splitting a key."""
    order = list(keys)
    np.random.default_rng(seed).shuffle(order)
    n_test = int(round(len(order) * test_fraction))
    n_val = int(round(len(order) * val_fraction))
    out = {k: "test" for k in order[:n_test]}
    out.update({k: "val" for k in order[n_test:n_test + n_val]})
    out.update({k: "train" for k in order[n_test + n_val:]})
    return out
