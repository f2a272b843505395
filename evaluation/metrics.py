"""Per-case metrics on numpy arrays: overlap, surface distances in mm, and probability-map scores.

All functions take boolean masks (or label maps plus a label/region) of the same shape and, where distances matter,
the voxel spacing in mm in the same axis order. They never raise on empty masks; the conventions are:

| case                         | Dice/IoU | sensitivity | precision | HD95 / ASSD          | NSD |
|------------------------------|----------|-------------|-----------|----------------------|-----|
| reference and prediction empty | 1      | 1           | 1         | 0                    | 1   |
| exactly one of them empty    | 0        | 0 or NaN*   | 0 or NaN* | `empty_distance`     | 0   |

`*` sensitivity is NaN when the reference is empty (no positives to find), precision is NaN when the prediction is
empty; specificity is NaN when the reference covers everything. `empty_distance` defaults to the diagonal of the
image in mm (the largest distance two voxels of this image can have), so a missed or hallucinated structure costs
the most a distance metric can cost instead of silently dropping out of a mean; pass `float('nan')` to get NaN.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

LabelOrRegion = int | tuple[int, ...]

OVERLAP_METRICS = ("dice", "iou", "sensitivity", "specificity", "precision", "accuracy")
SURFACE_METRICS = ("hd95", "assd", "nsd")
NSD_METHODS = ("voxel", "surface")


def region_mask(segmentation: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    """Boolean mask of a label, or of a region (a tuple of labels, as nnU-Net's region-based training uses)."""
    if np.isscalar(label_or_region):
        return segmentation == label_or_region
    return np.isin(segmentation, np.asarray(label_or_region))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def confusion_counts(reference: np.ndarray, prediction: np.ndarray, ignore: np.ndarray | None = None
                     ) -> tuple[int, int, int, int]:
    """tp, fp, fn, tn of two boolean masks, voxels where `ignore` is True left out."""
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        reference, prediction = reference[keep], prediction[keep]
    tp = int(np.count_nonzero(reference & prediction))
    n_ref = int(np.count_nonzero(reference))
    n_pred = int(np.count_nonzero(prediction))
    fp, fn = n_pred - tp, n_ref - tp
    return tp, fp, fn, reference.size - tp - fp - fn


def overlap_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    if tp + fp + fn == 0:
        # nothing to find and nothing found: a perfect answer, not an undefined one
        dice = iou = 1.0
    else:
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
    return {
        "dice": dice,
        "iou": iou,
        "sensitivity": 1.0 if tp + fp + fn == 0 else _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": 1.0 if tp + fp + fn == 0 else _ratio(tp, tp + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def overlap_metrics(reference: np.ndarray, prediction: np.ndarray, ignore: np.ndarray | None = None
                    ) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity, precision and accuracy of two boolean masks, plus the raw counts."""
    tp, fp, fn, tn = confusion_counts(reference, prediction, ignore)
    return {**overlap_from_counts(tp, fp, fn, tn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _crop_to_union(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their union's bounding box plus one zero voxel on every side.

    Every surface voxel of either mask lies inside the union's box, so distances between the two surfaces computed in
    the box are exact; the zero border makes voxels on the image edge surface voxels, as if the world outside the
    image were background.
    """
    union = reference | prediction
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hit = np.flatnonzero(np.any(union, axis=other))
        slices.append(slice(hit[0], hit[-1] + 1))
    box = tuple(slices)
    return np.pad(reference[box], 1), np.pad(prediction[box], 1)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of a (zero-padded) mask with at least one face neighbour outside it.

    Shifted comparisons instead of binary_erosion: the same result for the face-connected structuring element, a few
    times faster on large volumes.
    """
    interior = mask.copy()
    for axis in range(mask.ndim):
        inner = [slice(None)] * mask.ndim
        inner[axis] = slice(1, -1)
        before = list(inner)
        before[axis] = slice(0, -2)
        after = list(inner)
        after[axis] = slice(2, None)
        # the one-voxel border is background (padding), so it needs no neighbour test of its own
        interior[tuple(inner)] &= mask[tuple(before)] & mask[tuple(after)]
    return mask & ~interior


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Distance in mm between the centres of two opposite corner voxels of an image."""
    return float(np.sqrt(np.sum(((np.asarray(shape) - 1) * np.asarray(spacing, dtype=float)) ** 2)))


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each reference surface voxel to the prediction's surface, and the other way round.

    Both masks must be non-empty. One Euclidean distance transform per direction, on the union's bounding box only.
    """
    reference, prediction = _crop_to_union(np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool))
    surface_ref, surface_pred = surface_voxels(reference), surface_voxels(prediction)
    spacing = np.asarray(spacing, dtype=float)
    to_pred = distance_transform_edt(~surface_pred, sampling=spacing)[surface_ref]
    to_ref = distance_transform_edt(~surface_ref, sampling=spacing)[surface_pred]
    return to_pred, to_ref


def surface_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                    nsd_tolerance_mm: float = 1.0, empty_distance: float | None = None,
                    nsd_method: str = "voxel") -> dict[str, float]:
    """HD95, average symmetric surface distance (mm) and normalised surface Dice at a tolerance (mm).

    HD95 is the larger of the two directed 95th percentiles; ASSD pools the surface voxels of both sides. NSD with
    `nsd_method="voxel"` counts surface voxels within the tolerance (MONAI's compute_surface_dice with
    use_subvoxels=False); with "surface" it weighs surface elements by their area (DeepMind's surface-distance, MONAI's
    use_subvoxels=True), see `surface_dice_by_area`. Empty masks: see the module docstring; `empty_distance=None`
    means the image diagonal.
    """
    if nsd_method not in NSD_METHODS:
        raise ValueError(f"nsd_method must be one of {NSD_METHODS}, not {nsd_method!r}")
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {reference.ndim}D mask")
    has_ref, has_pred = bool(reference.any()), bool(prediction.any())
    if not has_ref and not has_pred:
        return {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    if not (has_ref and has_pred):
        far = image_diagonal(reference.shape, spacing) if empty_distance is None else float(empty_distance)
        return {"hd95": far, "assd": far, "nsd": 0.0}
    to_pred, to_ref = surface_distances(reference, prediction, spacing)
    pooled = np.concatenate([to_pred, to_ref])
    if nsd_method == "surface":
        nsd = surface_dice_by_area(reference, prediction, spacing, nsd_tolerance_mm)
    else:
        nsd = float(np.count_nonzero(pooled <= nsd_tolerance_mm) / pooled.size)
    return {
        "hd95": float(max(np.percentile(to_pred, 95), np.percentile(to_ref, 95))),
        "assd": float(pooled.mean()),
        "nsd": nsd,
    }


def _corners(ndim: int) -> list[tuple[int, ...]]:
    """The corners of a 2^ndim window; corner i is bit i of a window's code."""
    return list(itertools.product((0, 1), repeat=ndim))


def window_codes(mask: np.ndarray) -> np.ndarray:
    """For every 2x2(x2) window of neighbouring voxel centres, the code of which of its corners lie inside the
    mask (bit i for corner i of `_corners`). The windows form the grid shifted by half a voxel."""
    mask = np.asarray(mask, dtype=bool)
    codes = np.zeros(tuple(s - 1 for s in mask.shape), dtype=np.uint8)
    for bit, corner in enumerate(_corners(mask.ndim)):
        codes |= mask[tuple(slice(c, s - 1 + c) for c, s in zip(corner, mask.shape, strict=True))].astype(
            np.uint8) << bit
    return codes


@functools.cache
def _unit_area_vectors_3d() -> tuple[np.ndarray, ...]:
    """Per window code, the area vectors (normal times area) of the marching-cubes triangles at unit spacing.

    Triangles come from scikit-image's marching cubes with Lorensen's tables, at level 0.5 of the 0/1 corners (so
    vertices sit on edge midpoints), always for the side with at most four inside corners: a configuration and its
    complement bound the same surface, and scikit-image triangulates some five- and six-corner configurations
    differently from their complements. Taken this way, the areas equal DeepMind's surface-distance table for all 256
    codes and any spacing (to float32 precision; compared with MONAI's copy of that table).
    """
    from skimage.measure import marching_cubes

    corners = _corners(3)
    vectors = []
    for code in range(256):
        inside = np.array([(code >> bit) & 1 for bit in range(8)], dtype=np.float32)
        if inside.sum() > 4:
            inside = 1 - inside
        if inside.sum() == 0:
            vectors.append(np.zeros((0, 3)))
            continue
        cube = np.zeros((2, 2, 2), dtype=np.float32)
        for value, corner in zip(inside, corners, strict=True):
            cube[corner] = value
        vertices, faces, _, _ = marching_cubes(cube, level=0.5, method="lorensen")
        triangles = vertices[faces].astype(float)
        vectors.append(0.5 * np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]))
    return tuple(vectors)


