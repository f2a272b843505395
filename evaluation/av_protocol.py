"""The artery/vein protocol of Zhou et al. (MICCAI 2021), as their tables report it.

Per image, inside the field-of-view mask, each class (artery, vein, uncertain) is scored one-vs-rest: sensitivity and
F1 of the predicted label map, AUC-ROC, AUC-PR and MSE of the class's probability map. The image's overall figure is
the mean over the classes weighted by their reference pixel counts inside the FOV; the data set's figure is the mean
(and std) of that over images. A class absent from an image's reference has weight 0 there; a metric that is NaN
for a class (e.g. AUC of a class without pixels) leaves that class out of the weighted mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nnunet_ext.evaluation.metrics import confusion_counts, describe, overlap_from_counts, probability_metrics

AV_CLASSES = {"artery": 1, "vein": 2, "uncertain": 3}
AV_METRICS = ("sensitivity", "f1", "auc_roc", "auc_pr", "mse")


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    use = ~np.isnan(values) & (weights > 0)
    return float(np.sum(values[use] * weights[use]) / np.sum(weights[use])) if use.any() else float("nan")


def av_protocol_case(reference: np.ndarray, prediction: np.ndarray, probabilities: np.ndarray,
                     fov: np.ndarray | None = None, classes: Mapping[str, int] = AV_CLASSES) -> dict:
    """Scores of one image. `probabilities` is (C, *spatial) with channel k the probability of label k (nnU-Net's
    softmax output); `fov` is a boolean mask, None meaning the whole image."""
    if probabilities.shape[1:] != reference.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match the reference {reference.shape}")
    inside = np.ones(reference.shape, dtype=bool) if fov is None else np.asarray(fov, dtype=bool)
    if inside.shape != reference.shape:
        raise ValueError(f"FOV mask {inside.shape} does not match the reference {reference.shape}")
    reference, prediction = reference[inside], prediction[inside]
    per_class = {}
    for name, k in classes.items():
        if k >= probabilities.shape[0]:
            raise ValueError(f"class {name}={k} has no probability channel (the file has {probabilities.shape[0]})")
        target = reference == k
        counts = overlap_from_counts(*confusion_counts(target, prediction == k))
        per_class[name] = {"sensitivity": counts["sensitivity"], "f1": counts["dice"],
                           **probability_metrics(target, probabilities[k][inside]),
                           "n_pixels": int(np.count_nonzero(target))}
    weights = [per_class[n]["n_pixels"] for n in classes]
    weighted = {m: weighted_mean([per_class[n][m] for n in classes], weights) for m in AV_METRICS}
    return {"per_class": per_class, "weighted": weighted, "n_fov_pixels": int(np.count_nonzero(inside))}


def summarise_av(cases: Sequence[dict]) -> dict:
    """Mean and std over images of the weighted figures and of each class's figures."""
    summary = {"weighted": {m: describe([c["weighted"][m] for c in cases]) for m in AV_METRICS}, "per_class": {}}
    if cases:
        for name in cases[0]["per_class"]:
            summary["per_class"][name] = {m: describe([c["per_class"][name][m] for c in cases]) for m in AV_METRICS}
    return summary
