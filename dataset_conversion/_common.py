"""Machinery shared by the converters: staging, reading with file-naming errors, validation, dataset.json, splits.

Every converter writes into a hidden temporary folder beside its target and renames it into place only when the
whole data set is written, so a failure never leaves a half-converted data set behind (the temporary folder is
removed) and an existing data set is replaced only when asked to (`overwrite=True`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.fileio import atomic_output_dir, dataset_id_clashes, first_existing_path

IMAGE_EXTENSIONS_2D = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".bmp", ".ppm")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class ConversionError(ValueError):
    """The source cannot be converted; the message names the offending file and what is wrong with it."""


# ----------------------------------------------------------------------------------------------------------- paths
def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def raw_root(out_root: str | os.PathLike | None) -> Path:
    if out_root is not None:
        return Path(out_root)
    value = os.environ.get("nnUNet_raw")
    if not value:
        raise ConversionError("no output folder given and nnUNet_raw is not set (eval \"$(nnunet_ext env)\" sets it)")
    return Path(value)


def strip_extension(name: str) -> str:
    """File name without its image extension (.nii.gz counts as one)."""
    lower = name.lower()
    for ext in VOLUME_EXTENSIONS + IMAGE_EXTENSIONS_2D:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def list_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Files of folder with one of the extensions (case-insensitive), hidden files (macOS ._*) left out, sorted."""
    if not folder.is_dir():
        raise ConversionError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(tuple(extensions)))


def find_partner(folder: Path, stem: str, suffixes: Sequence[str], extensions: Sequence[str], what: str,
                 for_file: Path, required: bool = True) -> Path | None:
    """The file in folder named stem + one of suffixes + one of extensions (first suffix that exists wins)."""
    if folder.is_dir():
        by_lower = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
        for suffix in suffixes:
            for ext in extensions:
                hit = by_lower.get(f"{stem}{suffix}{ext}".lower())
                if hit is not None:
                    return hit
    if required:
        expected = " or ".join(f"{stem}{s}.*" for s in suffixes)
        raise ConversionError(f"{for_file}: missing partner file: no {what} {expected} in {folder}")
    return None


