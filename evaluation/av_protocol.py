"""The artery/vein protocol of Zhou et al. (MICCAI 2021), and intra-segment misclassification.

Two modes per image, inside the field-of-view mask, each class (artery, vein, uncertain) scored one-vs-rest:

- `paper` (what the authors' evaluation code computes, and what their tables report; use it wherever numbers stand
  beside the paper's): everything on the *hard* one-vs-rest map of the predicted labels (argmax). Sensitivity, F1;
  AUC-ROC of the 0/1 map (= (sensitivity + specificity) / 2); AUC-PR as the trapezoid under the precision-recall
  curve of the 0/1 map (sklearn's `auc(recall, precision)`); MSE of the 0/1 map (= 1 - accuracy). When the
  uncertain class has no true positive (its F1 undefined in the original's arithmetic), every metric of that class
  is 0 for that image, and it still counts with its pixel weight. The original gives NaN for an artery or vein
  class without true positives; here its F1 is 0 and its AUCs are those of the 0/1 map.
- `probability` (an extra, labelled as such; needs `nnUNetv2_predict --save_probabilities`): sensitivity and F1 of
  the label map, AUC-ROC, AUC-PR (average precision) and MSE of the class's softmax map.

The image's overall figure is the mean over the classes weighted by their reference pixel counts inside the FOV (the
original counts over the whole image; vessel pixels outside the FOV are rare); the data set's figure is the mean of
that over images. The paper's +- is the spread over training runs (seeds), not over images.

Intra-segment misclassification (the paper's own claim): the reference vessel tree (every A/V label) is skeletonised
and cut into segments at junctions (skeleton pixels with three or more skeleton neighbours), at crossings (the
uncertain label) and where the reference label changes between artery and vein; segments shorter than
`min_segment_length` skeleton pixels are dropped. A segment is *mixed* when its skeleton pixels are predicted as both
artery and vein; the misclassified-pixel fraction counts skeleton pixels predicted as the other vessel class among
those predicted as artery or vein. Segments predicted as background everywhere are counted as missed, not mixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from nnunet_ext.evaluation.metrics import describe, probability_metrics

AV_CLASSES = {"artery": 1, "vein": 2, "uncertain": 3}
AV_METRICS = ("sensitivity", "f1", "auc_roc", "auc_pr", "mse")
SEGMENT_METRICS = ("mixed_fraction", "misclassified_pixel_fraction", "n_segments", "n_missed")
EIGHT = np.ones((3, 3), dtype=bool)


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    use = ~np.isnan(values) & (weights > 0)
    return float(np.sum(values[use] * weights[use]) / np.sum(weights[use])) if use.any() else float("nan")


def _counts(target: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(target & predicted))
    fp = int(np.count_nonzero(~target & predicted))
    fn = int(np.count_nonzero(target & ~predicted))
    return tp, fp, fn, target.size - tp - fp - fn


def _div(num: float, den: float) -> float:
    return num / den if den else float("nan")


def hard_auc_pr(tp: int, fp: int, fn: int, tn: int) -> float:
    """Trapezoid area under the precision-recall curve of a 0/1 score, built as sklearn's precision_recall_curve
    builds it: the point (recall 0, precision 1), then one point per distinct score from the highest, stopping once
    recall reaches 1."""
    positives = tp + fn
    if positives == 0:
        return float("nan")
    points = [(0.0, 1.0)]
    if tp + fp:  # the threshold 1: the pixels predicted positive
        points.append((tp / positives, tp / (tp + fp)))
    if points[-1][0] < 1:  # the threshold 0: every pixel
        points.append((1.0, positives / (tp + fp + fn + tn)))
    recall, precision = np.array(points).T
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def paper_class_metrics(target: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Sensitivity, F1, AUC-ROC, AUC-PR and MSE of a 0/1 prediction against a 0/1 target (the original's arithmetic
    on hard maps)."""
    tp, fp, fn, tn = _counts(target, predicted)
    sensitivity, specificity = _div(tp, tp + fn), _div(tn, tn + fp)
    return {"sensitivity": sensitivity, "f1": _div(2 * tp, 2 * tp + fp + fn),
            "auc_roc": (sensitivity + specificity) / 2, "auc_pr": hard_auc_pr(tp, fp, fn, tn),
            "mse": _div(fp + fn, tp + fp + fn + tn), "true_positives": tp}


