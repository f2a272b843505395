"""Artery/vein fundus data sets (DRIVE-AV, LES-AV, HRF-AV): one converter body, three thin modules.

Source layout: `training/` and/or `test/`, each with `images/`, `1st_manual/` (A/V labels) and `mask/` (field of
view); a source holding only the official `test/` split becomes a data set with imagesTs/labelsTs/masksTs only (no
training cases), for evaluating predictions on it. Test images without a label folder are converted without labels.
A source without `training/` and `test/` whose own folder has `images/` is taken as training data only.

A/V labels come in two codings, told apart per file:
- index maps (one channel, or RGB with equal channels): 0 background, 1 artery, 2 vein, 3 uncertain/crossing;
- RITE colour codes: red artery, blue vein, green crossing, white uncertain.
Colour decoding follows the channels, not a colour table: green present -> 3 (crossing and uncertain both carry
green), else red -> 1, else blue -> 2. This is what reproduces the index-coded release of DRIVE-AV exactly,
including its few magenta (red+blue) pixels, which that release labels artery.

nnU-Net raw result: `imagesTr/CASE_0000.png` (RGB, channel names R,G,B as nnU-Net's NaturalImage2DIO expects),
`labelsTr/CASE.png` (0-3), the same for `imagesTs`/`labelsTs` from `test/`, and the field-of-view masks beside in
`masksTr/CASE.png` / `masksTs/CASE.png` (uint8 0/1, the image's size) for evaluation inside the FOV. Images in JPEG
or TIFF are decoded and written as PNG, so the PNG holds exactly the decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    IMAGE_EXTENSIONS_2D,
    ConversionError,
    base_parser,
    check_label_values,
    check_same_shape,
    dataset_name,
    find_partner,
    first_existing,
    list_files,
    raw_root,
    read_binary_mask_2d,
    read_image_2d,
    read_rgb,
    run_cli,
    safe_case_id,
    staged_dataset,
    write_dataset_json,
    write_png,
)

AV_LABELS = {"background": 0, "artery": 1, "vein": 2, "uncertain": 3}
RGB_CHANNELS = {0: "R", 1: "G", 2: "B"}
LABEL_FOLDERS = ("1st_manual", "av", "AV", "arteries-and-veins", "labels")
MASK_FOLDERS = ("mask", "masks")
LABEL_SUFFIXES = ("", "_AVmanual", "_av", "_AV", "_manual1")
MASK_SUFFIXES = ("_mask", "")
# channel values between these are neither on nor off: a smoothed or lossy colour label we cannot decode safely
_RGB_LOW, _RGB_HIGH = 64, 192


def decode_av_label(path: Path, coding: str = "auto") -> np.ndarray:
    """A/V label file -> uint8 map 0 background, 1 artery, 2 vein, 3 uncertain. coding: auto, index or rgb."""
    arr = read_image_2d(path)
    grey = arr.ndim == 2 or (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))
    if coding == "auto":
        coding = "index" if grey else "rgb"
    if coding == "index":
        if not grey:
            raise ConversionError(f"{path}: colour image where an index-coded A/V label (0-3) was expected")
        arr = arr if arr.ndim == 2 else arr[..., 0]
        check_label_values(arr, AV_LABELS.values(), path, "A/V index map 0 background, 1 artery, 2 vein, 3 uncertain")
        return arr.astype(np.uint8)
    if coding != "rgb":
        raise ValueError(f"coding must be auto, index or rgb, not {coding!r}")
    if arr.ndim == 2:
        raise ConversionError(f"{path}: single-channel image where an RGB colour-coded A/V label was expected")
    ambiguous = np.any((arr > _RGB_LOW) & (arr < _RGB_HIGH), axis=2)
    if ambiguous.any():
        example = tuple(int(v) for v in arr[ambiguous][0])
        raise ConversionError(f"{path}: label values outside the scheme: colour {example} at {int(ambiguous.sum())} "
                              f"pixels is not a RITE code (channels must be off or on)")
    on = arr >= _RGB_HIGH
    out = np.zeros(arr.shape[:2], np.uint8)
    out[on[..., 2]] = 2
    out[on[..., 0]] = 1
    out[on[..., 1]] = 3
    return out


def split_folders(source: Path) -> dict[str, Path]:
    """The source's training ('Tr') and test ('Ts') folders; a folder holding images/ itself is a training split."""
    splits = {}
    for role, names in (("Tr", ("training", "train")), ("Ts", ("test", "testing"))):
        folder = first_existing(source, names)
        if folder is not None:
            splits[role] = folder
    if not splits and (source / "images").is_dir():
        splits["Tr"] = source
    if not splits:
        raise ConversionError(f"{source}: expected a training/ or test/ folder (with images/, 1st_manual/, mask/)")
    return splits