def first_existing(base: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None


def safe_case_id(text: str) -> str:
    """A case identifier nnU-Net is happy with (no spaces or dots; they would confuse the _0000 channel suffix)."""
    out = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return out.strip("_") or "case"


# ------------------------------------------------------------------------------------------------------- reading
def read_image_2d(path: Path) -> np.ndarray:
    """Decoded pixels of a 2D image (PIL handles GIF, which SimpleITK cannot); palette images become RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int32)
            elif im.mode not in ("L", "RGB", "RGBA", "1"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Exception as e:  # PIL raises many types for truncated or foreign files
        raise ConversionError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})") from e
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    return arr


def read_rgb(path: Path) -> np.ndarray:
    """An image as H x W x 3 uint8 (grey replicated), as nnU-Net's NaturalImage2DIO wants one RGB _0000.png."""
    arr = read_image_2d(path)
    if arr.dtype != np.uint8:
        raise ConversionError(f"{path}: expected 8-bit pixels, found {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_grey_or_rgb(path: Path) -> np.ndarray:
    """H x W for grey images (also RGB files whose channels are equal), H x W x 3 otherwise."""
    arr = read_image_2d(path)
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def read_binary_mask_2d(path: Path, threshold: int = 0) -> np.ndarray:
    """A 0/1 uint8 mask from any single- or multi-channel image: a pixel is inside where any channel > threshold."""
    arr = read_image_2d(path)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return (arr > threshold).astype(np.uint8)


def read_volume(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except Exception as e:
        raise ConversionError(f"{path}: unreadable or corrupt volume ({e})") from e
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        # a NaN that reaches nnU-Net's normalisation becomes a NaN patch and a NaN loss hours into training; and
        # SimpleITK's NIfTI reader silently turns NaN into 0 (measured), which hides broken scans, so NIfTI files are
        # read through nibabel for this check
        if str(path).endswith((".nii", ".nii.gz")):
            import nibabel

            values = np.asanyarray(nibabel.load(str(path)).dataobj)
        else:
            values = sitk.GetArrayViewFromImage(image)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise ConversionError(f"{path}: {bad} NaN/Inf voxels; fix or mask them before conversion")
    return image


# ------------------------------------------------------------------------------------------------------ checking
def check_same_shape(shape_a: tuple, file_a: Path, shape_b: tuple, file_b: Path, what: str = "label") -> None:
    if tuple(shape_a[:2]) != tuple(shape_b[:2]):
        raise ConversionError(f"{file_b}: size mismatch: {what} is {tuple(shape_b[:2])} (rows, cols) but its image "
                              f"{file_a.name} is {tuple(shape_a[:2])}")


def check_label_values(arr: np.ndarray, allowed: Iterable[int], path: Path, scheme: str) -> None:
    values = np.unique(arr)
    bad = sorted(set(values.tolist()) - set(allowed))
    if bad:
        raise ConversionError(f"{path}: label values {bad} outside the scheme ({scheme})")


def check_binary_mask_values(arr: np.ndarray, path: Path) -> np.ndarray:
    """0/1 or 0/255 masks (one channel or grey RGB) to 0/1; anything else is refused naming the file."""
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise ConversionError(f"{path}: colour mask: expected a grey 0/1 or 0/255 mask")
        arr = arr[..., 0]
    values = set(np.unique(arr).tolist())
    if values <= {0, 1}:
        return arr.astype(np.uint8)
    if values <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    raise ConversionError(f"{path}: label values {sorted(values)[:10]} outside the scheme (binary mask 0/1 or 0/255)")


def check_same_geometry(image: sitk.Image, image_file: Path, seg: sitk.Image, seg_file: Path,
                        tolerance: float = 1e-3) -> None:
    """Same grid: size exactly, spacing/origin/direction within tolerance (relative for spacing)."""
    if image.GetSize() != seg.GetSize():
        raise ConversionError(f"{seg_file}: size mismatch: {seg.GetSize()} but image {image_file.name} is "
                              f"{image.GetSize()}")
    sp_i, sp_s = np.array(image.GetSpacing()), np.array(seg.GetSpacing())
    if np.any(np.abs(sp_i - sp_s) > tolerance * np.maximum(sp_i, 1)):
        raise ConversionError(f"{seg_file}: geometry mismatch: spacing {tuple(sp_s)} but image {image_file.name} has "
                              f"{tuple(sp_i)}")
    if np.any(np.abs(np.array(image.GetOrigin()) - np.array(seg.GetOrigin())) > max(tolerance, 1e-3 * sp_i.max())):
        raise ConversionError(f"{seg_file}: geometry mismatch: origin {seg.GetOrigin()} but image {image_file.name} "
                              f"has {image.GetOrigin()}")
    if np.any(np.abs(np.array(image.GetDirection()) - np.array(seg.GetDirection())) > tolerance):
        raise ConversionError(f"{seg_file}: geometry mismatch: direction differs from image {image_file.name}")


# ------------------------------------------------------------------------------------------------------- writing
def write_png(arr: np.ndarray, path: Path) -> None:
    """Lossless PNG of uint8 H x W or H x W x 3 pixels."""
    Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8, copy=False))).save(path, optimize=False,
                                                                                   compress_level=1)


