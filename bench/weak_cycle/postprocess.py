"""Pseudo-mask post-processing on trained WeakCycle folds: the trainer's (per-image Otsu on the attention, opening)
against the original's watershed refinement, chosen on the validation cases, scored on the weak training cases.

    python bench/weak_cycle/postprocess.py PREPROCESSED REFERENCE FOLD [FOLD ...] -o bench/results/weak_cycle/NAME

PREPROCESSED is the data set's nnUNet_preprocessed folder, REFERENCE the weak cases' true masks in the raw images'
geometry (the phantom's referenceTr/, which training never sees), each FOLD a trained WeakCycle fold folder whose
checkpoint_final.pth holds the G_AB the pseudo-masks came from (with generator_selection "validation", the
selected one). The original (MedImgSeg's findCont/water) cuts the attention at Otsu, opens it, takes a dilation of
the result as sure background and the cores of its distance transform as sure lesion, and lets a watershed of the
image decide the band between; here the watershed floods the image's gradient magnitude. Variants differ in the core
fraction and in how far the sure background reaches. A variant is chosen on the fully labelled validation cases
(mean Dice over the folds); the weak cases' Dice, in the raw images' geometry, is reported for every variant. Writes
NAME.json and NAME.md. 2D configurations only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from nnunet_ext.methods.weak_cycle.data import (
    body_mask,
    case_kind,
    dice,
    normalise_in_body,
    otsu_threshold,
    threshold_image,
    to_raw_geometry,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_maps import InputError, load_generator, maps  # noqa: E402

# name: (opening iterations of a 3x3 square, dilations of a 3x3 square for the sure background, core fraction, cores
# per component); the original's is 2 openings, a 7x7 dilated 3 times (9 of 3x3), cores above 0.7 of the distance
# transform's maximum over the image, so that a component much thinner than the widest loses its core and is dropped
WATERSHED = {"watershed_original": (2, 9, 0.7, False), "watershed_per_component": (2, 9, 0.7, True),
             "watershed_near": (1, 3, 0.7, True)}
TRAINER = "otsu_opening"  # the trainer's own: per-image Otsu, opening of radius 1


def watershed_refine(attention: np.ndarray, image: np.ndarray, body: np.ndarray, openings: int, dilations: int,
                     core: float, per_component: bool) -> np.ndarray:
    """The original's refinement of one image's Otsu mask by a watershed of the image (see the module doc)."""
    from skimage.segmentation import watershed  # nnU-Net's dependency

    normalised = normalise_in_body(attention, body)
    square = np.ones((3, 3), bool)
    mask = ndimage.binary_opening((normalised >= otsu_threshold(normalised[body])) & body, square, openings)
    if not mask.any():
        return mask
    sure_background = ~ndimage.binary_dilation(mask, square, dilations)
    distance = ndimage.distance_transform_edt(mask)
    if per_component:
        labels, n = ndimage.label(mask)
        peaks = np.asarray(ndimage.maximum(distance, labels, np.arange(1, n + 1)))
        sure_lesion = mask & (distance > core * peaks[np.maximum(labels - 1, 0)])
    else:
        sure_lesion = distance > core * distance.max()
    markers = np.where(sure_background, 1, 0)
    markers[sure_lesion] = 2
    flooded = watershed(ndimage.gaussian_gradient_magnitude(image.astype(np.float64), 1.0), markers)
    return (flooded == 2) & body


def masks(attention: np.ndarray, image: np.ndarray, body: np.ndarray) -> dict[str, np.ndarray]:
    out = {TRAINER: threshold_image(attention * body, body, None, 1)[0]}
    for name, setting in WATERSHED.items():
        out[name] = watershed_refine(attention, image, body, *setting)
    return out


def reference_mask(reference: Path, case: str) -> np.ndarray:
    """A weak case's true mask in the raw image's geometry."""
    path = reference / f"{case}.png"
    if not path.is_file():
        raise InputError(f"{path}: no reference mask for weak case {case}")
    return np.asarray(Image.open(path)) == 1


def score_fold(fold: Path, dataset, validation: list[str], reference: Path, lesion: int, ignore: int | None
               ) -> dict:
    generator = load_generator(fold / "checkpoint_final.pth")
    weak_folder = fold / "weak_cycle" / "phase1_pseudo_masks"
    weak = sorted(p.stem for p in weak_folder.glob("*.png"))
    if not weak:
        raise InputError(f"{weak_folder}: no phase-1 pseudo-masks, so no list of weak cases")
    scores: dict[str, dict[str, list[float]]] = {"validation": {}, "weak": {}}
    for group, cases in (("validation", validation), ("weak", weak)):
        for case in cases:
            data, seg, _, properties = dataset.load_case(case)
            data, seg = np.asarray(data[:], np.float32), np.asarray(seg[:])
            if group == "validation" and case_kind(seg, ignore) != "full":
                continue
            # weak cases in the raw geometry, as the trainer writes and the checkpoint bench scores pseudo-masks
            truth = seg[0, 0] == lesion if group == "validation" else reference_mask(reference, case)
            attention, _ = maps(generator, data)
            for name, mask in masks(attention, data[0, 0], body_mask(seg, data)[0]).items():
                raw = mask if group == "validation" else to_raw_geometry(mask[None], properties)[0] == 1
                scores[group].setdefault(name, []).append(dice(truth, raw))
    return {group: {k: float(np.mean(v)) for k, v in by.items()} for group, by in scores.items()} | {
        "cases": {"validation": len(next(iter(scores["validation"].values()), [])), "weak": len(weak)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preprocessed", type=Path, help="the data set's nnUNet_preprocessed folder")
    p.add_argument("reference", type=Path, help="the weak cases' true masks (raw geometry)")
    p.add_argument("folds", type=Path, nargs="+", help="trained WeakCycle fold folders (one per seed)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output stem (.json and .md are added)")
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--fold-index", type=int, default=0)
    args = p.parse_args(argv)
    try:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        data_folder = args.preprocessed / f"{args.plans}_2d"
        splits = args.preprocessed / "splits_final.json"
        for path in (data_folder, splits, args.reference):
            if not path.exists():
                raise InputError(f"{path}: not found")
        dataset = infer_dataset_class(str(data_folder))(str(data_folder))
        labels = json.loads((args.preprocessed / "dataset.json").read_text())["labels"]
        ignore, lesion = labels.get("ignore"), min(v for k, v in labels.items() if k not in ("background", "ignore"))
        validation = sorted(json.loads(splits.read_text())[args.fold_index]["val"])
        folds = {str(f): score_fold(f, dataset, validation, args.reference, lesion, ignore) for f in args.folds}
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    variants = [TRAINER, *WATERSHED]
    mean = {group: {v: float(np.mean([r[group][v] for r in folds.values()])) for v in variants}
            for group in ("validation", "weak")}
    chosen = max(variants, key=lambda v: (mean["validation"][v], v == TRAINER))  # a tie keeps the trainer's
    report = {"chosen_on_validation": chosen, "mean": mean, "folds": folds,
              "settings": {"watershed": WATERSHED, TRAINER: "per-image Otsu, opening radius 1"}}
    lines = ["# WeakCycle pseudo-mask post-processing", "",
             f"`python bench/weak_cycle/postprocess.py {args.preprocessed} {args.reference} FOLDS ...`: Dice of the "
             "pseudo-masks from each fold's G_AB attention, per variant; chosen on the validation cases "
             f"(mean over {len(folds)} folds): **{chosen}**.", "",
             "| variant | validation Dice (mean) | weak cases' Dice (mean) | weak cases' Dice per fold |",
             "|---|---|---|---|"]
    for v in variants:
        per = ", ".join(f"{r['weak'][v]:.3f}" for r in folds.values())
        lines.append(f"| {v} | {mean['validation'][v]:.3f} | {mean['weak'][v]:.3f} | {per} |")
    lines += ["", "Folds: " + "; ".join(f"{f} ({r['cases']['validation']} validation, {r['cases']['weak']} weak "
                                        "cases)" for f, r in folds.items())]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
