"""Reading predictions, references and probability files so that a broken file is an error naming it, not a score.

nnU-Net's readers are used for the pixels (dataset.json `file_ending` picks one), with checks around them:
- NIfTI files are checked for completeness first: SimpleITK reads a truncated `.nii`/`.nii.gz` without complaint and
  fills the missing slices with zeros (a liver prediction cut short scored Dice 0.31 instead of 0.84, exit code 0);
- any exception of a reader (SimpleITK, PIL, tifffile and nibabel raise different types) becomes "unreadable or
  corrupt" with the file's name;
- label maps must hold integer values declared in dataset.json;
- reference and prediction must share the grid: shape, and spacing/origin/direction (or the NIfTI affine) within
  `np.allclose`, as nnU-Net's own dataset integrity check compares them.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nnunet_ext.evaluation.metrics import squeeze_spatial

NIFTI_ENDINGS = (".nii", ".nii.gz")
# keys of the readers' property dicts that describe where the grid sits in the world (SimpleITKIO, NibabelIO)
GEOMETRY_KEYS = {"sitk_stuff": ("origin", "direction"), "nibabel_stuff": ("original_affine",)}


def _reason(error: BaseException, limit: int = 200) -> str:
    """The exception's type and message on one line (SimpleITK's run over several lines with C++ source paths)."""
    text = " ".join(str(error).split()) or "no message"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


def check_nifti_complete(path: str) -> None:
    """Raise ValueError naming the file when a NIfTI file holds fewer voxel bytes than its header declares, or when
    its gzip stream is cut short or fails its checksum."""
    import nibabel

    try:
        # the array proxy knows where the voxels start in the file (the loaded image's header copy says 0)
        proxy = nibabel.load(path).dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize
    except Exception as e:  # nibabel raises ImageFileError, EOFError, OSError ... on a broken header
        raise ValueError(f"{path}: truncated or corrupt file: no readable NIfTI header ({_reason(e)})") from e
    if path.endswith(".gz"):
        stored = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    stored += len(chunk)
        except (EOFError, OSError, zlib.error) as e:  # cut short, bad checksum, damaged deflate stream
            raise ValueError(f"{path}: truncated or corrupt file ({_reason(e)})") from e
    else:
        stored = os.path.getsize(path)
    if stored < expected:
        raise ValueError(f"{path}: truncated or corrupt file: {stored} bytes of voxel data and header where the "
                         f"header declares {expected}")


@dataclass
class LabelMap:
    """A label map as the evaluation uses it: spatial axes only (nnU-Net's channel axis and singleton spatial axes
    dropped), the spacing of those axes, the spacing as stored, and the grid's place in the world."""
    array: np.ndarray
    spacing: tuple[float, ...]
    stored_spacing: tuple[float, ...]
    shape: tuple[int, ...]
    geometry: dict[str, np.ndarray] = field(default_factory=dict)


def integer_labels(array: np.ndarray, path: str) -> np.ndarray:
    """nnU-Net's readers return float32; label maps become uint8 (uint16 for many labels), refusing values that are
    no label (fractions, negatives, NaN)."""
    if array.size == 0:
        raise ValueError(f"{path}: empty image (no voxels)")
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: not a label map: values {low:g}..{high:g} (labels are integers 0..65535)")
    as_int = array.astype(np.uint8 if high < 256 else np.uint16)
    if not np.array_equal(as_int, array):
        raise ValueError(f"{path}: not a label map: non-integer values (a probability or intensity image?)")
    return as_int


def label_values(array: np.ndarray) -> list[int]:
    """The distinct values of an unsigned integer label map (bincount: much faster than np.unique on volumes)."""
    return np.flatnonzero(np.bincount(array.ravel())).tolist()


