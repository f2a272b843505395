"""Weak (image-level) labels in nnU-Net data sets, and the pseudo-masks WeakCycleTrainer derives from them.

Convention (docs/conversion.md, "Weak labels"): a disease case, whose lesion location is unknown, has a label map that
is the ignore label over the image (0 may mark the outside of the image's non-zero region, as the converters write
it; an entirely-ignore map is accepted too); a normal case has a label map of all 0; a case with lesion labels is fully
labelled. After nnU-Net's preprocessing, 0 outside the non-zero region of the image becomes -1, which counts as
outside the body here.

Pseudo-masks live in the preprocessed (cropped, resampled) space of the cases, one `<case>.npy` (int8, the seg's
shape: 0 background, 1 lesion, ignore label where unsure) per disease case in the trainer's output folder; the data
set wrapper `PseudoLabelDataset` hands them to nnU-Net's data loader in place of the all-ignore maps. Being files,
updates reach data-augmentation worker processes too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_ext.evaluation.metrics import overlap_metrics
from nnunet_ext.fileio import atomic_output_dir, dataset_id_clashes

OUTSIDE = -1  # nnU-Net's mark, in the preprocessed seg, for pixels outside the non-zero region of the image


class WeakLabelError(ValueError):
    pass


@dataclass
class WeakCases:
    disease: list[str] = field(default_factory=list)
    normal: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{len(self.disease)} disease (ignore), {len(self.normal)} normal (all 0), {len(self.full)} fully " \
               f"labelled"


def load_seg(dataset, identifier: str) -> np.ndarray:
    _, seg, _, _ = dataset.load_case(identifier)
    return np.asarray(seg[:])


def load_image(dataset, identifier: str) -> np.ndarray:
    data, _, _, _ = dataset.load_case(identifier)
    return np.asarray(data[:], dtype=np.float32)


def case_kind(seg: np.ndarray, ignore_label: int) -> str:
    """'full' (some label other than 0 and ignore), 'disease' (ignore, with or without 0) or 'normal' (nothing but
    0) for one (preprocessed or raw) label map."""
    values = set(np.unique(seg[seg != OUTSIDE]).tolist())
    if values - {0, ignore_label}:
        return "full"
    return "disease" if ignore_label in values else "normal"


def classify_cases(dataset, identifiers, ignore_label: int | None, dataset_name: str) -> WeakCases:
    """Sort the cases by their label maps; a weakly labelled data set needs both disease and normal cases."""
    if ignore_label is None:
        raise WeakLabelError(f"{dataset_name}: dataset.json declares no ignore label; weak labels mark disease "
                             f"cases with an all-ignore label map (docs/conversion.md, 'Weak labels')")
    cases = WeakCases()
    for identifier in identifiers:
        getattr(cases, case_kind(load_seg(dataset, identifier), ignore_label)).append(identifier)
    for kind, how in (("disease", f"the ignore label {ignore_label} over the image"), ("normal", "all 0")):
        if not getattr(cases, kind):
            raise WeakLabelError(f"{dataset_name}: no {kind} cases among the {len(list(identifiers))} training "
                                 f"cases ({cases.describe()}); weak labels need {kind} cases, whose label maps "
                                 f"are {how}")
    return cases


def body_mask(seg: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
    """The body/skin region of a preprocessed case (spatial shape, bool).

    nnU-Net's cropping marks the outside of the image's non-zero region as -1 in the seg (holes filled), so that is
    the body wherever it is marked. The normalised image cannot tell: masked z-score normalisation leaves the outside
    at 0 while body voxels go well below it. Without any -1 (no zero background, as in dermoscopy, or a seg from
    elsewhere) the fallback is the image itself: the body is where it differs from the value that fills at least
    half of its border (holes filled); when no value dominates the border, the whole image is body."""
    seg = np.asarray(seg)
    spatial = seg.shape[1:] if seg.ndim > 1 and seg.shape[0] == 1 else seg.shape
    outside = np.asarray(seg).reshape(spatial) == OUTSIDE
    if outside.any():
        return ~outside
    if data is None:
        return np.ones(spatial, bool)
    return intensity_body(np.asarray(data, np.float32).reshape((-1,) + spatial))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 3 and mask.shape[0] == 1:  # a 2D image stored as 1 x H x W
        return ndimage.binary_fill_holes(mask[0])[None]
    return ndimage.binary_fill_holes(mask)


def intensity_body(data: np.ndarray) -> np.ndarray:
    """Fallback body mask (C x spatial image): differs from the dominant border value in some channel."""
    inside = np.zeros(data.shape[1:], bool)
    squeeze = data.ndim == 4 and data.shape[1] == 1
    for channel in data:
        image = channel[0] if squeeze else channel
        border = np.concatenate([np.moveaxis(image, axis, 0)[[0, -1]].ravel() for axis in range(image.ndim)])
        values, counts = np.unique(border, return_counts=True)
        if counts.max() * 2 < border.size:
            return np.ones(data.shape[1:], bool)
        background = values[np.argmax(counts)]
        inside |= np.abs(channel - background) > 1e-6
    return _fill_holes(inside)


def normalise_in_body(probability: np.ndarray, body: np.ndarray) -> np.ndarray:
    """One image's map rescaled to [0, 1] over its body (min to max), 0 outside: an untrained attention lies in a
    narrow band around 0.5, which no fixed threshold resolves."""
    out = np.zeros(probability.shape, np.float32)
    if not body.any():
        return out
    values = probability[body]
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        out[body] = 0.5
        return out
    out[body] = (values - low) / (high - low)
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold on values in [0, 1] (maximal between-class variance)."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return 0.5
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:][np.argmax(between)])


def opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening with a ball of `radius` pixels (0: none), in the image's own dimensionality."""
    if radius <= 0 or not mask.any():
        return mask
    grid = np.indices((2 * radius + 1,) * mask.ndim) - radius
    ball = (grid ** 2).sum(0) <= radius ** 2
    return ndimage.binary_opening(mask, structure=ball)


