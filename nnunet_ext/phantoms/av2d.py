"""A fundus-like 2D RGB phantom for artery/vein segmentation.

Each image: a circular field of view on black, an orange-red choroid, a bright optic disc, and two kinds of vessel
trees leaving the disc: arteries (label 1, thinner, bright red, with a light central reflex) and veins (label 2, wider,
dark purple-red). Where an artery and a vein overlap the pixel is a crossing (label 3), as the uncertain/crossing
class of DRIVE-AV / RITE. The disc itself is background, as in the A/V references. Field-of-view masks are written
beside the data set in masksTr/ and masksTs/ (CASE.png, 0/1), as the A/V converters do, for `nnunet_ext evaluate --av
--fov`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_ext.phantoms.common import case_rng, fundus_background, grid, save_rgb_case, write_dataset
from nnunet_ext.phantoms.fundus2d import _segment_distance, _vessel_tree

LABELS = {"background": 0, "artery": 1, "vein": 2, "crossing": 3}
CONFIGURATION = "2d"
DEFAULT_ID = 793
NAME = "PhantomAV"

ARTERY_RGB = np.array([0.80, 0.16, 0.10])
VEIN_RGB = np.array([0.32, 0.04, 0.14])


def _draw(segments: list[tuple], size: int, width_scale: float) -> np.ndarray:
    yy, xx = grid((size, size))
    mask = np.zeros((size, size), bool)
    for p0, p1, width in segments:
        width = width * width_scale
        lo = np.floor(np.minimum(p0, p1) - width - 1).astype(int).clip(0, size)
        hi = np.ceil(np.maximum(p0, p1) + width + 2).astype(int).clip(0, size)
        if np.any(hi <= lo):
            continue
        d = _segment_distance(yy[lo[0]:hi[0]], xx[:, lo[1]:hi[1]], p0, p1)
        mask[lo[0]:hi[0], lo[1]:hi[1]] |= d < width / 2
    return mask


def make_case(rng: np.random.Generator, size: int = 96) -> tuple:
    """(rgb uint8 HxWx3, label uint8 HxW, fov bool HxW)."""
    bg = fundus_background(rng, size, (0.72, 0.34, 0.16), texture=0.05, disc_radius=(0.065, 0.09))
    fov, rgb, disc_c, disc = bg.fov, bg.rgb, bg.disc_c, bg.disc

    # artery and vein trees alternate around the disc so that they cross on their way out
    n_trees = int(rng.integers(3, 5))
    artery = np.zeros((size, size), bool)
    vein = np.zeros((size, size), bool)
    for _ in range(n_trees):
        artery |= _draw(_vessel_tree(rng, disc_c.copy(), size, depth=2), size, 0.8)
        vein |= _draw(_vessel_tree(rng, disc_c.copy(), size, depth=2), size, 1.15)
    artery &= fov
    vein &= fov
    crossing = artery & vein

    rgb[vein] = rgb[vein] * 0.35 + VEIN_RGB * 0.65
    rgb[artery] = rgb[artery] * 0.35 + ARTERY_RGB * 0.65
    # at a crossing the colours mix: neither the artery's nor the vein's colour alone tells the class
    rgb[crossing] = rgb[crossing] * 0.3 + (ARTERY_RGB + VEIN_RGB) / 2 * 0.7

    label = np.zeros((size, size), np.uint8)
    label[artery] = LABELS["artery"]
    label[vein] = LABELS["vein"]
    label[crossing] = LABELS["crossing"]
    label[disc] = 0

    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    rgb[~fov] = 0.0
    return np.clip(rgb * 255, 0, 255).astype(np.uint8), label, fov


def _write(case: tuple, image_dir: Path, label_dir: Path, case_id: str) -> None:
    rgb, label, fov = case
    mask_dir = image_dir.parent / image_dir.name.replace("images", "masks")
    mask_dir.mkdir(exist_ok=True)
    save_rgb_case(rgb, label, image_dir, label_dir, case_id)
    Image.fromarray(fov.astype(np.uint8), mode="L").save(mask_dir / f"{case_id}.png")


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 24, n_test: int = 6, size: int = 96,
             seed: int = 0, overwrite: bool = False) -> Path:
    return write_dataset(
        out_root, dataset_id, NAME, lambda i: make_case(case_rng(seed, i), size), _write, n_train, n_test,
        channel_names={"0": "R", "1": "G", "2": "B"}, labels=LABELS, file_ending=".png",
        description=f"nnunet-ext A/V fundus phantom: {size}x{size} RGB, artery / vein / crossing, seed {seed}",
        overwrite=overwrite)
