"""FTS-style fundus tumour photographs -> Dataset721_FundusTumour.

Source: a folder of images (`images/`, or `imgs/`, `image/`) with a matching folder of masks (`masks/`, `labels/`,
`mask/`, `gt/`), mask named like its image, optionally with `_mask`, `_label`, `_gt` or `_segmentation`; masks
0/255 or 0/1. The same under `training/` and `test/` when the source has a split (test -> imagesTs/labelsTs).
An optional per-case class table (`classification.csv` with columns case,class or `classification.json`
{case: class}, found in the source or given) is carried into the raw folder as `classification.json`
{case id: class index}, with the class names in dataset.json (`classification_classes`), for FTSegNet's
classification prior. Labels 0 background, 1 tumour; RGB images as one _0000.png (JPEGs decoded losslessly to PNG).

Classification-only images (a class, no mask): put them in `classification_only/` (beside `images/`, training split
only) and give each a class in the class table. They become training cases whose label map is all ignore label
(dataset.json gains "ignore": 2): FTSegNetTrainer trains its classification prior on them and the segmenter skips
them; a stock nnU-Net trainer gets no loss from them. The paper's setting: abundant classification data, few masks.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion._common import (
    IMAGE_EXTENSIONS_2D,
    ConversionError,
    base_parser,
    check_binary_mask_values,
    check_same_shape,
    dataset_name,
    find_partner,
    first_existing,
    list_files,
    raw_root,
    read_image_2d,
    read_rgb,
    run_cli,
    safe_case_id,
    staged_dataset,
    write_dataset_json,
    write_json,
    write_png,
)

DATASET_ID = 721
NAME = "FundusTumour"
LABELS = {"background": 0, "tumour": 1}
IMAGE_FOLDERS = ("images", "imgs", "image")
MASK_FOLDERS = ("masks", "labels", "mask", "gt")
MASK_SUFFIXES = ("", "_mask", "_label", "_gt", "_segmentation")
CLASSIFICATION_ONLY_FOLDER = "classification_only"
IGNORE = 2  # the whole label map of a classification-only case


def read_class_table(path: Path) -> dict[str, str]:
    """case -> class (as text) from a csv (header with a case/image/id column and a class/label column) or json."""
    try:
        if path.suffix.lower() == ".json":
            table = json.loads(path.read_text())
            if not isinstance(table, dict):
                raise ValueError("expected an object {case: class}")
            return {str(k): str(v) for k, v in table.items()}
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError("no rows")
        key = next(c for c in rows[0] if c.strip().lower() in ("case", "image", "id", "name", "filename"))
        value = next(c for c in rows[0] if c.strip().lower() in ("class", "label", "type", "category"))
        return {Path(r[key].strip()).stem if "." in r[key] else r[key].strip(): r[value].strip() for r in rows}
    except (ValueError, StopIteration, KeyError, OSError) as e:
        raise ConversionError(f"{path}: unreadable class table ({e or 'missing case or class column'})") from e


def convert(source, dataset_id: int = DATASET_ID, out_root=None, overwrite: bool = False,
            class_table: str | Path | None = None) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    splits = {role: f for role, f in (("Tr", first_existing(source, ("training", "train"))),
                                      ("Ts", first_existing(source, ("test", "testing")))) if f is not None}
    if not splits:
        splits = {"Tr": source}
    if class_table is None:
        class_table = next((source / n for n in ("classification.csv", "classification.json")
                            if (source / n).is_file()), None)
    classes = read_class_table(Path(class_table)) if class_table is not None else None
    with staged_dataset(dataset_id, NAME, out_root, overwrite) as out:
        (out / "imagesTs").mkdir()
        (out / "labelsTs").mkdir()
        case_of_stem, n_train = {}, 0
        for role, folder in splits.items():
            image_dir, mask_dir = first_existing(folder, IMAGE_FOLDERS), first_existing(folder, MASK_FOLDERS)
            if image_dir is None or mask_dir is None:
                raise ConversionError(f"{folder}: expected an images folder ({', '.join(IMAGE_FOLDERS)}) and a mask "
                                      f"folder ({', '.join(MASK_FOLDERS)})")
            for image_file in tqdm(list_files(image_dir, IMAGE_EXTENSIONS_2D), desc=f"{NAME} {folder.name}"):
                stem = image_file.name[: -len(image_file.suffix)]
                case = safe_case_id(stem)
                if case in case_of_stem.values():
                    raise ConversionError(f"{image_file}: case name {case} used twice")
                case_of_stem[stem] = case
                mask_file = find_partner(mask_dir, stem, MASK_SUFFIXES, IMAGE_EXTENSIONS_2D, "tumour mask",
                                         image_file)
                image = read_rgb(image_file)
                mask = check_binary_mask_values(read_image_2d(mask_file), mask_file)
                check_same_shape(image.shape, image_file, mask.shape, mask_file)
                write_png(image, out / f"images{role}" / f"{case}_0000.png")
                write_png(mask, out / f"labels{role}" / f"{case}.png")
                n_train += role == "Tr"
        only_dir = splits["Tr"] / CLASSIFICATION_ONLY_FOLDER
        only = list_files(only_dir, IMAGE_EXTENSIONS_2D) if only_dir.is_dir() else []
        if only and classes is None:
            raise ConversionError(f"{only_dir}: classification-only images need a class table (classification.csv "
                                  f"or classification.json in {source}, or --class-table)")
        for image_file in tqdm(only, desc=f"{NAME} {CLASSIFICATION_ONLY_FOLDER}"):
            stem = image_file.name[: -len(image_file.suffix)]
            case = safe_case_id(stem)
            if case in case_of_stem.values():
                raise ConversionError(f"{image_file}: case name {case} used twice")
            if stem not in classes:
                raise ConversionError(f"{image_file}: classification-only image without a class in {class_table}")
            case_of_stem[stem] = case
            image = read_rgb(image_file)
            write_png(image, out / "imagesTr" / f"{case}_0000.png")
            write_png(np.full(image.shape[:2], IGNORE, np.uint8), out / "labelsTr" / f"{case}.png")
            n_train += 1
        extra = {}
        if classes is not None:
            unknown = sorted(set(classes) - set(case_of_stem))
            if unknown:
                raise ConversionError(f"{class_table}: cases {unknown[:5]} not among the images")
            names = sorted(set(classes.values()), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
            write_json({case_of_stem[s]: names.index(c) for s, c in classes.items()}, out / "classification.json")
            extra["classification_classes"] = names
        labels = dict(LABELS, ignore=IGNORE) if only else LABELS
        write_dataset_json(out, {0: "R", 1: "G", 2: "B"}, labels, n_train, ".png", dataset_name=NAME,
                           reference="Deng et al., ISBI 2024 (FTSegNet)", **extra)
    return raw_root(out_root) / dataset_name(dataset_id, NAME)


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], DATASET_ID)
    p.epilog = (f"Classification-only images (a class, no mask) go in {CLASSIFICATION_ONLY_FOLDER}/ beside images/ "
                f"and need a class in the class table; they become training cases whose label map is all ignore "
                f"label ({IGNORE}), for FTSegNetTrainer's classification prior.")
    p.add_argument("--class-table", default=None, help="per-case class table (csv: case,class; or json); also "
                   f"gives the classes of the images in {CLASSIFICATION_ONLY_FOLDER}/")
    args = p.parse_args(argv)
    return run_cli(convert, args, class_table=args.class_table)


if __name__ == "__main__":
    raise SystemExit(main())
