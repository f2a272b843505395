"""ISIC 2018 dermoscopy with image-level labels -> Dataset742_ISICWeak (weak-label convention, `_weak.py`).

Two source layouts, detected:
- ISIC 2018 Task 1: `ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_*.jpg` with
  `ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_*_segmentation.png`. Training images become weak
  (disease) cases; Validation and Test, where present, the validation and test sets with their masks (otherwise
  `val_fraction`/`test_fraction` of the training images, seeded). Normal (healthy-skin) images are cut, as in the
  method's paper, from the four corners of each training image: a square of `corner_fraction` of the shorter side,
  kept only when its ground-truth mask has no lesion pixel and it is not the dark vignette of the dermoscope (mean
  brightness below `min_corner_brightness`). Everything is resized to 256x256. A source with only the Test (or
  Validation) folders, the official held-out splits, is converted without training cases.
- the already sliced layout (`train/`, `val/images` + `val/labels`, `test/...`, `normal/*_health.jpg`).
Images stay RGB (one _0000.png, channels R,G,B).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    ConversionError,
    base_parser,
    check_same_shape,
    dataset_name,
    find_partner,
    list_files,
    raw_root,
    read_image_2d,
    read_rgb,
    run_cli,
    staged_dataset,
)
from nnunet_ext.dataset_conversion._weak import (
    DEFAULT_ROLES,
    WeakDatasetWriter,
    add_weak_arguments,
    binary_lesion_mask,
    convert_sliced,
    is_sliced_layout,
    parse_roles,
    resize,
    split_by_fraction,
)

DATASET_ID = 742
NAME = "ISICWeak"
CORNERS = ("tl", "tr", "bl", "br")


def corner_crops(image: np.ndarray, mask: np.ndarray, fraction: float, min_brightness: float):
    """Yield (corner, crop) for the lesion-free, not-vignetted square corner crops of one image."""
    side = max(1, int(min(image.shape[:2]) * fraction))
    h, w = image.shape[:2]
    for name, (r, c) in zip(CORNERS, ((0, 0), (0, w - side), (h - side, 0), (h - side, w - side)), strict=True):
        if mask[r:r + side, c:c + side].any():
            continue
        crop = image[r:r + side, c:c + side]
        if crop.mean() < min_brightness:
            continue
        yield name, crop


def _task1_folders(source: Path, part: str) -> tuple[Path, Path] | None:
    inputs = [p for p in source.glob(f"ISIC2018_Task1*_{part}_Input") if p.is_dir()]
    truths = [p for p in source.glob(f"ISIC2018_Task1_{part}_GroundTruth") if p.is_dir()]
    if not inputs:
        return None
    if not truths:
        raise ConversionError(f"{inputs[0]}: missing partner folder ISIC2018_Task1_{part}_GroundTruth")
    return inputs[0], truths[0]


def convert_task1(source: Path, writer: WeakDatasetWriter, roles: dict[str, str], size: int, corner_fraction: float,
                  min_corner_brightness: float, val_fraction: float, test_fraction: float, seed: int) -> None:
    parts = {split: _task1_folders(source, part) for split, part in
             (("train", "Training"), ("val", "Validation"), ("test", "Test"))}
    if all(f is None for f in parts.values()):
        raise ConversionError(f"{source}: no ISIC2018_Task1-2_{{Training,Validation,Test}}_Input folder and not the "
                              "sliced layout")
    images = {split: list_files(f[0], (".jpg", ".jpeg", ".png")) for split, f in parts.items() if f is not None}
    train = images.get("train", [])
    split_of = {p: "train" for p in train}
    # held-out parts taken from the training images only when the release's own folders are missing
    missing = {"val": val_fraction if "val" not in images else 0.0, "test": test_fraction if "test" not in images
               else 0.0}
    if train and any(missing.values()):
        drawn = split_by_fraction([p.name for p in train], missing["val"], missing["test"], seed)
        split_of = {p: drawn[p.name] for p in train}
    source_part = {p: "train" for p in train}
    for split in ("val", "test"):
        split_of.update({p: split for p in images.get(split, [])})
        source_part.update({p: split for p in images.get(split, [])})
    truth_of = {p: parts[source_part[p]][1] for p in split_of}
    for image_file, split in tqdm(sorted(split_of.items()), desc=NAME):
        stem = image_file.name[: -len(image_file.suffix)]
        mask_file = find_partner(truth_of[image_file], stem, ("_segmentation", ""), (".png",), "segmentation",
                                 image_file)
        image = read_rgb(image_file)
        mask = binary_lesion_mask(read_image_2d(mask_file), mask_file)
        check_same_shape(image.shape, image_file, mask.shape, mask_file)
        role = roles[split]
        writer.add(stem, resize(image, size), role, image_file, resize(mask, size, nearest=True))
        if role == "weak":
            for corner, crop in corner_crops(image, mask, corner_fraction, min_corner_brightness):
                writer.add(f"{stem}_health_{corner}", resize(crop, size), "normal", image_file)


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False,
            roles: dict[str, str] | None = None, size: int = 256, corner_fraction: float = 0.25,
            min_corner_brightness: float = 40.0, val_fraction: float = 0.1, test_fraction: float = 0.1,
            seed: int = 12345) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    roles = {**DEFAULT_ROLES, **(roles or {})}
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        writer = WeakDatasetWriter(out, grey=False)
        if is_sliced_layout(source):
            convert_sliced(source, writer, roles, NAME)
            layout = "sliced"
        else:
            convert_task1(source, writer, roles, size, corner_fraction, min_corner_brightness, val_fraction,
                          test_fraction, seed)
            layout = "ISIC2018 Task 1"
        writer.finish(NAME, "RGB", source_layout=layout,
                      reference="Codella et al. 2019 (ISIC 2018); Du et al. 2024 (weak labels)")
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], DATASET_ID)
    add_weak_arguments(p)
    p.add_argument("--size", type=int, default=256, help="image size after resizing (Task 1 layout)")
    p.add_argument("--corner-fraction", type=float, default=0.25, help="healthy corner crop side / shorter side")
    args = p.parse_args(argv)
    return run_cli(convert, args, roles=parse_roles(args.role), size=args.size, corner_fraction=args.corner_fraction)


if __name__ == "__main__":
    raise SystemExit(main())
