"""Evaluation speed and agreement on a CT-sized case (512 x 512 x 300 voxels), against MONAI and medpy in the same run.

The case has three organs of very different size (an ellipsoid of about a liver's volume, a kidney-sized one and a
small one) and a prediction that is shifted and rough-edged, so every surface is evaluated in full. Timed:
- `nnunet_ext evaluate` end to end (`evaluate_folder`: reading both NIfTI files with every check, overlap + HD95 +
  ASSD + NSD for the three classes, the report without plots), and the metrics alone from arrays (`class_metrics`);
- the HD95 of the three classes by MONAI (`compute_hausdorff_distance`, percentile 95: the larger directed 95th
  percentile, our convention) and by medpy (`medpy.metric.binary.hd95`: the 95th percentile of both directions
  pooled), on the same masks; ours in medpy's convention (pooled) is timed too, for a like-for-like ratio.
Agreement: our HD95 against MONAI's, our pooled HD95 against medpy's, our ASSD and NSD (voxel and surface methods)
against MONAI's symmetric ASD and surface Dice (use_subvoxels False / True).

Writes bench/results/evaluation/evaluation.json (all numbers) and targets.json ([{target, measured, goal, met}]) and
prints a markdown summary. MONAI and medpy come from the optional extra `bench` (pip install -e ".[bench]"); a
missing one is reported as such and left out.

    python bench/evaluation/bench_evaluation.py [--repeats 2] [--shape 300 512 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from nnunet_ext.benchmark import write_targets
from nnunet_ext.evaluation.evaluate import EvaluationSettings, class_metrics, evaluate_folder
from nnunet_ext.evaluation.metrics import surface_distances

RESULTS = Path(__file__).resolve().parents[1] / "results" / "evaluation"
WORK = Path(__file__).resolve().parents[1] / "work" / "evaluation"
# (centre as a fraction of the shape, semi-axes in mm) for label 1, 2, 3
ORGANS = {1: ((0.5, 0.4, 0.35), (90.0, 110.0, 95.0)),
          2: ((0.5, 0.55, 0.7), (45.0, 30.0, 30.0)),
          3: ((0.4, 0.7, 0.4), (8.0, 6.0, 5.0))}
SPEEDUP_GOAL = 5.0
AGREEMENT_GOAL_MM = 1e-4


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


def timed(fn, repeats: int):
    """The function's result and its fastest wall time over `repeats` runs."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def write_folders(reference, prediction, spacing, work: Path) -> tuple[Path, Path]:
    """labelsTs + dataset.json and a prediction folder, as NIfTI (SimpleITK: x y z spacing)."""
    import SimpleITK as sitk

    if work.exists():
        shutil.rmtree(work)
    ref_dir, pred_dir = work / "Dataset999_Bench" / "labelsTs", work / "pred"
    ref_dir.mkdir(parents=True)
    pred_dir.mkdir()
    for folder, array in ((ref_dir, reference), (pred_dir, prediction)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        sitk.WriteImage(image, str(folder / "case.nii.gz"), useCompression=True)
    labels = {"background": 0, **{f"organ{k}": k for k in ORGANS}}
    (ref_dir.parent / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                             "numTraining": 0, "file_ending": ".nii.gz"}))
    return ref_dir, pred_dir


def monai_metrics(reference, prediction, spacing, classes, tolerance, repeats):
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    def pair(c):
        return (torch.from_numpy(prediction == c)[None, None], torch.from_numpy(reference == c)[None, None])

    def hd95_all():
        return {c: float(compute_hausdorff_distance(*pair(c), include_background=True, percentile=95,
                                                    spacing=spacing)[0, 0]) for c in classes}

    hd95, seconds = timed(hd95_all, repeats)
    out = {"hd95": hd95, "hd95_seconds": seconds, "assd": {}, "nsd_voxel": {}, "nsd_surface": {}}
    for c in classes:
        pred, ref = pair(c)
        out["assd"][c] = float(compute_average_surface_distance(pred, ref, include_background=True, symmetric=True,
                                                                spacing=spacing)[0, 0])
        # surface Dice wants one-hot input with a background channel, which it then leaves out
        one_hot = [torch.cat([~m, m], dim=1) for m in (pred, ref)]
        for method, subvoxels in (("nsd_voxel", False), ("nsd_surface", True)):
            out[method][c] = float(compute_surface_dice(*one_hot, [tolerance], spacing=spacing,
                                                        use_subvoxels=subvoxels)[0, 0])
    return out