def window_measures(spacing: Sequence[float]) -> np.ndarray:
    """Surface area (3D, mm^2) or contour length (2D, mm) of the boundary inside a window, per window code."""
    s = np.asarray(spacing, dtype=float)
    if s.size == 3:
        # an area vector (a, b, c) at unit spacing becomes (a s1 s2, b s0 s2, c s0 s1) on the scaled grid
        scale = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
        return np.array([np.linalg.norm(v * scale, axis=1).sum() for v in _unit_area_vectors_3d()])
    if s.size != 2:
        raise ValueError(f"surface elements need a 2D or 3D spacing, got {tuple(spacing)}")
    # marching squares through edge midpoints: a corner cut is half a window diagonal, two corners sharing a side a
    # straight line across the window along that side, two diagonal corners (a saddle) two corner cuts
    corners = _corners(2)
    cut = 0.5 * float(np.hypot(*s))
    lengths = np.zeros(16)
    for code in range(16):
        inside = [c for bit, c in enumerate(corners) if (code >> bit) & 1]
        if len(inside) in (1, 3):
            lengths[code] = cut
        elif len(inside) == 2:
            (a0, a1), (b0, b1) = inside
            lengths[code] = s[1] if a0 == b0 else s[0] if a1 == b1 else 2 * cut
    return lengths


