"""Choosing the heatmap peak threshold on validation cases.

Which threshold pastes SOS where it helps depends on how confident the trained SOL head came out, and the spec's 0.6 is
a number from the original's data and budget: on the hn3d bench (2d, 3000 iterations) the chiasm's whole-case Dice on
nnU-Net's fold-0 validation cases was 0.65 / 0.77 / 0.89 at thresholds 0.6 / 0.45 / 0.3 for one seed and 0 / 0.66 /
0.79 for the other (mirroring on, as nnUNetv2_predict runs). So the trainer predicts its validation cases once per
candidate after training, as nnUNetv2_predict would (sliding window, mirroring), and keeps the threshold with the best
small-organ Dice; the held-out cases are never seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from nnunet_ext.evaluation.metrics import overlap_metrics


def organ_dice(prediction: np.ndarray, reference: np.ndarray, labels: Iterable[int]) -> list[float]:
    """Dice per label where the reference or the prediction has it (a label both lack says nothing about the
    threshold: no paste, or a paste that correctly came out empty); voxels outside the body (reference < 0, nnU-Net's
    marking) are ignored."""
    outside = reference < 0
    scores = []
    for lab in labels:
        metrics = overlap_metrics(reference == lab, prediction == lab, ignore=outside)
        if metrics["tp"] + metrics["fp"] + metrics["fn"]:
            scores.append(metrics["dice"])
    return scores


def choose_threshold(scores: Mapping[float, Sequence[float]], default: float) -> tuple[float, dict[float, float]]:
    """The candidate with the highest mean Dice over (case, organ) pairs, and the means. Ties (to 1e-4) go to
    `default`, then to the higher threshold, which pastes less; no scores at all keep `default`."""
    means = {float(t): float(np.mean(v)) for t, v in scores.items() if len(v)}
    if not means:
        return float(default), {}
    best = max(means, key=lambda t: (round(means[t], 4), t == float(default), t))
    return best, means
