"""Tumour shapes: an ellipsoid in mm, elastically deformed, centred in the eroded organ, with a blurred boundary.

Sizes are physical. FreeTumor draws radii of 4/8/16/32 voxels on 1.5 mm CT; here the classes are those radii in mm
(6/12/24/48 mm) and every axis is converted with the data's own spacing, so a "small" tumour is equally small on
0.7 mm and on 5 mm slices. All work happens in a box around the tumour, never on the whole volume, and everything
random comes from the numpy Generator passed in (same seed -> identical shape).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# radius in mm per size class (FreeTumor's 4/8/16/32 voxels at 1.5 mm)
SIZE_CLASSES_MM = {"tiny": 6.0, "small": 12.0, "medium": 24.0, "large": 48.0}
DEFAULT_SIZE_PROBABILITIES = {"tiny": 0.25, "small": 0.35, "medium": 0.3, "large": 0.1}
RADIUS_SCALE = (0.75, 1.25)  # per axis, so the ellipsoid is not a sphere
BLUR_SIGMA_MM = (1.5, 3.0)  # FreeTumor's sigma of 1-2 voxels at 1.5 mm
REFERENCE_SPACING_MM = 1.5


@dataclass
class TumourShape:
    mask: np.ndarray  # bool, the tumour voxels (inside the organ), shape of the box
    soft: np.ndarray  # float32 in [0, 1]: mask with a blurred boundary, zero outside the organ
    box: tuple[slice, ...]  # where mask/soft lie in the full array
    centre: tuple[int, ...]  # voxel index in the full array
    size_class: str
    radii_mm: np.ndarray

    def paste(self, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(mask, soft) as full arrays of the given shape."""
        mask = np.zeros(shape, bool)
        soft = np.zeros(shape, np.float32)
        mask[self.box] = self.mask
        soft[self.box] = self.soft
        return mask, soft


def choose_size_class(rng: np.random.Generator, probabilities: Mapping[str, float] | None = None) -> str:
    probabilities = dict(DEFAULT_SIZE_PROBABILITIES if probabilities is None else probabilities)
    unknown = set(probabilities) - set(SIZE_CLASSES_MM)
    if unknown:
        raise ValueError(f"unknown tumour size classes {sorted(unknown)}; known: {list(SIZE_CLASSES_MM)}")
    names = list(probabilities)
    p = np.asarray([probabilities[n] for n in names], float)
    if p.min() < 0 or p.sum() <= 0:
        raise ValueError(f"size class probabilities must be >= 0 and not all 0, got {probabilities}")
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def eroded(organ: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Organ voxels at least margin_mm (physical distance) from the organ's boundary, computed in its bounding box."""
    organ = np.asarray(organ, bool)
    out = np.zeros_like(organ)
    if not organ.any() or margin_mm <= 0:
        return organ.copy()
    box = ndimage.find_objects(organ.astype(np.uint8))[0]
    # one voxel of padding so that the box edge counts as outside where the organ touches it inside the array
    padded = np.pad(organ[box], 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)[(slice(1, -1),) * organ.ndim]
    out[box] = distance > margin_mm
    return out


def _box_around(centre: Sequence[int], half: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape, strict=True))


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]) -> np.ndarray:
    """Zero-mean, unit-amplitude smooth field: noise on a coarse grid, interpolated (cheap elastic displacement)."""
    coarse = rng.standard_normal(tuple(max(2, c) for c in cells))
    return ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=1,
                        mode="nearest", grid_mode=True)[tuple(slice(0, n) for n in shape)]


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sample_shape(organ: np.ndarray, spacing: Sequence[float], rng: np.random.Generator,
                 size_class: str | None = None, size_probabilities: Mapping[str, float] | None = None,
                 margin_mm: float | None = None, elastic: float = 0.25, allowed: np.ndarray | None = None,
                 candidates: np.ndarray | None = None) -> TumourShape | None:
    """One tumour in the organ mask (2D or 3D), or None when the eroded organ has no room.

    margin_mm: erosion before the centre is drawn (default: a quarter of the smallest radius, at least the thickest
    spacing; organs too small for that fall back to the thickest spacing). elastic: displacement amplitude as a
    fraction of the radius. allowed: voxels the tumour may cover (default: the organ). candidates: precomputed eroded
    organ (saves the distance transform).
    """
    organ = np.asarray(organ, bool)
    spacing = np.asarray(spacing, float)
    if organ.ndim != spacing.size:
        raise ValueError(f"organ mask is {organ.ndim}D but spacing has {spacing.size} values")
    size_class = size_class or choose_size_class(rng, size_probabilities)
    if size_class not in SIZE_CLASSES_MM:
        raise ValueError(f"unknown size class {size_class!r}; known: {list(SIZE_CLASSES_MM)}")
    radii = SIZE_CLASSES_MM[size_class] * rng.uniform(*RADIUS_SCALE, organ.ndim)
    if candidates is None:
        margins = [margin_mm] if margin_mm is not None else [max(radii.min() / 4, spacing.max()), spacing.max()]
        for margin in margins:  # a small organ falls back to one voxel (thickest spacing) from its boundary
            candidates = eroded(organ, spacing, margin)
            if candidates.any():
                break
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        return None
    centre = np.unravel_index(int(idx[rng.integers(idx.size)]), organ.shape)
    sigma_mm = rng.uniform(*BLUR_SIGMA_MM)

    # the box holds the deformed ellipsoid plus the blur's tail
    half = np.ceil((radii.max() * (1 + 2 * elastic) + 3 * sigma_mm) / spacing).astype(int)
    box = _box_around(centre, half, organ.shape)
    local = tuple(np.arange(s.start, s.stop) - c for s, c in zip(box, centre, strict=True))
    coords = np.stack(np.meshgrid(*local, indexing="ij")).astype(np.float32)  # (ndim, *box)
    coords *= spacing.astype(np.float32).reshape((-1,) + (1,) * organ.ndim)  # mm
    shape = coords.shape[1:]
    # elastic deformation: a smooth displacement per axis, about one control point per radius
    cells = [int(np.ceil(n * s / max(radii.min(), 1e-3))) + 1 for n, s in zip(shape, spacing, strict=True)]
    amplitude = elastic * radii.min()
    displaced = coords + np.stack([amplitude * _smooth_field(rng, shape, cells) for _ in range(organ.ndim)])
    rotated = np.tensordot(_rotation(rng, organ.ndim).T.astype(np.float32), displaced, axes=1)
    quadric = np.sum((rotated / radii.astype(np.float32).reshape((-1,) + (1,) * organ.ndim)) ** 2, axis=0)

    allowed_box = (organ if allowed is None else np.asarray(allowed, bool))[box]
    mask = (quadric <= 1.0) & allowed_box
    mask[tuple(c - s.start for c, s in zip(centre, box, strict=True))] = True  # never empty
    soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma_mm / spacing, mode="constant")
    soft = np.clip(soft / max(float(soft.max()), 1e-6), 0, 1) * organ[box]
    return TumourShape(mask, soft.astype(np.float32), box, tuple(int(c) for c in centre), size_class, radii)
