"""Per-image Dice, Jaccard, sensitivity, specificity (%) of WeakCycle masks against full references.

    python bench/bench_weak_cycle_eval.py REF_DIR PRED_DIR [PRED_DIR ...]

REF_DIR and PRED_DIR hold CASE.png label maps (0/1; the predictions' ignore label counts as background). Images
where both masks are empty score Dice/Jaccard 100, as in the paper's per-image means.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def scores(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    p, r = prediction == 1, reference == 1
    tp, fp, fn, tn = (p & r).sum(), (p & ~r).sum(), (~p & r).sum(), (~p & ~r).sum()
    return {"dice": 100 * (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0),
            "jaccard": 100 * (tp / (tp + fp + fn) if tp + fp + fn else 1.0),
            "sensitivity": 100 * (tp / (tp + fn) if tp + fn else 1.0),
            "specificity": 100 * (tn / (tn + fp) if tn + fp else 1.0)}


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
