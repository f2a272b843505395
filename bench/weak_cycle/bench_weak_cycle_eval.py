"""Per-image Dice, Jaccard, sensitivity, specificity (%) of WeakCycle masks against full references.

    python bench/weak_cycle/bench_weak_cycle_eval.py REF_DIR PRED_DIR [PRED_DIR ...]

REF_DIR and PRED_DIR hold CASE.png label maps (0/1; the predictions' ignore label counts as background). Images
where both masks are empty score Dice/Jaccard 100, as in the paper's per-image means.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_ext.evaluation.metrics import overlap_metrics


def scores(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    m = overlap_metrics(reference == 1, prediction == 1)
    # the paper's per-image means count an undefined ratio (nothing to find, or no negatives) as 100
    return {name: 100 * (1.0 if math.isnan(m[key]) else m[key])
            for name, key in (("dice", "dice"), ("jaccard", "iou"), ("sensitivity", "sensitivity"),
                              ("specificity", "specificity"))}


def evaluate(reference_dir: Path, prediction_dir: Path, cases: list[str] | None = None) -> dict[str, float]:
    """Means over `cases` (names without .png), by default every reference in reference_dir."""
    references = sorted(reference_dir.glob("*.png")) if cases is None else [reference_dir / f"{c}.png" for c in cases]
    per_case = []
    for ref in references:
        pred = prediction_dir / ref.name
        if not pred.is_file():
            raise FileNotFoundError(f"{pred}: no prediction for reference {ref}")
        per_case.append(scores(np.asarray(Image.open(pred)), np.asarray(Image.open(ref))))
    return {k: round(float(np.mean([c[k] for c in per_case])), 1) for k in per_case[0]} | {"n": len(per_case)}


if __name__ == "__main__":
    reference = Path(sys.argv[1])
    print(json.dumps({p: evaluate(reference, Path(p)) for p in sys.argv[2:]}, indent=1))