def _weighted(per_class: dict, names: Sequence[str]) -> dict[str, float]:
    weights = [per_class[n]["n_pixels"] for n in names]
    return {m: weighted_mean([per_class[n][m] for n in names], weights) for m in AV_METRICS}


def _skeleton(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import skeletonize  # a dependency of nnunetv2

    return skeletonize(mask)


def vessel_segments(reference: np.ndarray, classes: Mapping[str, int] = AV_CLASSES, inside: np.ndarray | None = None,
                    min_segment_length: int = 10) -> tuple[np.ndarray, dict[int, int]]:
    """(segment id map on the reference skeleton, 0 elsewhere; {segment id: its reference label}). Segments are the
    skeleton between junctions, crossings and artery/vein label changes (see the module docstring)."""
    artery, vein = classes["artery"], classes["vein"]
    shared = [v for k, v in classes.items() if k not in ("artery", "vein")]
    vessel = np.isin(reference, [artery, vein, *shared])
    if inside is not None:
        vessel &= inside
    skeleton = _skeleton(vessel)
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), EIGHT.astype(np.uint8), mode="constant") - 1
    cut = skeleton & (neighbours >= 3)  # junctions
    cut |= skeleton & np.isin(reference, shared)  # crossings
    for a, b in ((artery, vein), (vein, artery)):  # an artery pixel touching a vein pixel on the skeleton
        cut |= skeleton & (reference == a) & ndimage.binary_dilation(skeleton & (reference == b), EIGHT)
    # a cut pixel's neighbours go too, so that no branch stays attached through a diagonal
    pieces = skeleton & ~ndimage.binary_dilation(cut, EIGHT)
    ids, n = ndimage.label(pieces, EIGHT)
    keep = np.bincount(ids.ravel(), minlength=n + 1) >= min_segment_length
    keep[0] = False
    ids = np.where(keep[ids], ids, 0)
    # each segment's reference label: the most frequent one along it (one label after the cuts)
    n_values = int(reference.max()) + 1
    votes = np.bincount(ids[ids > 0] * n_values + reference[ids > 0].astype(np.int64),
                        minlength=(n + 1) * n_values).reshape(n + 1, n_values)
    labels = {int(i): int(votes[i].argmax()) for i in np.flatnonzero(keep)}
    return ids, labels


def intra_segment_misclassification(reference: np.ndarray, prediction: np.ndarray,
                                    classes: Mapping[str, int] = AV_CLASSES, inside: np.ndarray | None = None,
                                    min_segment_length: int = 10) -> dict[str, float]:
    """Fraction of reference segments whose skeleton is predicted as both artery and vein, and the fraction of
    segment skeleton pixels predicted as the other vessel class (among those predicted artery or vein)."""
    artery, vein = classes["artery"], classes["vein"]
    ids, labels = vessel_segments(reference, classes, inside, min_segment_length)
    mixed = missed = wrong = scored = 0
    for i, label in labels.items():
        predicted = prediction[ids == i]
        n_artery, n_vein = int(np.count_nonzero(predicted == artery)), int(np.count_nonzero(predicted == vein))
        if n_artery + n_vein == 0:
            missed += 1
            continue
        mixed += n_artery > 0 and n_vein > 0
        scored += n_artery + n_vein
        wrong += n_vein if label == artery else n_artery
    judged = len(labels) - missed
    return {"mixed_fraction": _div(mixed, judged), "misclassified_pixel_fraction": _div(wrong, scored),
            "n_segments": len(labels), "n_missed": missed, "n_mixed": mixed}


def _segments_2d(reference: np.ndarray, prediction: np.ndarray, classes: Mapping[str, int], inside: np.ndarray,
                 min_segment_length: int) -> dict | None:
    """The segment figures of a 2D image (nnU-Net reads a PNG as 1 x H x W); None for a real 3D volume."""
    axes = tuple(i for i, n in enumerate(reference.shape) if n == 1)
    if reference.ndim - len(axes) != 2:
        return None
    return intra_segment_misclassification(np.squeeze(reference, axes), np.squeeze(prediction, axes), classes,
                                           np.squeeze(inside, axes), min_segment_length)


