"""An abdominal-CT-like 3D phantom in Hounsfield units with anisotropic spacing.

Air outside an elliptic body with a fat rim, a vertebra (bone, unlabelled), a large deformed liver-like organ
(label 1), two kidney-like organs with a brighter cortex (label 2, medium) and a thin adrenal-like structure of a
few voxels (label 3, small). Structure volumes differ by two orders of magnitude, the regime FocusNetV2 targets.
Written as NIfTI with real spacing, origin and direction so nnU-Net's planning sees an anisotropic CT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.phantoms.common import case_rng, grid, smooth_noise, write_dataset

LABELS = {"background": 0, "liver": 1, "kidney": 2, "adrenal": 3}
CONFIGURATION = "3d_fullres"  # the nnU-Net configuration the demo and tests train
DEFAULT_ID = 792
NAME = "PhantomAbdomenCT"
SPACING_ZYX = (3.0, 1.5, 1.5)  # mm; thick slices as in routine abdominal CT
SHAPE_ZYX = (32, 64, 64)


def _quadric(zz, yy, xx, centre, radii, rotation: float = 0.0) -> np.ndarray:
    """Normalised ellipsoid distance in mm (< 1 inside), rotated in the axial plane."""
    dy, dx = yy - centre[1], xx - centre[2]
    c, s = np.cos(rotation), np.sin(rotation)
    ry, rx = c * dy + s * dx, -s * dy + c * dx
    return ((zz - centre[0]) / radii[0]) ** 2 + (ry / radii[1]) ** 2 + (rx / radii[2]) ** 2


def _ellipsoid(zz, yy, xx, centre, radii, rotation: float = 0.0) -> np.ndarray:
    return _quadric(zz, yy, xx, centre, radii, rotation) < 1.0


def make_case(rng: np.random.Generator, shape=SHAPE_ZYX, spacing=SPACING_ZYX) -> tuple:
    zz, yy, xx = grid(shape, spacing)
    ext = np.array(shape) * np.array(spacing)
    mid = ext / 2
    hu = np.full(shape, -1000.0)
    label = np.zeros(shape, np.uint8)

    body_r = np.array([ext[0] * 10, ext[1] * rng.uniform(0.38, 0.44), ext[2] * rng.uniform(0.44, 0.48)])
    body = _ellipsoid(zz, yy, xx, mid, body_r)
    inner = _ellipsoid(zz, yy, xx, mid, body_r - np.array([0, 4.0, 4.0]))
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 30.0 + 8.0 * smooth_noise(rng, shape, 3)[inner]

    spine_c = mid + np.array([0, 0.25 * ext[1], 0])
    spine = _ellipsoid(zz, yy, xx, spine_c, (ext[0] * 10, 6.0, 7.0))
    hu[spine] = 450.0

    # liver: large, right side of the patient (image left), deformed by a smooth field
    liver_c = mid + np.array([rng.normal(0, 3), -0.05 * ext[1], -0.18 * ext[2]])
    liver_r = np.array([ext[0] * rng.uniform(0.32, 0.4), ext[1] * 0.22, ext[2] * 0.2])
    liver = _quadric(zz, yy, xx, liver_c, liver_r, rng.uniform(-0.3, 0.3)) < 1.0 + 0.25 * smooth_noise(rng, shape, 4)
    liver &= inner
    hu[liver] = 60.0 + 6.0 * smooth_noise(rng, shape, 2)[liver]
    label[liver] = LABELS["liver"]

    # kidneys: medium, both sides of the spine, enhancing cortex
    for side in (-1, 1):
        kc = spine_c + np.array([rng.normal(0, 2), -0.02 * ext[1], side * 0.2 * ext[2]])
        kr = np.array([rng.uniform(15, 20), rng.uniform(7, 9), rng.uniform(5.5, 7)])
        rot = side * rng.uniform(0.2, 0.5)
        kidney = _ellipsoid(zz, yy, xx, kc, kr, rot) & inner & ~spine
        medulla = _ellipsoid(zz, yy, xx, kc, kr * 0.6, rot)
        hu[kidney] = 170.0
        hu[kidney & medulla] = 110.0
        label[kidney] = LABELS["kidney"]

        # adrenal: a thin plate of a few voxels on top of the kidney, the small structure
        ac = kc + np.array([kr[0] + 4.0, -2.0, side * 1.0])
        adrenal = _ellipsoid(zz, yy, xx, ac, (5.0, 4.0, 1.6), rot + 0.6) & inner & (label == 0) & ~spine
        hu[adrenal] = 90.0
        label[adrenal] = LABELS["adrenal"]

    hu += rng.normal(0, 12.0, shape)  # quantum noise
    return hu.astype(np.float32), label, spacing


def _to_sitk(array: np.ndarray, spacing_zyx) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin((-120.0, -120.0, 0.0))
    return img


def _write(case: tuple, image_dir: Path, label_dir: Path, case_id: str) -> None:
    hu, label, spacing = case
    sitk.WriteImage(_to_sitk(hu, spacing), str(image_dir / f"{case_id}_0000.nii.gz"))
    sitk.WriteImage(_to_sitk(label, spacing), str(label_dir / f"{case_id}.nii.gz"))


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 10, n_test: int = 3, seed: int = 0,
             shape=SHAPE_ZYX, overwrite: bool = False) -> Path:
    return write_dataset(
        out_root, dataset_id, NAME, lambda i: make_case(case_rng(seed, i), shape), _write, n_train, n_test,
        channel_names={"0": "CT"}, labels=LABELS, file_ending=".nii.gz",
        description=f"nnunet-ext abdominal CT phantom: {shape} voxels of {SPACING_ZYX} mm, seed {seed}",
        overwrite=overwrite)
