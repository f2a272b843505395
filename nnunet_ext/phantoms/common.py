"""Pieces the phantom generators share: seeding per case, smooth noise, writing an nnU-Net raw data set."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from PIL import Image
from scipy import ndimage

from nnunet_ext.fileio import atomic_output_dir, dataset_id_clashes


def case_rng(seed: int, index: int) -> np.random.Generator:
    """One generator per case so that a case does not change when the number of cases does."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency texture (organ parenchyma, fundus choroid)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def grid(shape: tuple[int, ...], spacing: tuple[float, ...] | None = None) -> list[np.ndarray]:
    """Open-grid coordinates of every pixel/voxel, in mm when spacing is given."""
    coords = np.ogrid[tuple(slice(0, n) for n in shape)]
    if spacing is None:
        return list(coords)
    return [c * s for c, s in zip(coords, spacing, strict=True)]


def save_rgb_case(rgb: np.ndarray, label: np.ndarray, image_dir: Path, label_dir: Path, case_id: str) -> None:
    """An RGB image as one `_0000.png` (nnU-Net's NaturalImage2DIO) and its label map as a grey PNG."""
    Image.fromarray(rgb, mode="RGB").save(image_dir / f"{case_id}_0000.png")
    Image.fromarray(label, mode="L").save(label_dir / f"{case_id}.png")


def write_dataset(out_root: Path, dataset_id: int, name: str, make_case: Callable[[int], tuple],
                  write_case: Callable[[tuple, Path, Path, str], None], n_train: int, n_test: int,
                  channel_names: Mapping[str, str], labels: Mapping[str, int], file_ending: str,
                  description: str, overwrite: bool = False, **dataset_json_extra) -> Path:
    """Generate cases with make_case(index) and write them with write_case(case, image_dir, label_dir, case_id).

    Cases 0..n_train-1 go to imagesTr/labelsTr, the next n_test to imagesTs/labelsTs (the reference for evaluation).
    """
    target = Path(out_root) / f"Dataset{dataset_id:03d}_{name}"
    clashes = dataset_id_clashes(Path(out_root), dataset_id, target)
    with atomic_output_dir(target, overwrite=overwrite, also_replace=clashes) as tmp:
        for split, indices in (("Tr", range(n_train)), ("Ts", range(n_train, n_train + n_test))):
            (tmp / f"images{split}").mkdir()
            (tmp / f"labels{split}").mkdir()
            for i in indices:
                write_case(make_case(i), tmp / f"images{split}", tmp / f"labels{split}", f"{name.lower()}_{i:03d}")
        generate_dataset_json(str(tmp), channel_names=dict(channel_names), labels=dict(labels),
                              num_training_cases=n_train, file_ending=file_ending, dataset_name=name,
                              description=description, **dataset_json_extra)
    return target


@dataclass
class FundusBackground:
    yy: np.ndarray
    xx: np.ndarray
    centre: np.ndarray
    fov: np.ndarray
    texture: np.ndarray  # the smooth noise field the choroid was modulated with
    rgb: np.ndarray  # float, about 0..1
    disc_c: np.ndarray
    disc_r: float
    disc: np.ndarray


def fundus_background(rng: np.random.Generator, size: int, tint: tuple[float, float, float], texture: float,
                      disc_radius: tuple[float, float]) -> FundusBackground:
    """A fundus photograph without vessels or lesions: circular field of view, vignetted textured choroid of the
    given tint, and a round optic disc left or right of centre (disc_radius as fractions of the image size)."""
    yy, xx = grid((size, size))
    centre = np.array([size / 2, size / 2])
    radius = 0.47 * size
    r = np.hypot(yy - centre[0], xx - centre[1])
    vignette = 1.0 - 0.35 * (r / radius) ** 2
    noise = smooth_noise(rng, (size, size), sigma=size / 20)
    rgb = (np.array(tint) * rng.uniform(0.85, 1.15))[None, None, :] * (vignette + texture * noise)[..., None]
    side = rng.choice([-1, 1])
    disc_c = centre + np.array([rng.normal(0, 0.04 * size), side * rng.uniform(0.18, 0.26) * size])
    disc_r = rng.uniform(*disc_radius) * size
    disc = (yy - disc_c[0]) ** 2 + (xx - disc_c[1]) ** 2 < disc_r ** 2
    rgb[disc] = rgb[disc] * 0.3 + np.array([0.95, 0.85, 0.55]) * 0.7
    return FundusBackground(yy, xx, centre, r < radius, noise, rgb, disc_c, disc_r, disc)
