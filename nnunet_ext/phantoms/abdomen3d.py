"""An abdominal-CT-like 3D phantom in FreeTumor's label scheme, with real tumours in only a few training cases.

Body, fat rim and vertebra as in ct3d; a deformed liver (1), an elongated pancreas (3) in front of the spine and two
kidneys (5); tumours are hypodense, textured blobs with their organ's tumour label (2, 4, 6). Only a fraction of the
training cases carry tumours (tumour_fraction, default 0.25: the regime FreeTumor is for); every held-out case has
one to three, of mixed sizes, so lesion-wise sensitivity by size can be measured. Anisotropic spacing (3 x 1.5 x 1.5
mm), NIfTI with real geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_ext.phantoms.common import case_rng, grid, smooth_noise, write_dataset
from nnunet_ext.phantoms.ct3d import _ellipsoid, _quadric, _write

LABELS = {"background": 0, "liver": 1, "liver_tumour": 2, "pancreas": 3, "pancreas_tumour": 4, "kidney": 5,
          "kidney_tumour": 6}
CONFIGURATION = "3d_fullres"
DEFAULT_ID = 797
NAME = "PhantomFreeTumor"
SPACING_ZYX = (3.0, 1.5, 1.5)
SHAPE_ZYX = (32, 64, 64)
TUMOUR_RADII_MM = (3.5, 6.0, 10.0)  # small, medium, large phantom lesions
TUMOUR_CONTRAST_HU = (-45.0, -25.0)


def _tumours(rng, hu, label, zz, yy, xx, n: int) -> None:
    """n hypodense textured tumours, each inside one organ (centre at least 3 mm inside)."""
    from scipy import ndimage

    organs = [o for o in (1, 3, 5) if (label == o).sum() > 30]
    for _ in range(n):
        if not organs:
            return
        organ = organs[int(rng.integers(len(organs)))]
        inside = ndimage.distance_transform_edt(label == organ, sampling=SPACING_ZYX) > 3.0
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            continue
        c = np.unravel_index(int(idx[rng.integers(idx.size)]), label.shape)
        centre = np.array([c[0] * SPACING_ZYX[0], c[1] * SPACING_ZYX[1], c[2] * SPACING_ZYX[2]])
        sizes = TUMOUR_RADII_MM[:2] if organ == 3 else TUMOUR_RADII_MM  # the thin pancreas takes no large one
        radius = sizes[int(rng.integers(len(sizes)))] * rng.uniform(0.85, 1.15, 3)
        blob = _quadric(zz, yy, xx, centre, radius, rng.uniform(0, np.pi)) < 1.0 + 0.2 * smooth_noise(
            rng, label.shape, 2)
        blob &= label == organ
        hu[blob] += rng.uniform(*TUMOUR_CONTRAST_HU) * (1 + 0.2 * smooth_noise(rng, label.shape, 1.5)[blob])
        label[blob] = organ + 1


def make_case(rng: np.random.Generator, shape=SHAPE_ZYX, spacing=SPACING_ZYX, n_tumours: int = 0) -> tuple:
    zz, yy, xx = grid(shape, spacing)
    ext = np.array(shape) * np.array(spacing)
    mid = ext / 2
    hu = np.full(shape, -1000.0)
    label = np.zeros(shape, np.uint8)

    body_r = np.array([ext[0] * 10, ext[1] * rng.uniform(0.4, 0.45), ext[2] * rng.uniform(0.45, 0.49)])
    body = _ellipsoid(zz, yy, xx, mid, body_r)
    inner = _ellipsoid(zz, yy, xx, mid, body_r - np.array([0, 4.0, 4.0]))
    hu[body] = -100.0
    hu[inner] = 20.0 + 8.0 * smooth_noise(rng, shape, 3)[inner]
    spine_c = mid + np.array([0, 0.27 * ext[1], 0])
    spine = _ellipsoid(zz, yy, xx, spine_c, (ext[0] * 10, 6.0, 7.0))
    hu[spine] = 450.0

    liver_c = mid + np.array([rng.normal(0, 3), -0.08 * ext[1], -0.17 * ext[2]])
    liver_r = np.array([ext[0] * rng.uniform(0.32, 0.4), ext[1] * 0.22, ext[2] * 0.21])
    liver = _quadric(zz, yy, xx, liver_c, liver_r, rng.uniform(-0.3, 0.3)) < 1.0 + 0.2 * smooth_noise(rng, shape, 4)
    liver &= inner
    hu[liver] = 100.0 + 6.0 * smooth_noise(rng, shape, 2)[liver]
    label[liver] = 1

    # pancreas: a thin elongated gland across the midline, in front of the spine, beside the liver
    pan_c = spine_c + np.array([rng.normal(0, 2), -0.17 * ext[1], 0.1 * ext[2]])
    pancreas = _ellipsoid(zz, yy, xx, pan_c, (rng.uniform(9, 12), rng.uniform(4.5, 6), rng.uniform(20, 26)),
                          rng.uniform(-0.25, 0.25)) & inner & (label == 0) & ~spine
    hu[pancreas] = 85.0 + 8.0 * smooth_noise(rng, shape, 1.5)[pancreas]
    label[pancreas] = 3

    for side in (-1, 1):
        kc = spine_c + np.array([rng.normal(0, 2), -0.02 * ext[1], side * 0.21 * ext[2]])
        kr = np.array([rng.uniform(14, 18), rng.uniform(8, 10), rng.uniform(6.5, 8)])
        rot = side * rng.uniform(0.2, 0.5)
        kidney = _ellipsoid(zz, yy, xx, kc, kr, rot) & inner & ~spine & (label == 0)
        medulla = _ellipsoid(zz, yy, xx, kc, kr * 0.55, rot)
        hu[kidney] = 170.0
        hu[kidney & medulla] = 125.0
        label[kidney] = 5

    _tumours(rng, hu, label, zz, yy, xx, n_tumours)
    hu += rng.normal(0, 10.0, shape)
    return hu.astype(np.float32), label, spacing


def tumour_count(seed: int, index: int, n_train: int, tumour_fraction: float) -> int:
    """Training cases: every round(1 / fraction)-th (0, 4, 8, ... for 0.25) gets one or two tumours, so a case does
    not depend on how many are generated; held-out cases get one to three."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 97]))
    if index >= n_train:
        return int(rng.integers(1, 4))
    if tumour_fraction <= 0:
        return 0
    return int(rng.integers(1, 3)) if index % max(1, round(1 / tumour_fraction)) == 0 else 0


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 12, n_test: int = 4, seed: int = 0,
             shape=SHAPE_ZYX, tumour_fraction: float = 0.25, overwrite: bool = False) -> Path:
    def make(i: int):
        return make_case(case_rng(seed, i), shape, n_tumours=tumour_count(seed, i, n_train, tumour_fraction))

    return write_dataset(
        out_root, dataset_id, NAME, make, _write, n_train, n_test, channel_names={"0": "CT"}, labels=LABELS,
        file_ending=".nii.gz",
        description=f"nnunet-ext FreeTumor phantom: {shape} voxels of {SPACING_ZYX} mm, tumours in "
                    f"{sum(tumour_count(seed, i, n_train, tumour_fraction) > 0 for i in range(n_train))} of {n_train} "
                    f"training cases, seed {seed}",
        overwrite=overwrite)
