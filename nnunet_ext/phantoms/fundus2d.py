"""A fundus-photograph-like 2D RGB phantom.

Each image: a circular field of view on black, an orange-red choroid with smooth texture and vignetting, a bright
optic disc (label 1, large), a tree of dark-red vessels branching from the disc (label 2, thin, 1-3 px) and, in
some images, dark round lesions (label 3, small). Three structures of very different size and shape, as in the real
fundus sets the A/V and tumour methods target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_ext.phantoms.common import case_rng, grid, save_rgb_case, smooth_noise, write_dataset

LABELS = {"background": 0, "optic_disc": 1, "vessel": 2, "lesion": 3}
CONFIGURATION = "2d"  # the nnU-Net configuration the demo and tests train
DEFAULT_ID = 791
# Foreground mean Dice the demo must reach with nnUNetTrainer_demo on the held-out cases. Measured 0.984 (CPU, seed 0,
# every class >= 0.95); a broken pipeline (wrong labels, background only, lost channels) lands below 0.5.
DEMO_DICE_FLOOR = 0.90
NAME = "PhantomFundus"


def _segment_distance(yy: np.ndarray, xx: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-8)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))


def _vessel_tree(rng: np.random.Generator, start: np.ndarray, size: int, depth: int = 3) -> list[tuple]:
    """Segments (p0, p1, width) of a random branching tree leaving the optic disc."""
    segments = []
    stack = [(start, rng.uniform(0, 2 * np.pi), 2.6, 0)]
    while stack:
        pos, angle, width, level = stack.pop()
        length = rng.uniform(0.25, 0.4) * size / (1 + 0.5 * level)
        n_steps = 8
        for _ in range(n_steps):
            angle += rng.normal(0, 0.18)
            nxt = pos + length / n_steps * np.array([np.sin(angle), np.cos(angle)])
            segments.append((pos, nxt, width))
            pos = nxt
        if level < depth:
            for turn in (-1, 1):
                stack.append((pos, angle + turn * rng.uniform(0.3, 0.8), max(1.0, width * 0.72), level + 1))
    return segments


def make_case(rng: np.random.Generator, size: int = 96, lesion_probability: float = 0.7) -> tuple:
    yy, xx = grid((size, size))
    centre = np.array([size / 2, size / 2])
    radius = 0.47 * size
    r = np.hypot(yy - centre[0], xx - centre[1])
    fov = r < radius
    label = np.zeros((size, size), np.uint8)

    # choroid: orange-red with vignetting and texture
    vignette = 1.0 - 0.35 * (r / radius) ** 2
    texture = smooth_noise(rng, (size, size), sigma=size / 20)
    base = np.array([0.72, 0.32, 0.14]) * rng.uniform(0.85, 1.15)
    rgb = base[None, None, :] * (vignette + 0.05 * texture)[..., None]

    # optic disc, left or right of centre as in left/right eyes
    side = rng.choice([-1, 1])
    disc_c = centre + np.array([rng.normal(0, 0.04 * size), side * rng.uniform(0.18, 0.26) * size])
    disc_r = rng.uniform(0.065, 0.09) * size
    disc = ((yy - disc_c[0]) / (disc_r * rng.uniform(0.9, 1.1))) ** 2 + ((xx - disc_c[1]) / disc_r) ** 2 < 1
    rgb[disc] = rgb[disc] * 0.3 + np.array([0.95, 0.85, 0.55]) * 0.7
    label[disc] = LABELS["optic_disc"]

    # vessels: dark red, drawn over the disc
    vessel = np.zeros((size, size), bool)
    for _ in range(rng.integers(3, 5)):
        for p0, p1, width in _vessel_tree(rng, disc_c.copy(), size):
            lo = np.floor(np.minimum(p0, p1) - width - 1).astype(int).clip(0, size)
            hi = np.ceil(np.maximum(p0, p1) + width + 2).astype(int).clip(0, size)
            if np.any(hi <= lo):
                continue
            sub_y, sub_x = yy[lo[0]:hi[0]], xx[:, lo[1]:hi[1]]
            vessel[lo[0]:hi[0], lo[1]:hi[1]] |= _segment_distance(sub_y, sub_x, p0, p1) < width / 2
    vessel &= fov
    rgb[vessel] = rgb[vessel] * 0.45 + np.array([0.45, 0.08, 0.06]) * 0.55
    label[vessel] = LABELS["vessel"]

    # lesions: dark, pigmented, round-ish, away from the disc
    if rng.uniform() < lesion_probability:
        for _ in range(rng.integers(1, 3)):
            for _attempt in range(20):
                c = centre + rng.uniform(-0.3, 0.3, 2) * size
                if np.hypot(*(c - disc_c)) > disc_r + 0.12 * size:
                    break
            lr = rng.uniform(0.045, 0.08) * size
            lesion = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < lr ** 2 * (1 + 0.15 * texture)
            lesion &= fov
            rgb[lesion] = rgb[lesion] * 0.25 + np.array([0.22, 0.2, 0.17]) * 0.75
            label[lesion] = LABELS["lesion"]

    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    rgb[~fov] = 0.0
    label[~fov] = 0
    return (np.clip(rgb * 255, 0, 255).astype(np.uint8), label)


def _write(case: tuple, image_dir: Path, label_dir: Path, case_id: str) -> None:
    save_rgb_case(*case, image_dir, label_dir, case_id)


def generate(out_root: Path, dataset_id: int = DEFAULT_ID, n_train: int = 24, n_test: int = 6, size: int = 96,
             seed: int = 0, overwrite: bool = False) -> Path:
    return write_dataset(
        out_root, dataset_id, NAME, lambda i: make_case(case_rng(seed, i), size), _write, n_train, n_test,
        channel_names={"0": "R", "1": "G", "2": "B"}, labels=LABELS, file_ending=".png",
        description=f"nnunet-ext fundus phantom: {size}x{size} RGB, optic disc / vessels / lesions, seed {seed}",
        overwrite=overwrite)
