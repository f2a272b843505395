"""`nnunet_ext evaluate` and `nnunet_ext compare`; the heavy imports wait until a command runs."""

from __future__ import annotations

import argparse
import sys


def _label_or_region(text: str):
    """"2" -> 2, "1,2" -> (1, 2)."""
    parts = [int(p) for p in text.replace(" ", "").strip("()").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError(f"not a label or region: {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _empty_distance(text: str) -> float | None:
    if text == "diagonal":
        return None
    return float(text)  # "nan" gives NaN


def _av_classes(text: str) -> dict[str, int]:
    try:
        return {name: int(k) for name, k in (item.split("=") for item in text.split(","))}
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected name=label,... (e.g. artery=1,vein=2), got {text!r}") from e


def _fail(command: str, error: Exception) -> int:
    """Missing files and inconsistent inputs are the user's to fix: one line, not a traceback."""
    print(f"nnunet_ext {command}: error: {error}", file=sys.stderr)
    return 2


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nnunet_ext.evaluation.evaluate import EvaluationSettings, evaluate_cross_validation, evaluate_folder
    from nnunet_ext.evaluation.report import summary_markdown

    settings = EvaluationSettings(
        classes=args.classes, extra_regions=args.regions or [], surface=not args.no_surface,
        nsd_tolerance_mm=args.nsd_tolerance, nsd_method=args.nsd_method, empty_distance=args.empty_distance,
        probabilities=not args.no_probabilities, lesion_classes=args.lesions or [], iou_threshold=args.iou_threshold,
        size_bins=tuple(args.size_bins) if args.size_bins else None, av=args.av, fov_dir=args.fov,
        small_fraction=args.small_fraction, small_threshold=args.small_threshold, allow_missing=args.allow_missing,
        ignore_geometry=args.ignore_geometry)
    if args.av_classes:
        settings.av_classes = args.av_classes
    common = dict(dataset_json=args.djfile, settings=settings, images_dir=args.images, num_processes=args.np,
                  plots=not args.no_plots)
    try:
        if args.cv:
            summary = evaluate_cross_validation(args.cv, args.ref, args.o, folds=args.folds, **common)
        else:
            summary = evaluate_folder(args.ref, args.pred, args.o, **common)
    except (OSError, ValueError) as e:
        return _fail("evaluate", e)
    print(summary_markdown(summary))
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics, tables and plots for an nnU-Net prediction folder or cross-validation",
        description="Evaluate predictions against references: per class Dice, IoU, sensitivity, specificity, "
                    "precision, accuracy, HD95, ASSD, NSD (mm), AUC-ROC/AUC-PR/MSE from --save_probabilities "
                    "files; optionally lesion-wise detection and the artery/vein protocol. Writes per_case.csv, "
                    "summary.json, summary.md and PNG plots to -o.")
    p.add_argument("-ref", required=True, help="reference folder: labelsTr/labelsTs of the raw data set, or "
                                               "gt_segmentations of the preprocessed one")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-pred", help="prediction folder (nnUNetv2_predict output)")
    source.add_argument("--cv", metavar="MODEL_DIR", help="trained model folder: evaluate fold_*/validation")
    p.add_argument("-o", default=None, help="output folder (default: PRED/evaluation or MODEL_DIR/evaluation)")
    p.add_argument("-djfile", default=None, help="dataset.json (default: the one in -pred/--cv, else beside -ref)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="with --cv: these folds only")
    p.add_argument("--images", default=None, help="image folder (imagesTr/imagesTs) for the overlay plots")
    p.add_argument("--classes", type=_label_or_region, nargs="+", default=None,
                   help="labels/regions to evaluate, e.g. 1 2 1,2 (default: all foreground labels or regions)")
    p.add_argument("--regions", type=_label_or_region, nargs="+", default=None,
                   help="extra regions on top of the classes, e.g. 1,2,3 for all foreground")
    p.add_argument("--no-surface", action="store_true", help="skip HD95/ASSD/NSD")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    p.add_argument("--nsd-method", choices=("voxel", "surface"), default="voxel",
                   help="NSD counts boundary voxels ('voxel', default: MONAI's compute_surface_dice) or weighs "
                        "boundary elements by their area ('surface': DeepMind's surface-distance, MONAI with "
                        "use_subvoxels=True)")
    p.add_argument("--empty-distance", type=_empty_distance, default=None,
                   help="HD95/ASSD when exactly one side is empty: 'diagonal' (default, the image diagonal in mm), "
                        "'nan', or a number in mm")
    p.add_argument("--no-probabilities", action="store_true", help="ignore CASE.npz probability files")
    p.add_argument("--lesions", type=_label_or_region, nargs="+", default=None,
                   help="labels/regions to score lesion-wise (connected components)")
    p.add_argument("--iou-threshold", type=float, default=0.1, help="IoU for a lesion to count as detected")
    p.add_argument("--size-bins", type=float, nargs="+", default=None,
                   help="lesion size bin edges in mm^3 (mm^2 for 2D), e.g. 0 524 4189 65450 inf")
    p.add_argument("--av", action="store_true",
                   help="artery/vein protocol of Zhou et al. 2021: the paper's mode (hard labels), intra-segment "
                        "misclassification, and the probability mode when CASE.npz exist (--save_probabilities)")
    p.add_argument("--fov", default=None, help="folder of field-of-view masks CASE.png (A/V protocol)")
    p.add_argument("--av-classes", type=_av_classes, default=None,
                   help="A/V classes as name=label,... (default artery=1,vein=2,uncertain=3)")
    p.add_argument("--small-fraction", type=float, default=0.01,
                   help="flag a class as small when its mean reference volume is below this fraction of the mean "
                        "foreground volume (default 0.01)")
    p.add_argument("--small-threshold", type=float, default=None, help="absolute small-class volume (mm^3)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score the cases that have a prediction when some reference cases have none (default: "
                        "refuse, naming them; nnU-Net's -chill)")
    p.add_argument("--ignore-geometry", action="store_true",
                   help="score a prediction whose spacing, origin or direction differ from its reference's (default: "
                        "refuse; metrics use the reference's spacing)")
    p.add_argument("-np", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_compare(args: argparse.Namespace) -> int:
    from nnunet_ext.evaluation.compare import compare_results, comparison_markdown

    try:
        result = compare_results(args.results, args.o, names=args.names, metrics=args.metrics,
                                 plots=not args.no_plots)
    except (OSError, ValueError) as e:
        return _fail("compare", e)
    print(comparison_markdown(result))
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="two or more evaluations side by side with paired Wilcoxon tests",
        description="Compare `nnunet_ext evaluate` output folders on their common cases: the first is the baseline; "
                    "per-case differences, wins/ties/losses and the Wilcoxon signed-rank p-value per class and "
                    "metric. Writes comparison_per_case.csv, comparison.json, comparison.md and box plots to -o.")
    p.add_argument("results", nargs="+", help="evaluation output folders (each with per_case.csv)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("--names", nargs="+", default=None, help="one name per folder (default: folder names)")
    p.add_argument("--metrics", nargs="+", default=["dice", "hd95", "nsd"], help="metrics to compare")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_compare)

