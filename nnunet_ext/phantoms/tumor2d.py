"""A fundus-tumour-like 2D RGB phantom for FTSegNet.

Each image: a circular field of view on black, an orange-red choroid with texture and vignetting, an optic disc and
dark-red vessel trees (background), small pigment freckles (background: dark, but too small to be a tumour) and, in
most images, one round dark pigmented tumour (label 1) of widely varying size with a soft, slightly irregular rim.
About a third of the images have no tumour, as in a screening set.

Beside dataset.json the phantom writes `classification.json`, the per-case class table FTSegNetTrainer trains its
prior on: 0 = no tumour, 1 = small tumour (radius < 10 % of the image), 2 = large tumour.

`n_classification_only`: the last that many training cases keep their image and class but lose their mask (label
map all ignore label, dataset.json gains "ignore": 2): the setting of abundant classification data and few masks.
`balanced_test`: held-out images alternate tumour / no tumour (half tumour-free), for false-positive rates.
`balanced_masks`: the training cases that keep their mask alternate tumour / no tumour, so that few masks still show
the segmenter as many tumour-free images as tumour images (the classification-only cases stay as they were).
`mimics`: every image also holds 1-2 benign naevi (background): a small tumour's size, flat, lighter, sharp-edged,
as a choroidal naevus beside a melanoma; locally close to a small tumour, so few masks leave room for false positives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnunet_ext.phantoms.av2d import _draw
from nnunet_ext.phantoms.common import case_rng, fundus_background, save_rgb_case, write_dataset
from nnunet_ext.phantoms.fundus2d import _vessel_tree

LABELS = {"background": 0, "tumour": 1}
IGNORE = 2  # the label of a classification-only case's whole label map
CONFIGURATION = "2d"
DEFAULT_ID = 794
NAME = "PhantomTumor"
CLASS_TABLE = "classification.json"
CLASSES = {"no_tumour": 0, "small_tumour": 1, "large_tumour": 2}
SMALL_RADIUS = 0.10  # of the image size

VESSEL_RGB = np.array([0.45, 0.08, 0.06])
TUMOUR_RGB = np.array([0.20, 0.17, 0.14])


def make_case(rng: np.random.Generator, size: int = 96, tumour_probability: float = 0.65,
              mimics: bool = False) -> tuple:
    """(rgb uint8 HxWx3, label uint8 HxW, class index). `mimics`: also 1-2 benign naevi (background)."""
    bg = fundus_background(rng, size, (0.72, 0.33, 0.15), texture=0.06, disc_radius=(0.06, 0.085))
    yy, xx, centre, fov, texture, rgb = bg.yy, bg.xx, bg.centre, bg.fov, bg.texture, bg.rgb
    disc_c, disc_r = bg.disc_c, bg.disc_r

    vessels = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(3, 5))):
        vessels |= _draw(_vessel_tree(rng, disc_c.copy(), size, depth=2), size, 1.0)
    vessels &= fov
    rgb[vessels] = rgb[vessels] * 0.45 + VESSEL_RGB * 0.55

    # freckles: as dark as a tumour but tiny, so darkness alone does not make a tumour
    for _ in range(int(rng.integers(0, 4))):
        c = centre + rng.uniform(-0.35, 0.35, 2) * size
        freckle = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < rng.uniform(0.8, 1.8) ** 2
        rgb[freckle] = rgb[freckle] * 0.35 + TUMOUR_RGB * 0.65

    label = np.zeros((size, size), np.uint8)
    case_class = CLASSES["no_tumour"]
    if rng.uniform() < tumour_probability:
        tumour_r = rng.uniform(0.05, 0.17) * size
        for _attempt in range(20):
            c = centre + rng.uniform(-0.28, 0.28, 2) * size
            if np.hypot(*(c - disc_c)) > disc_r + tumour_r + 2:
                break
        angle = np.arctan2(yy - c[0], xx - c[1])
        wobble = 1 + 0.08 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi)) + 0.04 * texture
        d = np.hypot(yy - c[0], xx - c[1]) / (tumour_r * wobble)
        tumour = (d < 1) & fov
        # darkest in the middle, fading to the choroid at the rim (soft edge, as a pigmented naevus/melanoma)
        weight = np.clip(1.15 - 0.5 * d ** 2, 0, 0.85)[tumour][:, None]
        rgb[tumour] = rgb[tumour] * (1 - weight) + TUMOUR_RGB * weight
        label[tumour] = LABELS["tumour"]
        case_class = CLASSES["small_tumour"] if tumour_r < SMALL_RADIUS * size else CLASSES["large_tumour"]

    if mimics:
        # benign naevi, drawn after everything else so that without mimics the images stay as they were: a small
        # tumour's size, but flat, evenly and more lightly pigmented, with a sharp edge. Locally they look like a
        # small tumour, so a segmenter trained on few masks may call them one; whether an image holds a tumour at all
        # is what the classification-only images teach
        taken = label > 0
        for _ in range(int(rng.integers(1, 3))):
            naevus_r = rng.uniform(0.04, 0.08) * size
            for _attempt in range(20):
                c = centre + rng.uniform(-0.3, 0.3, 2) * size
                d = np.hypot(yy - c[0], xx - c[1])
                if np.hypot(*(c - disc_c)) > disc_r + naevus_r + 2 and not (taken & (d < naevus_r + 3)).any():
                    break
            naevus = (d < naevus_r) & fov & ~taken
            rgb[naevus] = rgb[naevus] * (1 - (w := rng.uniform(0.45, 0.6))) + TUMOUR_RGB * w
            taken |= naevus

    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    rgb[~fov] = 0.0
    return np.clip(rgb * 255, 0, 255).astype(np.uint8), label, case_class


def _write(case: tuple, image_dir: Path, label_dir: Path, case_id: str) -> None:
    rgb, label, case_class = case[:3]
    if len(case) > 3 and case[3]:
        label = np.full_like(label, IGNORE)  # classification-only: the class stays, the mask goes
    save_rgb_case(rgb, label, image_dir, label_dir, case_id)
    # written inside the data set's temporary folder, so it appears together with the rest
    table_file = image_dir.parent / CLASS_TABLE
    table = json.loads(table_file.read_text()) if table_file.exists() else {}
    table[case_id] = int(case_class)
    table_file.write_text(json.dumps(table, indent=1, sort_keys=True))


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 24, n_test: int = 6, size: int = 96,
             seed: int = 0, overwrite: bool = False, n_classification_only: int = 0,
             balanced_test: bool = False, mimics: bool = False, balanced_masks: bool = False) -> Path:
    if not 0 <= n_classification_only < n_train:
        raise ValueError(f"n_classification_only must lie in [0, {n_train - 1}] (some cases keep their mask), "
                         f"got {n_classification_only}")

    def case(i: int) -> tuple:
        probability = 0.65
        if balanced_test and i >= n_train:
            probability = 1.0 if (i - n_train) % 2 == 0 else 0.0
        if balanced_masks and i < n_train - n_classification_only:
            # the draw that decides the tumour is still made, so everything else in the image stays as it was
            probability = 1.0 if i % 2 == 0 else 0.0
        return (*make_case(case_rng(seed, i), size, probability, mimics),
                n_train - n_classification_only <= i < n_train)

    labels = dict(LABELS, ignore=IGNORE) if n_classification_only else LABELS
    return write_dataset(
        out_root, dataset_id, NAME, case, _write, n_train, n_test,
        channel_names={"0": "R", "1": "G", "2": "B"}, labels=labels, file_ending=".png",
        description=f"nnunet-ext fundus tumour phantom: {size}x{size} RGB, one dark round tumour or none, "
                    f"classes in {CLASS_TABLE} ({CLASSES}), seed {seed}, {n_classification_only} classification-only "
                    f"training cases" + (", masked cases alternate tumour / no tumour" if balanced_masks else "")
                    + (", benign naevi (background) in every image" if mimics else ""),
        overwrite=overwrite)