def surface_dice_by_area(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                         tolerance_mm: float) -> float:
    """Normalised surface Dice with surface elements weighted by their area (contour length in 2D), as DeepMind's
    surface-distance computes it: the boundary of each mask is cut into the windows between neighbouring voxel
    centres, each window's part measured by marching cubes (squares); distances run between window centres.
    Both masks must be non-empty."""
    reference, prediction = _crop_to_union(np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool))
    measures = window_measures(spacing)
    full = len(measures) - 1
    spacing = np.asarray(spacing, dtype=float)
    borders, areas = [], []
    for mask in (reference, prediction):
        codes = window_codes(mask)
        border = (codes != 0) & (codes != full)
        borders.append(border)
        areas.append(measures[codes[border]])
    to_pred = distance_transform_edt(~borders[1], sampling=spacing)[borders[0]]
    to_ref = distance_transform_edt(~borders[0], sampling=spacing)[borders[1]]
    within = areas[0][to_pred <= tolerance_mm].sum() + areas[1][to_ref <= tolerance_mm].sum()
    return float(within / (areas[0].sum() + areas[1].sum()))


def _sorted_cumulative_counts(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives when thresholding at each distinct score, highest first."""
    order = np.argsort(score, kind="mergesort")[::-1]
    score, target = score[order], target[order]
    # the last element of each run of equal scores: all tied samples enter together
    last_of_run = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(target)[last_of_run]
    fps = (last_of_run + 1) - tps
    return tps, fps


def auc_roc(target: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count half, as the trapezoid rule gives); NaN without both classes."""
    target = np.asarray(target, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(np.count_nonzero(target))
    n_neg = target.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tps, fps = _sorted_cumulative_counts(target, score)
    tpr = np.r_[0, tps] / n_pos
    fpr = np.r_[0, fps] / n_neg
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def auc_pr(target: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation); NaN without
    positives."""
    target = np.asarray(target, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(np.count_nonzero(target))
    if n_pos == 0:
        return float("nan")
    tps, fps = _sorted_cumulative_counts(target, score)
    precision = tps / (tps + fps)
    recall = np.r_[0, tps] / n_pos
    return float(np.sum(np.diff(recall) * precision))


def probability_metrics(target: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """AUC-ROC, AUC-PR and the mean squared error between a probability map and a binary target."""
    target = np.asarray(target, dtype=bool)
    probability = np.asarray(probability, dtype=np.float64)
    return {
        "auc_roc": auc_roc(target, probability),
        "auc_pr": auc_pr(target, probability),
        "mse": float(np.mean((probability - target) ** 2)) if target.size else float("nan"),
    }


def describe(values) -> dict:
    """mean, std (population), median and the number of values, NaNs left out."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
            "n": int(values.size)}


def squeeze_spatial(array: np.ndarray, spacing: Sequence[float], keep_leading: int = 0
                    ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop spatial axes of length one with their spacing (nnU-Net stores 2D images as 1 x H x W with a dummy
    spacing of 999 on the first axis, which would otherwise make every pixel a surface voxel 999 mm away).

    `keep_leading` axes in front (e.g. the channel axis of a probability array) are not spatial and kept.
    """
    spatial = array.shape[keep_leading:]
    if len(spacing) != len(spatial):
        raise ValueError(f"spacing {tuple(spacing)} does not match spatial shape {spatial}")
    keep = [i for i, s in enumerate(spatial) if s != 1]
    if len(keep) < 2:
        keep = list(range(len(spatial)))[-2:]
    drop = tuple(keep_leading + i for i in range(len(spatial)) if i not in keep)
    return np.squeeze(array, axis=drop) if drop else array, tuple(float(spacing[i]) for i in keep)