def to_raw_geometry(mask: np.ndarray, properties: dict) -> np.ndarray:
    """A preprocessed-space 0/1 map (spatial, nnU-Net's channel-less grid) back onto the raw image grid as uint8:
    resampled nearest to the cropped shape, then placed in the uncropped image (0 outside the crop)."""
    seg = mask.astype(np.uint8)
    shape = tuple(properties["shape_after_cropping_and_before_resampling"])
    if seg.shape != shape:
        seg = ndimage.zoom(seg, [a / b for a, b in zip(shape, seg.shape, strict=True)], order=0)
    full = np.zeros(properties["shape_before_cropping"], np.uint8)
    full[tuple(slice(a, b) for a, b in properties["bbox_used_for_cropping"])] = seg
    return full


def threshold_image(probability: np.ndarray, body: np.ndarray, threshold: float | None = None,
                    opening_radius: int = 0) -> tuple[np.ndarray, float]:
    """(lesion mask, threshold used) of one image: its map normalised over the body, cut at `threshold` (None: Otsu
    of this image's body values, as the original), opened, never outside the body."""
    normalised = normalise_in_body(probability, body)
    t = otsu_threshold(normalised[body]) if threshold is None else float(threshold)
    mask = (normalised >= t) & body
    return opening(mask, opening_radius) & body, t


def best_threshold(probabilities: list[np.ndarray], references: list[np.ndarray],
                   candidates: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, mean per-case Dice) that maximises the mean Dice over cases with full masks; on ties the middle
    of the best candidates, so a flat score does not drift to an end of the range."""
    candidates = np.round(np.arange(0.05, 0.96, 0.05), 2) if candidates is None else candidates
    # Dice 1 where reference and prediction are both empty (evaluation.metrics' convention)
    scores = np.array([np.mean([overlap_metrics(r, p >= t)["dice"]
                                for p, r in zip(probabilities, references, strict=True)]) for t in candidates])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    pick = int(best[len(best) // 2])
    return float(candidates[pick]), float(scores[pick])


def teacher_thresholds(probabilities: list[np.ndarray], bodies: list[np.ndarray], confidence: float,
                       keep_fraction: float | None) -> tuple[float, float]:
    """(high, low): a teacher lesion probability >= high makes a pseudo-label lesion, <= low background, anything
    between ignore. `confidence` alone gives (confidence, 1 - confidence). With `keep_fraction` the thresholds are
    also class-balanced, as in class-balanced self-training (Zou et al., ECCV 2018): over all cases' bodies, each
    class keeps at least that share of the pixels the teacher assigns to it (its most confident ones), so that an
    unsure teacher cannot drop the rarer lesion class entirely and teach the student a background-only world."""
    if not 0.5 <= confidence < 1:
        raise ValueError(f"teacher_confidence must lie in [0.5, 1), got {confidence}")
    if keep_fraction is None:
        return confidence, 1 - confidence
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"teacher_keep_fraction must lie in (0, 1] or be None, got {keep_fraction}")
    inside = np.concatenate([np.asarray(p)[b] for p, b in zip(probabilities, bodies, strict=True)]).astype(np.float32) \
        if probabilities else np.zeros(0, np.float32)
    high, low = confidence, 1 - confidence
    lesion = inside[inside > 0.5]  # a tie (0.5) belongs to neither class: always ignore
    if lesion.size:
        high = min(high, float(np.quantile(lesion, 1 - keep_fraction)))
    background = 1 - inside[inside < 0.5]
    if background.size:
        low = max(low, 1 - float(np.quantile(background, 1 - keep_fraction)))
    return high, low


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two boolean masks, 1 when both are empty (evaluation.metrics' convention)."""
    return float(overlap_metrics(reference, prediction)["dice"])


