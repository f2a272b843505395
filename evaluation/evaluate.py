"""Evaluation of nnU-Net prediction folders: cases matched by file name, read with nnU-Net's own reader.

Works on a plain `nnUNetv2_predict` output folder (predicted segmentations, optionally `CASE.npz` probabilities from
`--save_probabilities`) and on a trained model's cross-validation output (`fold_*/validation/`), against a reference
folder (labelsTr/labelsTs of the raw data set, or `gt_segmentations` of the preprocessed one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_ext.evaluation.av_protocol import AV_CLASSES, av_protocol_case
from nnunet_ext.evaluation.detection import lesion_detection
from nnunet_ext.evaluation.metrics import (
    LabelOrRegion,
    overlap_metrics,
    probability_metrics,
    region_mask,
    surface_metrics,
)
from nnunet_ext.evaluation.reading import (
    check_label_values,
    check_same_grid,
    read_label_map,
    read_probabilities,
)

FOV_ENDINGS = (".png", ".gif", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class EvaluationSettings:
    """What to compute. `classes` None means the data set's foreground labels, or its regions if it has regions;
    `extra_regions` are added to them (e.g. (1, 2) for "tumour core" in a label-based data set)."""
    classes: list[LabelOrRegion] | None = None
    extra_regions: list[tuple[int, ...]] = field(default_factory=list)
    surface: bool = True
    nsd_tolerance_mm: float = 1.0
    nsd_method: str = "voxel"
    empty_distance: float | None = None
    probabilities: bool = True
    lesion_classes: list[LabelOrRegion] = field(default_factory=list)
    iou_threshold: float = 0.1
    size_bins: tuple[float, ...] | None = None
    av: bool = False
    av_classes: dict[str, int] = field(default_factory=lambda: dict(AV_CLASSES))
    fov_dir: str | None = None
    small_fraction: float = 0.01
    small_threshold: float | None = None
    # a reference case without a prediction is an error unless this is set (then the others are scored)
    allow_missing: bool = False
    # reference and prediction must share spacing, origin and direction unless this is set
    ignore_geometry: bool = False

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class CasePair:
    case: str
    reference: str
    prediction: str
    fold: int | None = None

    @property
    def probabilities(self) -> str | None:
        candidate = _strip_ending(self.prediction) + ".npz"
        return candidate if os.path.isfile(candidate) else None


@dataclass
class DatasetInfo:
    """What the evaluation needs from dataset.json."""
    file_ending: str
    classes: list[LabelOrRegion]
    names: dict[str, str]
    ignore_label: int | None
    has_regions: bool
    reader_writer: type
    allowed_labels: tuple[int, ...] = ()
    num_channels: int = 0
    path: str | None = None

    def channel(self, label_or_region: LabelOrRegion) -> int | None:
        """The channel of nnU-Net's saved probabilities holding this label or region (None if it has none)."""
        if self.has_regions:
            return self.classes.index(label_or_region) if label_or_region in self.classes else None
        if isinstance(label_or_region, int) and (not self.num_channels or label_or_region < self.num_channels):
            return label_or_region
        return None

    def check_classes(self, settings: EvaluationSettings) -> None:
        """Labels named in the settings (--classes, --regions, --lesions, --av-classes) must be labels of the data
        set: a typo would otherwise score an empty class."""
        named = [*(settings.classes or []), *settings.extra_regions, *settings.lesion_classes]
        if settings.av:
            named += list(settings.av_classes.values())
        labels = {int(v) for c in named for v in (c if isinstance(c, (tuple, list)) else [c])}
        unknown = sorted(labels - set(self.allowed_labels)) if self.allowed_labels else []
        if unknown:
            raise ValueError(f"{self.path or 'dataset.json'}: has no label {', '.join(map(str, unknown))} (labels "
                             f"{list(self.allowed_labels)}); check --classes, --regions, --lesions and --av-classes")


def class_key(label_or_region: LabelOrRegion) -> str:
    """The string nnU-Net's summary.json uses for a label ("1") or region ("(1, 2)")."""
    if isinstance(label_or_region, int):
        return str(label_or_region)
    return str(tuple(int(i) for i in label_or_region))


