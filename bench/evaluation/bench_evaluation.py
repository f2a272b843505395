"""Seconds per 3D case of the evaluation on a CT-sized volume (512 x 512 x 300 voxels).

The case has three organs of very different size (an ellipsoid of about a liver's volume, a kidney-sized one and a
small one) and a prediction that is shifted and rough-edged, so every surface is evaluated in full. Timed: overlap
and surface metrics of all three classes from arrays (`class_metrics`), i.e. what `nnunet_ext evaluate` computes per
case apart from reading files; surface metrics dominate. Writes bench/results/evaluation/evaluation.json and prints a
markdown line.

    python bench/evaluation/bench_evaluation.py [--repeats 2] [--shape 300 512 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from nnunet_ext.evaluation.evaluate import EvaluationSettings, class_metrics

RESULTS = Path(__file__).resolve().parents[1] / "results" / "evaluation" / "evaluation.json"
# (centre as a fraction of the shape, semi-axes in mm) for label 1, 2, 3
ORGANS = {1: ((0.5, 0.4, 0.35), (90.0, 110.0, 95.0)),
          2: ((0.5, 0.55, 0.7), (45.0, 30.0, 30.0)),
          3: ((0.4, 0.7, 0.4), (8.0, 6.0, 5.0))}


def ellipsoid(shape, spacing, centre, semi_axes, offset=(0, 0, 0), roughness=None) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((g - c * s - o) * sp / a) ** 2 for g, c, s, o, sp, a in zip(grids, centre, shape, offset, spacing,
                                                                           semi_axes, strict=True))
    if roughness is not None:
        r2 = r2 + roughness
    return r2 <= 1.0


def make_case(shape, spacing, seed=0):
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, dtype=np.uint8)
    prediction = np.zeros(shape, dtype=np.uint8)
    # low-frequency noise on the boundary: the prediction's surface is everywhere a little off
    coarse = rng.normal(0, 0.08, tuple(max(2, s // 16) for s in shape))
    roughness = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)[
        tuple(slice(0, s) for s in shape)]
    for label, (centre, axes) in ORGANS.items():
        reference[ellipsoid(shape, spacing, centre, axes)] = label
        prediction[ellipsoid(shape, spacing, centre, axes, offset=(1, 2, -2), roughness=roughness)] = label
    return reference, prediction


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="z y x voxels")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8], help="z y x mm")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    reference, prediction = make_case(shape, spacing)
    classes = sorted(ORGANS)
    timings = {"overlap": [], "all": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        class_metrics(reference, prediction, spacing, classes, EvaluationSettings(surface=False))
        timings["overlap"].append(time.perf_counter() - start)
        start = time.perf_counter()
        rows = class_metrics(reference, prediction, spacing, classes, EvaluationSettings())
        timings["all"].append(time.perf_counter() - start)
    seconds = min(timings["all"])
    result = {
        "benchmark": "evaluation seconds per 3D case (overlap + HD95/ASSD/NSD, 3 classes, from arrays)",
        "shape_zyx": list(shape), "spacing_zyx_mm": list(spacing),
        "organ_voxels": {str(r["key"]): int(r["ref_volume"] / np.prod(spacing) + 0.5) for r in rows},
        "seconds_per_case": round(seconds, 3), "overlap_only_seconds": round(min(timings["overlap"]), 3),
        "repeats": args.repeats, "dice": {str(r["key"]): round(r["dice"], 4) for r in rows},
        "hd95_mm": {str(r["key"]): round(r["hd95"], 3) for r in rows},
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| evaluation, {shape[0]}x{shape[1]}x{shape[2]} case, 3 classes | {seconds:.2f} s per case "
          f"(overlap only {result['overlap_only_seconds']:.2f} s) |")
    return result


if __name__ == "__main__":
    main()