def save_array(array: np.ndarray, filename: Path) -> None:
    """np.save through a temporary file and os.replace: a reader never sees half a mask."""
    tmp = filename.with_name(f"{filename.name}.tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, filename)


class PseudoLabelDataset:
    """An nnU-Net data set whose disease cases carry the pseudo-mask in `folder` (when one exists) instead of their
    all-ignore label map; everything else passes through."""

    def __init__(self, dataset, folder: Path, identifiers: list[str] | None = None):
        self.dataset = dataset
        self.folder = Path(folder)
        # the data loader samples uniformly from this list: repeating cases balances disease and normal
        self.identifiers = list(dataset.identifiers if identifiers is None else identifiers)

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier: str):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        pseudo = self.folder / f"{identifier}.npy"
        if pseudo.is_file():
            seg = np.load(pseudo)
        return data, seg, seg_prev, properties


def balanced_identifiers(cases: WeakCases) -> list[str]:
    """Disease and normal cases repeated so that each kind fills about half the list; full cases once each."""
    n = max(len(cases.disease), len(cases.normal))
    repeat = lambda ids: (ids * (n // len(ids) + 1))[:n]  # noqa: E731
    return repeat(cases.disease) + repeat(cases.normal) + list(cases.full)


def export_pseudo_dataset(raw_dataset: Path, masks: dict[str, np.ndarray], out_root: Path, dataset_id: int,
                          name: str, reader_writer, overwrite: bool = False) -> Path:
    """A labelled nnU-Net raw data set: the raw images of `raw_dataset`'s training cases, disease cases labelled
    with `masks` (case -> label map in the raw image's geometry, 0/1), the others with their own labels. Written into
    a temporary folder renamed into place. `reader_writer` is the data set's nnU-Net image reader/writer."""
    raw_dataset = Path(raw_dataset)
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    target = Path(out_root) / f"Dataset{int(dataset_id):03d}_{name}"
    if target.resolve() == raw_dataset.resolve():
        raise ValueError(f"{target}: the export would overwrite its own source data set; choose another id")
    with atomic_output_dir(target, overwrite=overwrite,
                           also_replace=dataset_id_clashes(Path(out_root), dataset_id, target)) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        n = 0
        for label_file in sorted((raw_dataset / "labelsTr").glob(f"*{ending}")):
            case = label_file.name[: -len(ending)]
            images = sorted((raw_dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
            if not images:
                raise FileNotFoundError(f"{label_file}: no image {case}_0000{ending} in {raw_dataset / 'imagesTr'}")
            for image in images:
                shutil.copyfile(image, tmp / "imagesTr" / image.name)
            if case in masks:
                _, properties = reader_writer.read_seg(str(label_file))
                reader_writer.write_seg(masks[case].astype(np.uint8), str(tmp / "labelsTr" / label_file.name),
                                        properties)
            else:
                (tmp / "labelsTr" / label_file.name).write_bytes(label_file.read_bytes())
            n += 1
        missing = sorted(set(masks) - {p.name[: -len(ending)] for p in (tmp / "labelsTr").iterdir()})
        if missing:
            raise ValueError(f"pseudo-masks for cases absent from {raw_dataset / 'labelsTr'}: {missing[:5]}")
        dataset_json.update(numTraining=n, name=name,
                            description=f"pseudo-masks of {raw_dataset.name} (WeakCycleTrainer, phase 1)")
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        for extra in ("splits_final.json",):
            if (raw_dataset / extra).is_file():
                (tmp / extra).write_bytes((raw_dataset / extra).read_bytes())
    return target
