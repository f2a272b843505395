"""What a synthetic tumour looks like: new image = image - blurred shape * difference * texture, inside the organ.

The difference (organ minus tumour intensity) comes from one of two places:
- procedural: intensity statistics of real tumours against their organ, measured on the training set in nnU-Net's
  normalised intensity space (the space the patches live in). An organ without enough real tumour voxels gets the
  documented default range: 40-150 HU darker than the organ (hypodense, as most liver, pancreas and kidney lesions on
  portal-venous CT; FreeTumor's own procedural range), converted to normalised units through the plans' CT
  normalisation. Channels that are not CT-normalised take DEFAULT_CONTRAST_IN_ORGAN_STD x the organ's std instead.
  A contrast of ~1.5 organ std, the old default, was ~17 HU in a liver: faint next to real lesions (25-150 HU).
- learned: the difference map of FreeTumorSynthesisTrainer's generator, the channel of the tumour's own organ.

Synthetic intensities are clipped to the range nnU-Net's CT normalisation clips real ones to (the foreground's 0.5
and 99.5 percentiles): a tumour darker than any preprocessed voxel can be would be trivially easy and unlike a real one.

The texture is a smooth random field made per tumour, in the tumour's box only (FreeTumor crops one precomputed
420x300x320 volume; holding such a volume in every augmentation worker costs GBs for nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

DEFAULT_CONTRAST_HU = (40.0, 150.0)  # organ minus tumour, drawn per tumour (FreeTumor's procedural range)
# non-CT channels: the CT range over a typical liver's ~25 HU standard deviation
DEFAULT_CONTRAST_IN_ORGAN_STD = (1.5, 6.0)
MIN_TUMOUR_VOXELS = 50  # fewer real tumour voxels than this: the default contrast is used
TEXTURE_GRAIN_MM = 4.0


@dataclass
class OrganStats:
    """Intensity statistics of one organ and its tumours (per input channel), in normalised intensities."""

    organ_mean: list[float]
    organ_std: list[float]
    n_organ: int
    tumour_mean: list[float] | None = None
    tumour_std: list[float] | None = None
    n_tumour: int = 0

    @property
    def measured(self) -> bool:
        """Whether the difference comes from real tumours (else the default contrast)."""
        return self.tumour_mean is not None and self.n_tumour >= MIN_TUMOUR_VOXELS

    def difference(self) -> np.ndarray | None:
        """Organ mean minus tumour mean per channel (> 0: the tumour is darker); None when too few real tumour voxels
        were measured (the synthesizer's default range applies)."""
        if not self.measured:
            return None
        return np.asarray(self.organ_mean, float) - np.asarray(self.tumour_mean, float)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> OrganStats:
        return cls(**d)


def measure_stats(cases: Iterable[tuple[np.ndarray, np.ndarray]], pairs: Mapping[int, int],
                  max_voxels_per_case: int = 20000, seed: int = 0) -> dict[int, OrganStats]:
    """Organ and tumour intensity statistics over cases of (image (C, ...), seg (...) or (1, ...)).

    Organ voxels are those of the organ label (its tumours excluded); each case contributes at most
    max_voxels_per_case voxels per structure (a random subset), so huge livers do not drown small pancreases.
    """
    rng = np.random.default_rng(seed)
    samples: dict[int, dict[str, list[np.ndarray]]] = {o: {"organ": [], "tumour": []} for o in pairs}
    for image, seg in cases:
        seg = np.asarray(seg)
        if seg.ndim == image.ndim:
            seg = seg[0]
        flat_image = image.reshape(image.shape[0], -1)
        flat_seg = seg.reshape(-1)
        for organ, tumour in pairs.items():
            for key, label in (("organ", organ), ("tumour", tumour)):
                idx = np.flatnonzero(flat_seg == label)
                if idx.size > max_voxels_per_case:
                    idx = rng.choice(idx, max_voxels_per_case, replace=False)
                if idx.size:
                    samples[organ][key].append(flat_image[:, idx])
    stats = {}
    for organ, s in samples.items():
        if not s["organ"]:
            continue
        o = np.concatenate(s["organ"], 1)
        t = np.concatenate(s["tumour"], 1) if s["tumour"] else None
        stats[organ] = OrganStats(o.mean(1).tolist(), o.std(1).tolist(), int(o.shape[1]),
                                  None if t is None else t.mean(1).tolist(), None if t is None else t.std(1).tolist(),
                                  0 if t is None else int(t.shape[1]))
    return stats


@dataclass(frozen=True)
class ChannelFrame:
    """How nnU-Net normalised one input channel: for CTNormalization the HU scale (std) and the clip bounds, in
    normalised units; other schemes have no fixed scale (ct False)."""

    ct: bool
    std: float = 1.0
    low: float = -np.inf
    high: float = np.inf

    def hu_to_normalised(self, hu: float) -> float:
        return hu / self.std


def channel_frames(plans: Mapping, normalization_schemes: Sequence[str]) -> list[ChannelFrame]:
    """One frame per input channel from the plans' foreground intensity properties (the values nnU-Net's
    CTNormalization uses: (clip(x, p0.5, p99.5) - mean) / std)."""
    properties = plans.get("foreground_intensity_properties_per_channel", {})
    frames = []
    for c, scheme in enumerate(normalization_schemes):
        p = properties.get(str(c)) or properties.get(c)
        if scheme != "CTNormalization" or not p:
            frames.append(ChannelFrame(False))
            continue
        std = max(float(p["std"]), 1e-8)
        frames.append(ChannelFrame(True, std, (float(p["percentile_00_5"]) - float(p["mean"])) / std,
                                   (float(p["percentile_99_5"]) - float(p["mean"])) / std))
    return frames


def texture(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], amplitude: float,
            grain_mm: float = TEXTURE_GRAIN_MM) -> np.ndarray:
    """1 + amplitude * smooth unit-std noise with a grain of about grain_mm, clipped at 0 (float32)."""
    cells = [max(2, int(np.ceil(n * s / grain_mm)) + 1) for n, s in zip(shape, spacing, strict=True)]
    coarse = rng.standard_normal(cells)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, cells, strict=True)], order=3, mode="nearest",
                         grid_mode=True)[tuple(slice(0, n) for n in shape)]
    field = (field - field.mean()) / (field.std() + 1e-6)
    return np.clip(1.0 + amplitude * field, 0.0, None).astype(np.float32)


def compose(image, soft, difference, texture_field):
    """image - soft * difference * texture. Works on numpy arrays and torch tensors (differentiable in difference);
    difference is per channel (C, 1, ...) or a map broadcastable to the image."""
    return image - soft * difference * texture_field