def _convert_case(image_file: Path, label_dir: Path | None, mask_dir: Path | None, case: str, out: Path, role: str,
                  coding: str) -> dict:
    stem = image_file.name[: -len(image_file.suffix)]
    image = read_rgb(image_file)
    write_png(image, out / f"images{role}" / f"{case}_0000.png")
    info = {"image": str(image_file)}
    if label_dir is not None:
        label_file = find_partner(label_dir, stem, LABEL_SUFFIXES, (".png", ".gif", ".tif", ".tiff", ".bmp"),
                                  "A/V label", image_file)
        label = decode_av_label(label_file, coding)
        check_same_shape(image.shape, image_file, label.shape, label_file)
        write_png(label, out / f"labels{role}" / f"{case}.png")
        info["label"] = str(label_file)
    if mask_dir is not None:
        mask_file = find_partner(mask_dir, stem, MASK_SUFFIXES, IMAGE_EXTENSIONS_2D, "field-of-view mask",
                                 image_file)
        mask = read_binary_mask_2d(mask_file)
        check_same_shape(image.shape, image_file, mask.shape, mask_file, what="mask")
        (out / f"masks{role}").mkdir(exist_ok=True)
        write_png(mask, out / f"masks{role}" / f"{case}.png")
        info["mask"] = str(mask_file)
    return info


def convert_av(source, dataset_id: int, name: str, description: str, reference: str, out_root=None,
               overwrite: bool = False, coding: str = "auto", label_folder: str | None = None) -> Path:
    """Convert an A/V fundus set (layout and result in this module's docstring); returns the data set folder."""
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    splits = split_folders(source)
    with staged_dataset(dataset_id, name, out_root, overwrite) as out:
        (out / "imagesTs").mkdir()
        (out / "labelsTs").mkdir()
        n_train, seen = 0, {}
        for role, folder in splits.items():
            images = list_files(folder / "images", IMAGE_EXTENSIONS_2D)
            if not images:
                raise ConversionError(f"{folder / 'images'}: no images found")
            label_dir = folder / label_folder if label_folder else first_existing(folder, LABEL_FOLDERS)
            # test images without labels are still worth converting (to predict them); training images are not
            if (role == "Tr" or label_folder) and (label_dir is None or not label_dir.is_dir()):
                raise ConversionError(f"{folder}: no A/V label folder ({label_folder or ', '.join(LABEL_FOLDERS)})")
            mask_dir = first_existing(folder, MASK_FOLDERS)
            for image_file in tqdm(images, desc=f"{name} {folder.name}", unit="image"):
                case = safe_case_id(image_file.name[: -len(image_file.suffix)])
                if case in seen:
                    raise ConversionError(f"{image_file}: case name {case} also used by {seen[case]}")
                seen[case] = image_file
                _convert_case(image_file, label_dir, mask_dir, case, out, role, coding)
                n_train += role == "Tr"
        write_dataset_json(out, RGB_CHANNELS, AV_LABELS, n_train, ".png", dataset_name=name, description=description,
                           reference=reference, fov_masks="masksTr/ and masksTs/: CASE.png, uint8 0/1 field of view")
    return raw_root(out_root) / dataset_name(dataset_id, name)


def add_av_arguments(p) -> None:
    p.add_argument("--coding", choices=("auto", "index", "rgb"), default="auto",
                   help="A/V label coding (auto: detected per file)")
    p.add_argument("--label-folder", default=None, help="label folder name inside training/ and test/ "
                   "(default: the first of 1st_manual, av, AV, arteries-and-veins, labels)")


def av_main(convert, description: str, dataset_id: int, argv=None) -> int:
    p = base_parser(description, dataset_id)
    add_av_arguments(p)
    args = p.parse_args(argv)
    return run_cli(convert, args, coding=args.coding, label_folder=args.label_folder)