def _as_label_or_region(value) -> LabelOrRegion:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 1 else tuple(int(v) for v in value)
    return int(value)


def _strip_ending(path: str, file_ending: str | None = None) -> str:
    if file_ending and path.endswith(file_ending):
        return path[: -len(file_ending)]
    # .nii.gz and friends: take off everything after the first dot of the file name
    head, name = os.path.split(path)
    return os.path.join(head, name.split(".")[0])


def load_dataset_info(dataset_json: str | Mapping, example_file: str | None = None) -> DatasetInfo:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    path = None
    if not isinstance(dataset_json, Mapping):
        path = str(dataset_json)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: dataset.json not found")
        try:
            with open(path) as f:
                dataset_json = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    where = path or "dataset.json"
    missing = [k for k in ("labels", "file_ending") if k not in dataset_json]
    if missing:
        raise ValueError(f"{where}: no {' or '.join(repr(k) for k in missing)} entry")
    try:
        manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
        classes = [_as_label_or_region(c) for c in
                   (manager.foreground_regions if manager.has_regions else manager.foreground_labels)]
        allowed = sorted({int(v) for value in dataset_json["labels"].values()
                          for v in (value if isinstance(value, (list, tuple)) else [value])})
        reader_writer = determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
    except Exception as e:  # nnU-Net asserts and raises RuntimeError on labels or endings it cannot handle
        raise ValueError(f"{where}: not usable by nnU-Net ({type(e).__name__}: {e})") from e
    names = {class_key(_as_label_or_region(v)): k for k, v in dataset_json["labels"].items()
             if k not in ("background", "ignore")}
    return DatasetInfo(dataset_json["file_ending"], classes, names, manager.ignore_label, manager.has_regions,
                       reader_writer, tuple(allowed), manager.num_segmentation_heads, path)


def find_dataset_json(*candidates: str | os.PathLike | None) -> str:
    """The first dataset.json among folders (nnUNetv2_predict copies it into its output folder; a model folder and
    nnU-Net's raw/preprocessed data set folders hold one)."""
    for folder in candidates:
        if folder is not None and os.path.isfile(os.path.join(folder, "dataset.json")):
            return os.path.join(folder, "dataset.json")
    raise FileNotFoundError("no dataset.json found in " + ", ".join(str(c) for c in candidates if c is not None)
                            + "; pass it explicitly")


def require_folder(path: str | os.PathLike | None, what: str) -> None:
    """A typo in a folder argument is named as such, not as a missing file or dataset.json further down."""
    if path is None:
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: {what} folder not found")
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a folder (expected the {what} folder)")


def require_output_folder(path: str | os.PathLike) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path}: exists and is not a folder (-o names the output folder)")