def av_protocol_case(reference: np.ndarray, prediction: np.ndarray, probabilities: np.ndarray | None = None,
                     fov: np.ndarray | None = None, classes: Mapping[str, int] = AV_CLASSES,
                     min_segment_length: int = 10) -> dict:
    """Scores of one image: `per_class`/`weighted` in the paper mode, `probability` (or None without
    probabilities) in the probability mode, `segments` (intra-segment misclassification). `probabilities` is
    (C, *spatial) with channel k the probability of label k (nnU-Net's softmax output); `fov` is a boolean mask,
    None meaning the whole image."""
    if probabilities is not None and probabilities.shape[1:] != reference.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match the reference {reference.shape}")
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} does not match the reference {reference.shape}")
    inside = np.ones(reference.shape, dtype=bool) if fov is None else np.asarray(fov, dtype=bool)
    if inside.shape != reference.shape:
        raise ValueError(f"FOV mask {inside.shape} does not match the reference {reference.shape}")
    for name in ("artery", "vein"):
        if name not in classes:
            raise ValueError(f"the A/V protocol needs an {name!r} class, got classes {dict(classes)}")
    ref_in, pred_in = reference[inside], prediction[inside]
    paper, probability = {}, {}
    for name, k in classes.items():
        target = ref_in == k
        n_pixels = int(np.count_nonzero(target))
        raw = paper_class_metrics(target, pred_in == k)
        true_positives = raw.pop("true_positives")
        scores = dict(raw)
        if name not in ("artery", "vein") and true_positives == 0:
            # the original zeroes every metric of the uncertain class when its F1 is undefined
            scores = dict.fromkeys(AV_METRICS, 0.0)
        paper[name] = {**scores, "n_pixels": n_pixels}
        if probabilities is not None:
            if k >= probabilities.shape[0]:
                raise ValueError(f"class {name}={k} has no probability channel (the file has "
                                 f"{probabilities.shape[0]})")
            probability[name] = {"sensitivity": raw["sensitivity"], "f1": raw["f1"],
                                 **probability_metrics(target, probabilities[k][inside]), "n_pixels": n_pixels}
    names = list(classes)
    return {"protocol": "paper", "per_class": paper, "weighted": _weighted(paper, names),
            "probability": ({"per_class": probability, "weighted": _weighted(probability, names)}
                            if probabilities is not None else None),
            "segments": _segments_2d(reference, prediction, classes, inside, min_segment_length),
            "n_fov_pixels": int(np.count_nonzero(inside))}


def _summarise_mode(cases: Sequence[dict]) -> dict:
    summary = {"weighted": {m: describe([c["weighted"][m] for c in cases]) for m in AV_METRICS}, "per_class": {}}
    if cases:
        for name in cases[0]["per_class"]:
            summary["per_class"][name] = {m: describe([c["per_class"][name][m] for c in cases]) for m in AV_METRICS}
    return summary


def summarise_av(cases: Sequence[dict]) -> dict:
    """Mean and std over images: the paper mode at the top level (`weighted`, `per_class`) and under `paper`, the
    probability mode under `probability` (when every image had probabilities), the segment figures under
    `segments` (per-image fractions, and `pooled` counts over all images). The std here is over images; the paper's
    is over training runs."""
    paper = _summarise_mode(cases)
    summary = {**paper, "paper": paper, "std_is_over": "images"}
    if cases and all(c.get("probability") for c in cases):
        summary["probability"] = _summarise_mode([c["probability"] for c in cases])
    if cases and all(c.get("segments") for c in cases):
        summary["segments"] = {m: describe([c["segments"][m] for c in cases]) for m in SEGMENT_METRICS}
        pooled = {k: sum(c["segments"][k] for c in cases) for k in ("n_segments", "n_missed", "n_mixed")}
        pooled["mixed_fraction_pooled"] = _div(pooled["n_mixed"], pooled["n_segments"] - pooled["n_missed"])
        summary["segments"]["pooled"] = pooled
    return summary
