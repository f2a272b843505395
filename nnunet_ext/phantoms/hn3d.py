"""A head-and-neck-CT-like 3D phantom in Hounsfield units with anisotropic spacing, for FocusNetV2.

Large structures: a horseshoe mandible (bone), two parotid-like glands (fatty, darker than muscle) and a brainstem-like
cylinder. Small ones: two optic-nerve-like tubes of one to two voxels across running from the eyes to a chiasm-like
blob, in orbital fat. Their volumes differ by two orders of magnitude, as in PDDCA. Every fourth case (index 3, 7,
...) lacks one small organ (anatomy and label), as some PDDCA cases lack an annotated optic structure.
Written as NIfTI with spacing and origin so nnU-Net's planning sees an anisotropic CT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_ext.phantoms.common import case_rng, grid, smooth_noise, write_dataset
from nnunet_ext.phantoms.ct3d import _ellipsoid, _write

LABELS = {"background": 0, "mandible": 1, "parotid_l": 2, "parotid_r": 3, "brainstem": 4, "optic_nerve_l": 5,
          "optic_nerve_r": 6, "chiasm": 7}
SMALL = ("optic_nerve_l", "optic_nerve_r", "chiasm")
CONFIGURATION = "3d_fullres"
DEFAULT_ID = 795
NAME = "PhantomHeadNeckCT"
SPACING_ZYX = (2.5, 1.0, 1.0)  # mm; thick axial slices as in the PDDCA head-and-neck CTs
SHAPE_ZYX = (24, 56, 56)
# which small organ case i lacks: every fourth case one of them, in turn
MISSING = {3: "optic_nerve_l", 7: "chiasm", 11: "optic_nerve_r"}


def _segment_distance(zz, yy, xx, a, b) -> np.ndarray:
    """Distance in mm from every voxel to the segment a-b (points in mm, z y x)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = ((zz - a[0]) * d[0] + (yy - a[1]) * d[1] + (xx - a[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((zz - a[0] - t * d[0]) ** 2 + (yy - a[1] - t * d[1]) ** 2 + (xx - a[2] - t * d[2]) ** 2)


def make_case(rng: np.random.Generator, shape=SHAPE_ZYX, spacing=SPACING_ZYX, missing: str | None = None) -> tuple:
    zz, yy, xx = grid(shape, spacing)
    ext = np.array(shape) * np.array(spacing)
    mid = ext / 2 + np.array([0, rng.normal(0, 1.0), rng.normal(0, 1.0)])
    hu = np.full(shape, -1000.0)
    label = np.zeros(shape, np.uint8)

    head = _ellipsoid(zz, yy, xx, mid, (ext[0] * 10, ext[1] * 0.45, ext[2] * 0.42))
    hu[head] = 40.0 + 6.0 * smooth_noise(rng, shape, 3)[head]  # muscle / brain
    skin = head & ~_ellipsoid(zz, yy, xx, mid, (ext[0] * 10, ext[1] * 0.45 - 3, ext[2] * 0.42 - 3))
    hu[skin] = -90.0  # subcutaneous fat rim

    # mandible: a bony horseshoe in the lower slices, open posteriorly
    zlo = ext[0] * rng.uniform(0.1, 0.16)
    arc_c = (mid[1] + 4.0, mid[2])
    arc_r = (ext[1] * rng.uniform(0.3, 0.34), ext[2] * rng.uniform(0.28, 0.31))
    rho = np.sqrt(((yy - arc_c[0]) / arc_r[0]) ** 2 + ((xx - arc_c[1]) / arc_r[1]) ** 2)
    mandible = (np.abs(rho - 1.0) * min(arc_r) < 2.6) & (yy < arc_c[0] + 3) & (zz > zlo) & (zz < zlo + 24) & head
    hu[mandible] = 900.0 + 60.0 * smooth_noise(rng, shape, 2)[mandible]
    label[mandible] = LABELS["mandible"]

    # parotids: fatty glands behind the mandibular rami
    for name, side in (("parotid_l", 1), ("parotid_r", -1)):
        c = (zlo + rng.uniform(13, 16), arc_c[0] + rng.uniform(3, 5), arc_c[1] + side * (arc_r[1] - 3))
        gland = _ellipsoid(zz, yy, xx, c, (rng.uniform(11, 13), rng.uniform(7, 8.5), rng.uniform(4.5, 5.5)))
        gland &= head & (label == 0)
        hu[gland] = -25.0 + 8.0 * smooth_noise(rng, shape, 2)[gland]
        label[gland] = LABELS[name]

    # brainstem: a vertical cylinder in the upper half, brighter than brain
    bc = (mid[1] + rng.uniform(6, 9), mid[2] + rng.normal(0, 0.8))
    stem = (((yy - bc[0]) ** 2 + (xx - bc[1]) ** 2) < rng.uniform(5.5, 6.5) ** 2) & (zz > ext[0] * 0.42) & head
    hu[stem] = 70.0 + 5.0 * smooth_noise(rng, shape, 2)[stem]
    label[stem] = LABELS["brainstem"]

    # orbits with eyes, optic nerves to a chiasm: the small structures, in one or two slices of orbital fat
    zo = ext[0] * rng.uniform(0.72, 0.78)
    chiasm_c = np.array([zo, mid[1] - rng.uniform(2, 4), mid[2]])
    fat = np.zeros(shape, bool)
    nerves = {}
    for name, side in (("optic_nerve_l", 1), ("optic_nerve_r", -1)):
        eye_c = np.array([zo + rng.normal(0, 0.6), mid[1] - ext[1] * 0.33, mid[2] + side * rng.uniform(8, 10)])
        fat |= _ellipsoid(zz, yy, xx, eye_c + np.array([0, 6, -side * 1.5]), (4.5, 11, 6.5), side * 0.5)
        fat |= _segment_distance(zz, yy, xx, eye_c, chiasm_c) < 3.2
        eye = _ellipsoid(zz, yy, xx, eye_c, (5.0, 5.5, 5.5))
        hu[eye] = 10.0
        start = eye_c + np.array([0, 5.5, -side * 1.0])
        nerves[name] = _segment_distance(zz, yy, xx, start, chiasm_c + np.array([0, 0, side * 2.5])) < 1.2
    fat &= head & (label == 0) & (hu < 300)
    hu[fat & (hu > 0) & (hu != 10.0)] = -80.0 + 10.0 * smooth_noise(rng, shape, 2)[fat & (hu > 0) & (hu != 10.0)]
    for name, mask in nerves.items():
        if name != missing:
            hu[mask] = 45.0
            label[mask] = LABELS[name]
    if missing != "chiasm":
        chiasm = _ellipsoid(zz, yy, xx, chiasm_c, (1.6, 2.2, 5.0)) & head
        hu[chiasm] = 50.0
        label[chiasm] = LABELS["chiasm"]

    hu += rng.normal(0, 10.0, shape)  # quantum noise
    return hu.astype(np.float32), label, spacing


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 10, n_test: int = 3, seed: int = 0,
             shape=SHAPE_ZYX, overwrite: bool = False) -> Path:
    return write_dataset(
        out_root, dataset_id, NAME, lambda i: make_case(case_rng(seed, i), shape, missing=MISSING.get(i)), _write,
        n_train, n_test, channel_names={"0": "CT"}, labels=LABELS, file_ending=".nii.gz",
        description=f"nnunet-ext head-and-neck CT phantom: {shape} voxels of {SPACING_ZYX} mm, seed {seed}; "
                    f"cases {sorted(MISSING)} lack one small organ", overwrite=overwrite)