def read_label_map(reader_writer: type, path: str) -> LabelMap:
    if path.endswith(NIFTI_ENDINGS):
        check_nifti_complete(path)
    try:
        seg, props = reader_writer().read_seg(path)
    except Exception as e:  # every reader fails differently on a broken file; all mean the same to the user
        raise ValueError(f"{path}: unreadable or corrupt ({_reason(e)})") from e
    stored_spacing = tuple(float(s) for s in props["spacing"])
    try:
        array, spacing = squeeze_spatial(seg[0], stored_spacing)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    geometry = {"spacing": np.asarray(stored_spacing, dtype=float)}
    for group, keys in GEOMETRY_KEYS.items():
        for key in keys:
            if key in props.get(group, {}):
                geometry[key] = np.asarray(props[group][key], dtype=float)
    return LabelMap(integer_labels(array, path), spacing, stored_spacing, tuple(seg.shape[1:]), geometry)


def read_image(reader_writer: type, path: str) -> np.ndarray:
    """An image (C, *spatial) for display, squeezed like the label maps."""
    if path.endswith(NIFTI_ENDINGS):
        check_nifti_complete(path)
    try:
        data, props = reader_writer().read_images([path])
        image, _ = squeeze_spatial(data, props["spacing"], keep_leading=1)
    except Exception as e:  # as in read_label_map
        raise ValueError(f"{path}: unreadable or corrupt ({_reason(e)})") from e
    return image


def check_same_grid(reference: LabelMap, reference_path: str, prediction: LabelMap, prediction_path: str,
                    check_geometry: bool = True) -> None:
    """Raise ValueError naming the prediction when its grid is not the reference's."""
    if reference.shape != prediction.shape:
        raise ValueError(f"{prediction_path}: shape {prediction.shape} differs from the reference's {reference.shape} "
                         f"({reference_path})")
    if not check_geometry:
        return
    for key, value in reference.geometry.items():
        other = prediction.geometry.get(key)
        if other is not None and (other.shape != value.shape or not np.allclose(other, value)):
            shown = {k: tuple(np.round(v.ravel(), 6).tolist()) for k, v in (("prediction", other), ("reference",
                                                                                                     value))}
            raise ValueError(f"{prediction_path}: {key} {shown['prediction']} differs from the reference's "
                             f"{shown['reference']} ({reference_path}); --ignore-geometry scores it anyway")


def check_label_values(label_map: LabelMap, path: str, allowed: Sequence[int], dataset_json: str | None) -> None:
    extra = sorted(set(label_values(label_map.array)) - set(allowed))
    if extra:
        source = dataset_json or "dataset.json"
        raise ValueError(f"{path}: label values {extra} are not in {source} (labels {sorted(allowed)})")


def read_probabilities(path: str, stored_spacing: Sequence[float], shape: Sequence[int], n_channels: int,
                       dataset_json: str | None) -> np.ndarray:
    """The (C, *spatial) probabilities of nnUNetv2_predict --save_probabilities, squeezed like the label maps."""
    try:
        with np.load(path) as npz:
            names = list(npz.files)
            probabilities = npz["probabilities"] if "probabilities" in names else None
    except Exception as e:  # zip, zlib and format errors of a damaged file
        raise ValueError(f"{path}: unreadable or corrupt probability file ({_reason(e)})") from e
    if probabilities is None:
        raise ValueError(f"{path}: no 'probabilities' array (found {', '.join(names) or 'none'})")
    if probabilities.ndim != len(stored_spacing) + 1 or tuple(probabilities.shape[1:]) != tuple(shape):
        raise ValueError(f"{path}: probabilities of shape {probabilities.shape} do not fit the reference's "
                         f"{tuple(shape)} (expected channels first)")
    if probabilities.shape[0] != n_channels:
        raise ValueError(f"{path}: {probabilities.shape[0]} probability channels, but "
                         f"{dataset_json or 'dataset.json'} needs {n_channels} (one per label with background, "
                         "or one per region)")
    squeezed, _ = squeeze_spatial(probabilities, stored_spacing, keep_leading=1)
    return squeezed