def _listing(names: Sequence[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def reference_cases(reference_dir: str, file_ending: str) -> list[str]:
    names = [f for f in os.listdir(reference_dir) if f.endswith(file_ending) and not f.startswith(".")]
    return sorted(f[: -len(file_ending)] for f in names if os.path.isfile(os.path.join(reference_dir, f)))


def pair_cases(reference_dir: str, prediction_dir: str, file_ending: str, fold: int | None = None
               ) -> list[CasePair]:
    """Every prediction in a folder with its reference; a prediction without reference is an error."""
    # hidden files are macOS resource forks (._CASE.nii.gz) or our own staging folders, never cases
    predictions = sorted(f for f in os.listdir(prediction_dir) if f.endswith(file_ending) and not f.startswith("."))
    if not predictions:
        raise FileNotFoundError(f"{prediction_dir}: no *{file_ending} predictions")
    missing = [f for f in predictions if not os.path.isfile(os.path.join(reference_dir, f))]
    if missing:
        raise FileNotFoundError(f"{prediction_dir}: {len(missing)} predictions have no reference in {reference_dir}: "
                                f"{_listing(missing)}")
    return [CasePair(f[: -len(file_ending)], os.path.join(reference_dir, f), os.path.join(prediction_dir, f), fold)
            for f in predictions]


def missing_predictions(pairs: Sequence[CasePair], expected: Sequence[str], where: str, reference_dir: str,
                        allow_missing: bool) -> list[str]:
    """Reference cases without a prediction: an error (as nnU-Net's evaluation without -chill), or with
    allow_missing the list to report."""
    present = {p.case for p in pairs}
    missing = sorted(set(expected) - present)
    if missing and not allow_missing:
        raise FileNotFoundError(f"{where}: no prediction for {len(missing)} of {len(expected)} reference cases in "
                                f"{reference_dir}: {_listing(missing)} (--allow-missing scores the others)")
    return missing


def _splits_file(model_dir: str, reference_dir: str) -> str | None:
    """nnU-Net's splits_final.json of a model's data set: beside gt_segmentations, or in nnUNet_preprocessed under
    the data set name of the model folder (nnUNet_results/DatasetNNN_X/Trainer__Plans__config)."""
    candidates = [Path(reference_dir).absolute().parent / "splits_final.json"]
    dataset = Path(model_dir).absolute().parent.name
    if os.environ.get("nnUNet_preprocessed") and dataset.startswith("Dataset"):
        candidates.append(Path(os.environ["nnUNet_preprocessed"]) / dataset / "splits_final.json")
    return next((str(c) for c in candidates if c.is_file()), None)


def cross_validation_pairs(model_dir: str, reference_dir: str, file_ending: str,
                           folds: Iterable[int] | None = None, allow_missing: bool = False
                           ) -> tuple[list[CasePair], list[str]]:
    """The validation predictions of nnU-Net's folds (`fold_X/validation/`), each case tagged with its fold, and the
    validation cases without a prediction (checked against splits_final.json when one is found)."""
    found = sorted(int(d.split("_")[1]) for d in os.listdir(model_dir)
                   if d.startswith("fold_") and d.split("_")[1].isdigit()
                   and os.path.isdir(os.path.join(model_dir, d, "validation")))
    folds = found if folds is None else list(folds)
    absent = [f for f in folds if f not in found]
    if absent or not folds:
        raise FileNotFoundError(f"{model_dir}: no fold_X/validation for folds {absent or 'any'}")
    pairs = []
    for fold in folds:
        pairs += pair_cases(reference_dir, os.path.join(model_dir, f"fold_{fold}", "validation"), file_ending, fold)
    missing = []
    splits_file = _splits_file(model_dir, reference_dir)
    if splits_file is not None:
        try:
            with open(splits_file) as f:
                splits = json.load(f)
            expected = [case for fold in folds if fold < len(splits) for case in splits[fold]["val"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{splits_file}: not nnU-Net's split list ({type(e).__name__}: {e})") from e
        missing = missing_predictions(pairs, expected, f"{model_dir} (folds {folds}, split {splits_file})",
                                      reference_dir, allow_missing)
    return pairs, missing


def read_segmentation(reader_writer: type, path: str) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Label map without nnU-Net's channel axis and without singleton spatial axes, its spacing, and the spacing
    as stored (needed to squeeze probability arrays the same way). Broken files raise ValueError naming them."""
    label_map = read_label_map(reader_writer, path)
    return label_map.array, label_map.spacing, label_map.stored_spacing


def read_fov(fov_dir: str, case: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """The field-of-view mask CASE.png (or another 2D ending) as booleans; must have `shape` when given."""
    for ending in FOV_ENDINGS:
        path = os.path.join(fov_dir, case + ending)
        if os.path.isfile(path):
            from PIL import Image

            try:
                with Image.open(path) as im:
                    mask = np.asarray(im)
            except Exception as e:  # PIL raises many types for truncated or foreign files
                raise ValueError(f"{path}: unreadable or corrupt field-of-view mask ({type(e).__name__}: {e})") from e
            mask = (mask.max(axis=-1) if mask.ndim == 3 else mask) > 0
            if shape is not None and mask.shape != tuple(shape):
                raise ValueError(f"{path}: field-of-view mask of shape {mask.shape}, the reference is {tuple(shape)}")
            return mask
    raise FileNotFoundError(f"{fov_dir}: no field-of-view mask {case}{{{','.join(FOV_ENDINGS)}}}")


def class_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                  classes: Sequence[LabelOrRegion], settings: EvaluationSettings | None = None,
                  ignore: np.ndarray | None = None, probabilities: np.ndarray | None = None,
                  channel_of=lambda c: c if isinstance(c, int) else None) -> list[dict]:
    """One record per label/region of two label maps: overlap, surface (unless settings.surface is off) and, given
    (C, *spatial) probabilities, probability metrics of channel `channel_of(class)`. Voxels where `ignore` is True
    count for neither side. Volumes are in mm^3 (mm^2 for 2D)."""
    settings = settings or EvaluationSettings()
    keep = ~ignore if ignore is not None else np.ones(reference.shape, dtype=bool)
    voxel = float(np.prod(spacing))
    rows = []
    for c in classes:
        ref_mask, pred_mask = region_mask(reference, c), region_mask(prediction, c)
        if ignore is not None:
            ref_mask &= keep
            pred_mask &= keep
        row = {"key": class_key(c), **overlap_metrics(ref_mask, pred_mask, ignore)}
        if settings.surface:
            row.update(surface_metrics(ref_mask, pred_mask, spacing, settings.nsd_tolerance_mm,
                                       settings.empty_distance, settings.nsd_method))
        channel = channel_of(c)
        if settings.probabilities and probabilities is not None and channel is not None:
            row.update(probability_metrics(ref_mask[keep], probabilities[channel][keep]))
        row["ref_volume"] = int(ref_mask.sum()) * voxel
        row["pred_volume"] = int(pred_mask.sum()) * voxel
        rows.append(row)
    return rows


def evaluate_case(pair: CasePair, info: DatasetInfo, settings: EvaluationSettings) -> dict:
    """All metrics of one case: `rows` (one per class), `detection` (per lesion class), `av` (or None)."""
    reference_map = read_label_map(info.reader_writer, pair.reference)
    prediction_map = read_label_map(info.reader_writer, pair.prediction)
    check_same_grid(reference_map, pair.reference, prediction_map, pair.prediction,
                    check_geometry=not settings.ignore_geometry)
    if info.allowed_labels:
        check_label_values(reference_map, pair.reference, info.allowed_labels, info.path)
        check_label_values(prediction_map, pair.prediction, info.allowed_labels, info.path)
    reference, prediction, spacing = reference_map.array, prediction_map.array, reference_map.spacing
    ignore = reference == info.ignore_label if info.ignore_label is not None else None
    keep = ~ignore if ignore is not None else np.ones(reference.shape, dtype=bool)
    voxel = float(np.prod(spacing))

    probabilities = None
    if (settings.probabilities or settings.av) and pair.probabilities is not None:
        probabilities = read_probabilities(pair.probabilities, reference_map.stored_spacing, reference_map.shape,
                                           info.num_channels, info.path)

    classes = list(settings.classes or info.classes) + [tuple(r) for r in settings.extra_regions]
    rows = [{"case": pair.case, "fold": pair.fold, "class": info.names.get(row["key"], row["key"]), **row}
            for row in class_metrics(reference, prediction, spacing, classes, settings, ignore, probabilities,
                                     info.channel)]

    detection = {}
    for c in settings.lesion_classes:
        name = info.names.get(class_key(c), class_key(c))
        detection[name] = lesion_detection(region_mask(reference, c) & keep, region_mask(prediction, c) & keep,
                                           spacing, settings.iou_threshold, settings.size_bins)

    av = None
    if settings.av:
        # the paper mode and the segment figures need the label map only; the probability mode needs CASE.npz
        fov = read_fov(settings.fov_dir, pair.case, reference.shape) if settings.fov_dir else None
        try:
            av = av_protocol_case(reference, prediction, probabilities, fov, settings.av_classes)
        except ValueError as e:
            raise ValueError(f"{pair.probabilities or pair.prediction}: {e}") from e

    return {"case": pair.case, "fold": pair.fold, "reference": pair.reference, "prediction": pair.prediction,
            "spacing": list(spacing), "shape": list(reference.shape),
            "foreground_volume": float(np.count_nonzero((reference > 0) & keep)) * voxel,
            "rows": rows, "detection": detection, "av": av}


def _evaluate_case_star(args):
    return evaluate_case(*args)


def evaluate_pairs(pairs: Sequence[CasePair], info: DatasetInfo, settings: EvaluationSettings,
                   num_processes: int = 1, progress: bool = True) -> list[dict]:
    jobs = [(p, info, settings) for p in pairs]
    if num_processes <= 1:
        return [evaluate_case(*j) for j in tqdm(jobs, desc="evaluating", disable=not progress)]
    with ProcessPoolExecutor(num_processes) as pool:
        return list(tqdm(pool.map(_evaluate_case_star, jobs), total=len(jobs), desc="evaluating",
                         disable=not progress))


def evaluate_folder(reference_dir: str, prediction_dir: str, output_dir: str | None = None,
                    dataset_json: str | None = None, settings: EvaluationSettings | None = None,
                    images_dir: str | None = None, num_processes: int = 1, plots: bool = True,
                    progress: bool = True) -> dict:
    """Evaluate a prediction folder; writes the report to output_dir (default: prediction_dir/evaluation) and returns
    the summary. Every reference case needs a prediction unless settings.allow_missing is set."""
    settings = settings or EvaluationSettings()
    require_folder(reference_dir, "reference")
    require_folder(prediction_dir, "prediction")
    _check_optional_folders(settings, images_dir)
    output_dir = output_dir or os.path.join(prediction_dir, "evaluation")
    require_output_folder(output_dir)
    dataset_json = dataset_json or find_dataset_json(prediction_dir, Path(reference_dir).parent, reference_dir)
    info = load_dataset_info(dataset_json)
    info.check_classes(settings)
    pairs = pair_cases(reference_dir, prediction_dir, info.file_ending)
    missing = missing_predictions(pairs, reference_cases(reference_dir, info.file_ending), prediction_dir,
                                  reference_dir, settings.allow_missing)
    return _evaluate_and_report(pairs, missing, info, settings, output_dir, images_dir, num_processes, plots,
                                progress)


def evaluate_cross_validation(model_dir: str, reference_dir: str, output_dir: str | None = None,
                              folds: Iterable[int] | None = None, dataset_json: str | None = None,
                              settings: EvaluationSettings | None = None, images_dir: str | None = None,
                              num_processes: int = 1, plots: bool = True, progress: bool = True) -> dict:
    """Evaluate the pooled validation predictions of a model's folds (output_dir default: model_dir/evaluation)."""
    settings = settings or EvaluationSettings()
    require_folder(model_dir, "model")
    require_folder(reference_dir, "reference")
    _check_optional_folders(settings, images_dir)
    output_dir = output_dir or os.path.join(model_dir, "evaluation")
    require_output_folder(output_dir)
    dataset_json = dataset_json or find_dataset_json(model_dir, Path(reference_dir).parent)
    info = load_dataset_info(dataset_json)
    info.check_classes(settings)
    pairs, missing = cross_validation_pairs(model_dir, reference_dir, info.file_ending, folds, settings.allow_missing)
    return _evaluate_and_report(pairs, missing, info, settings, output_dir, images_dir, num_processes, plots,
                                progress)


def _check_optional_folders(settings: EvaluationSettings, images_dir: str | None) -> None:
    require_folder(images_dir, "image")
    require_folder(settings.fov_dir, "field-of-view mask")


def _evaluate_and_report(pairs, missing, info, settings, output_dir, images_dir, num_processes, plots,
                         progress) -> dict:
    from nnunet_ext.evaluation.report import summarise, write_report
    from nnunet_ext.fileio import atomic_files_into

    results = evaluate_pairs(pairs, info, settings, num_processes, progress)
    summary = summarise(results, settings)
    summary["missing_predictions"] = list(missing)
    # written beside and moved in at the end: a failure (a plot, a full disk) leaves output_dir as it was
    with atomic_files_into(Path(output_dir)) as staging:
        write_report(results, summary, str(staging), info=info, images_dir=images_dir, plots=plots)
    return summary
