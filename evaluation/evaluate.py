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
    squeeze_spatial,
    surface_metrics,
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

    def channel(self, label_or_region: LabelOrRegion) -> int | None:
        """The channel of nnU-Net's saved probabilities holding this label or region (None if it has none)."""
        if self.has_regions:
            return self.classes.index(label_or_region) if label_or_region in self.classes else None
        return label_or_region if isinstance(label_or_region, int) else None


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

    if not isinstance(dataset_json, Mapping):
        with open(dataset_json) as f:
            dataset_json = json.load(f)
    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    classes = [_as_label_or_region(c) for c in
               (manager.foreground_regions if manager.has_regions else manager.foreground_labels)]
    names = {class_key(_as_label_or_region(v)): k for k, v in dataset_json["labels"].items()
             if k not in ("background", "ignore")}
    reader_writer = determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
    return DatasetInfo(dataset_json["file_ending"], classes, names, manager.ignore_label, manager.has_regions,
                       reader_writer)


def find_dataset_json(*candidates: str | os.PathLike | None) -> str:
    """The first dataset.json among folders (nnUNetv2_predict copies it into its output folder; a model folder and
    nnU-Net's raw/preprocessed data set folders hold one)."""
    for folder in candidates:
        if folder is not None and os.path.isfile(os.path.join(folder, "dataset.json")):
            return os.path.join(folder, "dataset.json")
    raise FileNotFoundError("no dataset.json found in " + ", ".join(str(c) for c in candidates if c is not None)
                            + "; pass it explicitly")


def pair_cases(reference_dir: str, prediction_dir: str, file_ending: str, fold: int | None = None
               ) -> list[CasePair]:
    """Every prediction in a folder with its reference; a prediction without reference is an error."""
    predictions = sorted(f for f in os.listdir(prediction_dir) if f.endswith(file_ending))
    if not predictions:
        raise FileNotFoundError(f"no *{file_ending} predictions in {prediction_dir}")
    missing = [f for f in predictions if not os.path.isfile(os.path.join(reference_dir, f))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} predictions have no reference in {reference_dir}: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [CasePair(f[: -len(file_ending)], os.path.join(reference_dir, f), os.path.join(prediction_dir, f), fold)
            for f in predictions]


def cross_validation_pairs(model_dir: str, reference_dir: str, file_ending: str,
                           folds: Iterable[int] | None = None) -> list[CasePair]:
    """The validation predictions of nnU-Net's folds (`fold_X/validation/`), each case tagged with its fold."""
    found = sorted(int(d.split("_")[1]) for d in os.listdir(model_dir)
                   if d.startswith("fold_") and d.split("_")[1].isdigit()
                   and os.path.isdir(os.path.join(model_dir, d, "validation")))
    folds = found if folds is None else list(folds)
    absent = [f for f in folds if f not in found]
    if absent or not folds:
        raise FileNotFoundError(f"no fold_X/validation for folds {absent or 'any'} in {model_dir}")
    pairs = []
    for fold in folds:
        pairs += pair_cases(reference_dir, os.path.join(model_dir, f"fold_{fold}", "validation"), file_ending, fold)
    return pairs


def read_segmentation(reader_writer: type, path: str) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Label map without nnU-Net's channel axis and without singleton spatial axes, its spacing, and the spacing
    as stored (needed to squeeze probability arrays the same way)."""
    seg, props = reader_writer().read_seg(path)
    spacing = tuple(float(s) for s in props["spacing"])
    squeezed, squeezed_spacing = squeeze_spatial(seg[0], spacing)
    return squeezed, squeezed_spacing, spacing


def read_fov(fov_dir: str, case: str) -> np.ndarray:
    for ending in FOV_ENDINGS:
        path = os.path.join(fov_dir, case + ending)
        if os.path.isfile(path):
            from PIL import Image

            mask = np.asarray(Image.open(path))
            return (mask.max(axis=-1) if mask.ndim == 3 else mask) > 0
    raise FileNotFoundError(f"no field-of-view mask {case}{{{','.join(FOV_ENDINGS)}}} in {fov_dir}")


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
                                       settings.empty_distance))
        channel = channel_of(c)
        if settings.probabilities and probabilities is not None and channel is not None:
            row.update(probability_metrics(ref_mask[keep], probabilities[channel][keep]))
        row["ref_volume"] = int(ref_mask.sum()) * voxel
        row["pred_volume"] = int(pred_mask.sum()) * voxel
        rows.append(row)
    return rows


def evaluate_case(pair: CasePair, info: DatasetInfo, settings: EvaluationSettings) -> dict:
    """All metrics of one case: `rows` (one per class), `detection` (per lesion class), `av` (or None)."""
    reference, spacing, stored_spacing = read_segmentation(info.reader_writer, pair.reference)
    prediction, _, _ = read_segmentation(info.reader_writer, pair.prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"{pair.case}: prediction {prediction.shape} and reference {reference.shape} differ in shape "
                         f"({pair.prediction}, {pair.reference})")
    ignore = reference == info.ignore_label if info.ignore_label is not None else None
    keep = ~ignore if ignore is not None else np.ones(reference.shape, dtype=bool)
    voxel = float(np.prod(spacing))

    probabilities = None
    if (settings.probabilities or settings.av) and pair.probabilities is not None:
        probabilities, _ = squeeze_spatial(np.load(pair.probabilities)["probabilities"], stored_spacing,
                                           keep_leading=1)
        if probabilities.shape[1:] != reference.shape:
            raise ValueError(f"{pair.case}: probabilities {probabilities.shape} do not match {reference.shape}")

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
        if probabilities is None:
            raise FileNotFoundError(f"{pair.case}: the A/V protocol needs {_strip_ending(pair.prediction)}.npz "
                                    "(nnUNetv2_predict --save_probabilities)")
        fov = read_fov(settings.fov_dir, pair.case) if settings.fov_dir else None
        av = av_protocol_case(reference, prediction, probabilities, fov, settings.av_classes)

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
    the summary."""
    dataset_json = dataset_json or find_dataset_json(prediction_dir, Path(reference_dir).parent, reference_dir)
    info = load_dataset_info(dataset_json)
    pairs = pair_cases(reference_dir, prediction_dir, info.file_ending)
    return _evaluate_and_report(pairs, info, settings or EvaluationSettings(), output_dir
                                or os.path.join(prediction_dir, "evaluation"), images_dir, num_processes, plots,
                                progress)


def evaluate_cross_validation(model_dir: str, reference_dir: str, output_dir: str | None = None,
                              folds: Iterable[int] | None = None, dataset_json: str | None = None,
                              settings: EvaluationSettings | None = None, images_dir: str | None = None,
                              num_processes: int = 1, plots: bool = True, progress: bool = True) -> dict:
    """Evaluate the pooled validation predictions of a model's folds (output_dir default: model_dir/evaluation)."""
    dataset_json = dataset_json or find_dataset_json(model_dir, Path(reference_dir).parent)
    info = load_dataset_info(dataset_json)
    pairs = cross_validation_pairs(model_dir, reference_dir, info.file_ending, folds)
    return _evaluate_and_report(pairs, info, settings or EvaluationSettings(),
                                output_dir or os.path.join(model_dir, "evaluation"), images_dir, num_processes,
                                plots, progress)


def _evaluate_and_report(pairs, info, settings, output_dir, images_dir, num_processes, plots, progress) -> dict:
    from nnunet_ext.evaluation.report import summarise, write_report

    results = evaluate_pairs(pairs, info, settings, num_processes, progress)
    summary = summarise(results, settings)
    write_report(results, summary, output_dir, info=info, images_dir=images_dir, plots=plots)
    return summary
