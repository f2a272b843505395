"""Lesion-wise detection: connected components of reference and prediction matched by overlap.

A reference lesion is *detected* when the IoU between it and the union of the predicted components touching it
reaches `iou_threshold`. A predicted component is a *true positive* when it touches a detected reference lesion or
when the IoU between it and the union of the reference lesions it touches reaches the threshold; otherwise it is a
*false positive*. Judging against the union of touching components keeps a lesion predicted in two pieces from
being counted as a miss plus two false positives, and two lesions predicted as one blob from being a false positive.
With `iou_threshold=0` any overlap counts. Components use full connectivity (8 in 2D, 26 in 3D).

Sensitivity = detected / reference lesions, precision = true-positive components / predicted components,
F1 from the two; a case without reference lesions has NaN sensitivity, one without predicted components NaN
precision. Lesion sizes are volumes in mm^3 (areas in mm^2 for 2D images).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import generate_binary_structure, label

# equivalent-sphere diameters of 10, 20 and 50 mm (4/3 pi r^3, rounded): tiny, small, medium, large lesions
DEFAULT_SIZE_BINS_MM3 = (0.0, 524.0, 4189.0, 65450.0, float("inf"))
# the same diameters as discs for 2D images (pi r^2, rounded); PNG images have spacing 1, so these are pixels
DEFAULT_SIZE_BINS_MM2 = (0.0, 78.5, 314.0, 1963.0, float("inf"))


def default_size_bins(ndim: int) -> tuple[float, ...]:
    return DEFAULT_SIZE_BINS_MM2 if ndim == 2 else DEFAULT_SIZE_BINS_MM3


def bin_names(edges: Sequence[float]) -> list[str]:
    def fmt(x: float) -> str:
        return "inf" if np.isinf(x) else f"{x:g}"
    return [f"[{fmt(lo)},{fmt(hi)})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _component_ious(labels_a: np.ndarray, n_a: int, labels_b: np.ndarray, n_b: int) -> np.ndarray:
    """For each component of a, the IoU between it and the union of the components of b that overlap it."""
    sizes_a = np.bincount(labels_a.ravel(), minlength=n_a + 1)
    both = (labels_a > 0) & (labels_b > 0)
    pairs = np.unique(np.stack([labels_a[both], labels_b[both]]), axis=1)
    sizes_b = np.bincount(labels_b.ravel(), minlength=n_b + 1)
    if pairs.size == 0:
        return np.zeros(n_a)
    # |a ∩ U(b touching a)| = voxels of a inside any b; |U(b touching a)| summed over the touching components
    intersection = np.bincount(labels_a[both], minlength=n_a + 1)
    union_b = np.bincount(pairs[0], weights=sizes_b[pairs[1]], minlength=n_a + 1)
    union = sizes_a + union_b - intersection
    return intersection[1:] / np.maximum(union[1:], 1)


def detection_scores(n_ref: int, n_pred: int, n_detected: int, n_true_pred: int) -> dict[str, float]:
    """Lesion sensitivity, precision and F1. Nothing to find and nothing found is a perfect F1 of 1; with only one
    side empty the F1 is 0 (the other side's score is 0 or undefined)."""
    sensitivity = n_detected / n_ref if n_ref else float("nan")
    precision = n_true_pred / n_pred if n_pred else float("nan")
    if n_ref == 0 and n_pred == 0:
        f1 = 1.0
    elif n_detected + n_true_pred == 0 or n_ref == 0 or n_pred == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * sensitivity / (precision + sensitivity)
    return {"lesion_sensitivity": sensitivity, "lesion_precision": precision, "lesion_f1": float(f1)}


def lesion_detection(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                     iou_threshold: float = 0.1, size_bins: Sequence[float] | None = None) -> dict:
    """Detection counts of one case; `reference` and `prediction` are boolean lesion masks.

    Returns a dict with the case-level counts and scores and `lesions`, one record per reference lesion (size in mm
    and whether it was detected), and `by_size`, the counts per size bin (edges in mm^3 or mm^2).
    """
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    structure = generate_binary_structure(reference.ndim, reference.ndim)
    labels_ref, n_ref = label(reference, structure)
    labels_pred, n_pred = label(prediction, structure)
    iou_ref = _component_ious(labels_ref, n_ref, labels_pred, n_pred)
    iou_pred = _component_ious(labels_pred, n_pred, labels_ref, n_ref)
    # IoU 0 must not pass a threshold of 0: "any overlap" means some overlap
    detected = (iou_ref >= iou_threshold) & (iou_ref > 0)
    true_pred = (iou_pred >= iou_threshold) & (iou_pred > 0)
    if n_pred:
        touches_detected = np.zeros(n_pred + 1, dtype=bool)
        hit = (labels_pred > 0) & np.isin(labels_ref, np.flatnonzero(detected) + 1)
        touches_detected[np.unique(labels_pred[hit])] = True
        true_pred |= touches_detected[1:]

    voxel_size = float(np.prod(spacing))
    sizes = np.bincount(labels_ref.ravel(), minlength=n_ref + 1)[1:] * voxel_size
    edges = tuple(size_bins) if size_bins is not None else default_size_bins(reference.ndim)
    which_bin = np.digitize(sizes, edges[1:-1])
    by_size = {}
    for i, name in enumerate(bin_names(edges)):
        in_bin = which_bin == i
        by_size[name] = {"n_lesions": int(in_bin.sum()), "n_detected": int(detected[in_bin].sum())}

    n_detected, n_true_pred = int(detected.sum()), int(true_pred.sum())
    return {
        "n_ref_lesions": int(n_ref), "n_pred_lesions": int(n_pred), "n_detected": n_detected,
        "n_true_positive_pred": n_true_pred, "false_positives": int(n_pred - n_true_pred),
        **detection_scores(n_ref, n_pred, n_detected, n_true_pred),
        "lesions": [{"size": float(s), "iou": float(i), "detected": bool(d)}
                    for s, i, d in zip(sizes, iou_ref, detected, strict=True)],
        "by_size": by_size,
    }


def pool_detection(cases: Sequence[dict]) -> dict:
    """Lesion-level totals over cases: pooled sensitivity/precision/F1, mean false positives per case, and the
    detection rate per size bin."""
    n_ref = sum(c["n_ref_lesions"] for c in cases)
    n_pred = sum(c["n_pred_lesions"] for c in cases)
    n_detected = sum(c["n_detected"] for c in cases)
    n_true = sum(c["n_true_positive_pred"] for c in cases)
    by_size: dict[str, dict] = {}
    for c in cases:
        for name, counts in c["by_size"].items():
            entry = by_size.setdefault(name, {"n_lesions": 0, "n_detected": 0})
            entry["n_lesions"] += counts["n_lesions"]
            entry["n_detected"] += counts["n_detected"]
    for entry in by_size.values():
        entry["sensitivity"] = entry["n_detected"] / entry["n_lesions"] if entry["n_lesions"] else float("nan")
    return {
        "n_cases": len(cases), "n_ref_lesions": n_ref, "n_pred_lesions": n_pred, "n_detected": n_detected,
        **detection_scores(n_ref, n_pred, n_detected, n_true),
        "false_positives_per_case": float(np.mean([c["false_positives"] for c in cases])) if cases else float("nan"),
        "by_size": by_size,
    }