def write_label_volume(arr: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """A uint8 label volume on the reference image's grid (spacing, origin, direction copied)."""
    out = sitk.GetImageFromArray(arr.astype(np.uint8, copy=False))
    out.CopyInformation(reference)
    sitk.WriteImage(out, str(path), useCompression=True)


def write_volume(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


def write_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)


def write_dataset_json(folder: Path, channel_names: dict, labels: dict, num_training_cases: int, file_ending: str,
                       **kwargs) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    kwargs.setdefault("converted_by", "nnunet-ext (nnunet_ext.dataset_conversion)")
    kwargs.setdefault("license", "see the source data set's terms; research use")
    generate_dataset_json(str(folder), dict(channel_names), dict(labels), num_training_cases, file_ending, **kwargs)


def write_splits(folder: Path, splits: list[dict[str, list[str]]]) -> None:
    """splits_final.json in the raw folder: nnU-Net's planner (2.8) copies it to nnUNet_preprocessed."""
    write_json([{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in splits], folder / "splits_final.json")


def install_splits(dataset_id: int, raw: str | os.PathLike | None = None,
                   preprocessed: str | os.PathLike | None = None) -> Path:
    """Copy a raw data set's splits_final.json to nnUNet_preprocessed (for planners that do not copy it)."""
    raw_dir = raw_root(raw)
    matches = sorted(raw_dir.glob(f"Dataset{int(dataset_id):03d}_*"))
    if len(matches) != 1:
        raise ConversionError(f"{raw_dir}: expected one Dataset{int(dataset_id):03d}_* folder, found {len(matches)}")
    source = matches[0] / "splits_final.json"
    if not source.is_file():
        raise ConversionError(f"{source}: not found (this data set has no official split)")
    pre = Path(preprocessed or os.environ.get("nnUNet_preprocessed") or "")
    if not str(pre):
        raise ConversionError("nnUNet_preprocessed is not set")
    target = pre / matches[0].name / "splits_final.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


# ------------------------------------------------------------------------------------------------------- staging
@contextmanager
def staged_dataset(dataset_id: int, name: str, out_root: str | os.PathLike | None,
                   overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary data set folder (with imagesTr/labelsTr) that becomes nnUNet_raw/DatasetNNN_Name.

    Refuses before any work when the target, or another data set with the same id, exists and overwrite is False.
    """
    root = raw_root(out_root)
    if root.exists() and not root.is_dir():
        raise ConversionError(f"{root}: not a folder (-o names the nnUNet_raw folder to write the data set into)")
    target = root / dataset_name(dataset_id, name)
    clashes = dataset_id_clashes(root, dataset_id, target)
    existing = first_existing_path(target, *clashes)
    if existing is not None and not overwrite:
        raise ConversionError(f"{existing}: data set exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_output_dir(target, overwrite=True, also_replace=clashes) as tmp:
        for sub in ("imagesTr", "labelsTr"):
            (tmp / sub).mkdir()
        yield tmp
        # empty optional folders (imagesTs without a test set) would only confuse users
        for sub in tmp.iterdir():
            if sub.is_dir() and not any(sub.iterdir()) and sub.name not in ("imagesTr", "labelsTr"):
                sub.rmdir()


def make_dirs(folder: Path, *names: str) -> tuple[Path, ...]:
    out = tuple(folder / n for n in names)
    for p in out:
        p.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------------------------------------------------- CLI
def base_parser(description: str, dataset_id: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_common_arguments(p, dataset_id)
    return p


def add_common_arguments(p: argparse.ArgumentParser, dataset_id: int, with_input: bool = True) -> None:
    if with_input:
        p.add_argument("-i", "--input", required=True, help="source folder in the data set's published layout")
    p.add_argument("-o", "--output", default=None, help="nnUNet_raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("-d", "--dataset-id", type=int, default=dataset_id, help=f"data set id (default {dataset_id})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set with the same id")


def run_cli(convert: Callable[..., Path], args: argparse.Namespace, **kwargs) -> int:
    """Call a converter with the common arguments; a ConversionError, or a file system error (no permission, a path
    through a file), becomes a one-line message on stderr and exit code 1."""
    try:
        out = convert(args.input, dataset_id=args.dataset_id, out_root=args.output, overwrite=args.overwrite,
                      **kwargs)
    except (ConversionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"written {out}")
    return 0