def medpy_hd95(reference, prediction, spacing, classes):
    from medpy.metric.binary import hd95

    start = time.perf_counter()
    values = {c: float(hd95(prediction == c, reference == c, voxelspacing=spacing)) for c in classes}
    return values, time.perf_counter() - start


def ours_pooled_hd95(reference, prediction, spacing, classes):
    """HD95 in medpy's convention (both directions pooled) from our surface distances."""
    out = {}
    for c in classes:
        to_pred, to_ref = surface_distances(reference == c, prediction == c, spacing)
        out[c] = float(np.percentile(np.concatenate([to_pred, to_ref]), 95))
    return out


def max_difference(a: dict, b: dict) -> float:
    return float(max(abs(a[k] - b[k]) for k in a))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="z y x voxels")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8], help="z y x mm")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each timed step (fastest kept); medpy once")
    parser.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="monai")

    shape, spacing = tuple(args.shape), tuple(args.spacing)
    # imported before any timing, as for MONAI and medpy: the one-time import is not part of a case's cost
    import nnunetv2.imageio.reader_writer_registry  # noqa: F401
    import nnunetv2.utilities.label_handling.label_handling  # noqa: F401

    load_before = os.getloadavg()
    reference, prediction = make_case(shape, spacing)
    classes = sorted(ORGANS)
    settings = EvaluationSettings(nsd_tolerance_mm=args.tolerance)
    rows, array_seconds = timed(lambda: class_metrics(reference, prediction, spacing, classes, settings),
                                args.repeats)
    surface_rows, surface_seconds = timed(lambda: class_metrics(
        reference, prediction, spacing, classes, EvaluationSettings(nsd_tolerance_mm=args.tolerance,
                                                                    nsd_method="surface")), args.repeats)
    _, overlap_seconds = timed(lambda: class_metrics(reference, prediction, spacing, classes,
                                                     EvaluationSettings(surface=False)), args.repeats)
    ref_dir, pred_dir = write_folders(reference, prediction, spacing, WORK)
    summary, folder_seconds = timed(lambda: evaluate_folder(str(ref_dir), str(pred_dir), str(WORK / "eval"),
                                                            settings=settings, plots=False, progress=False),
                                    args.repeats)
    pooled, pooled_seconds = timed(lambda: ours_pooled_hd95(reference, prediction, spacing, classes), args.repeats)

    ours = {m: {r["key"]: r[m] for r in rows} for m in ("dice", "hd95", "assd", "nsd")}
    ours["nsd_surface"] = {r["key"]: r["nsd"] for r in surface_rows}
    from_files = {r: summary["per_class"][f"organ{r}"]["hd95"]["mean"] for r in ours["hd95"]}
    result = {
        "benchmark": "evaluation of one 3D case (3 classes, overlap + HD95/ASSD/NSD) vs MONAI and medpy",
        "shape_zyx": list(shape), "spacing_zyx_mm": list(spacing), "nsd_tolerance_mm": args.tolerance,
        "organ_voxels": {r["key"]: int(r["ref_volume"] / np.prod(spacing) + 0.5) for r in rows},
        "seconds": {"evaluate_folder_files": folder_seconds, "class_metrics_arrays": array_seconds,
                    "class_metrics_arrays_nsd_surface": surface_seconds, "overlap_only": overlap_seconds,
                    "ours_hd95_medpy_convention": pooled_seconds},
        "ours": {**ours, "hd95_medpy_convention": {str(c): v for c, v in pooled.items()}},
        # NIfTI stores the spacing as float32: distances from the files differ in the last digits
        "files_vs_arrays_hd95_max_abs_difference": max_difference(from_files, ours["hd95"]),
        "repeats": args.repeats, "unavailable": [],
    }
    keys = {c: str(c) for c in classes}
    targets = []
    if importlib.util.find_spec("monai") is not None:
        monai = monai_metrics(reference, prediction, spacing, classes, args.tolerance, args.repeats)
        result["monai"] = {m: ({keys[c]: v for c, v in monai[m].items()} if isinstance(monai[m], dict) else monai[m])
                           for m in monai}
        result["seconds"]["monai_hd95"] = monai["hd95_seconds"]
        diffs = {m: max_difference(result["monai"][m], ours[o]) for m, o in
                 (("hd95", "hd95"), ("assd", "assd"), ("nsd_voxel", "nsd"), ("nsd_surface", "nsd_surface"))}
        result["max_abs_difference_vs_monai"] = diffs
        result["speedup_vs_monai_hd95"] = monai["hd95_seconds"] / folder_seconds
        targets.append({"target": "HD95 equals MONAI's (max |difference| over the 3 classes, mm)",
                        "measured": diffs["hd95"], "goal": f"<= {AGREEMENT_GOAL_MM:g}",
                        "met": diffs["hd95"] <= AGREEMENT_GOAL_MM})
        targets.append({"target": "NSD (--nsd-method surface) equals MONAI's surface Dice with use_subvoxels=True "
                                  "(max |difference|)", "measured": diffs["nsd_surface"],
                        "goal": f"<= {AGREEMENT_GOAL_MM:g}", "met": diffs["nsd_surface"] <= AGREEMENT_GOAL_MM})
    else:
        result["unavailable"].append("monai (not installed)")
    if importlib.util.find_spec("medpy") is not None:
        medpy, medpy_seconds = medpy_hd95(reference, prediction, spacing, classes)
        result["medpy"] = {"hd95": {keys[c]: v for c, v in medpy.items()}}
        result["seconds"]["medpy_hd95"] = medpy_seconds
        difference = max_difference(result["medpy"]["hd95"], result["ours"]["hd95_medpy_convention"])
        result["max_abs_difference_vs_medpy_hd95"] = difference
        result["speedup_vs_medpy"] = {"evaluate_folder": medpy_seconds / folder_seconds,
                                      "same_quantity": medpy_seconds / pooled_seconds}
        targets.append({"target": "nnunet_ext evaluate (files, 3 classes, all metrics) faster than medpy's hd95 "
                                  "alone on the same masks (times)",
                        "measured": result["speedup_vs_medpy"]["evaluate_folder"], "goal": f">= {SPEEDUP_GOAL:g}",
                        "met": result["speedup_vs_medpy"]["evaluate_folder"] >= SPEEDUP_GOAL})
        targets.append({"target": "our HD95 in medpy's convention (pooled) equals medpy's hd95 (max |difference|, mm)",
                        "measured": difference, "goal": f"<= {AGREEMENT_GOAL_MM:g}",
                        "met": difference <= AGREEMENT_GOAL_MM})
    else:
        result["unavailable"].append("medpy (not installed)")
    result["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python " \
                        f"{platform.python_version()}"

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    write_targets(args.out / "targets.json", targets, indent=2)
    shutil.rmtree(WORK)
    seconds = {k: f"{v:.2f} s" for k, v in result["seconds"].items()}
    print(f"| evaluate, {'x'.join(map(str, shape))} case, 3 classes | {seconds['evaluate_folder_files']} "
          f"(metrics from arrays {seconds['class_metrics_arrays']}) | MONAI HD95 {seconds.get('monai_hd95', '-')} | "
          f"medpy HD95 {seconds.get('medpy_hd95', '-')} |")
    for t in targets:
        print(f"- {t['target']}: {t['measured']:.4g} (goal {t['goal']}) {'met' if t['met'] else 'NOT met'}")
    return result


if __name__ == "__main__":
    main()
