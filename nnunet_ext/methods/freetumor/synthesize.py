"""One synthetic tumour in one case or training patch: shape + texture + appearance + label, all from one seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_ext.methods.freetumor.appearance import OrganStats, compose, texture
from nnunet_ext.methods.freetumor.shape import TumourShape, eroded, sample_shape

CONTRAST_JITTER = (0.7, 1.3)  # each tumour's difference is the organ's, scaled by U[0.7, 1.3]
TEXTURE_AMPLITUDE = 0.3


@dataclass
class Synthesis:
    image: np.ndarray  # (C, ...) float32, the new image
    seg: np.ndarray  # (...), the new label map
    shape: TumourShape
    organ: int
    tumour: int
    difference: np.ndarray  # per channel, after jitter (procedural mode) or nan (generator map)

    @property
    def mask(self) -> np.ndarray:
        full = np.zeros(self.seg.shape, bool)
        full[self.shape.box] = self.shape.mask
        return full


class TumourSynthesizer:
    """Procedural (or generator-driven) tumour synthesis for a fixed data set.

    pairs: {organ label: tumour label} (validated, see labels.py); stats: OrganStats per organ label (organs without
    stats get DEFAULT_CONTRAST_IN_ORGAN_STD relative to the organ's intensities in the patch itself); spacing: of the
    arrays the synthesizer will see (the plans' spacing for nnU-Net patches).
    """

    def __init__(self, pairs: Mapping[int, int], spacing: Sequence[float],
                 stats: Mapping[int, OrganStats] | None = None,
                 size_probabilities: Mapping[str, float] | None = None, texture_amplitude: float = TEXTURE_AMPLITUDE,
                 contrast_jitter: tuple[float, float] = CONTRAST_JITTER, margin_mm: float | None = None):
        self.pairs = {int(o): int(t) for o, t in pairs.items()}
        self.spacing = tuple(float(s) for s in spacing)
        self.stats = dict(stats or {})
        self.size_probabilities = size_probabilities
        self.texture_amplitude = texture_amplitude
        self.contrast_jitter = contrast_jitter
        self.margin_mm = margin_mm

    def eligible_organs(self, seg: np.ndarray, min_voxels: int = 8) -> list[int]:
        """Organs in seg that can take a tumour. A patch holding any real tumour is left alone (FreeTumor
        synthesises on healthy organs; a real tumour there is better supervision than a synthetic one)."""
        if any(np.any(seg == t) for t in self.pairs.values()):
            return []
        return [o for o in self.pairs if np.count_nonzero(seg == o) >= min_voxels]

    def organ_difference(self, organ: int, image: np.ndarray, organ_mask: np.ndarray) -> np.ndarray:
        if organ in self.stats:
            return self.stats[organ].difference()
        # no statistics for this organ: the default contrast relative to the organ as seen in this image
        values = image[:, organ_mask]
        return OrganStats(values.mean(1).tolist(), values.std(1).tolist(), values.shape[1]).difference()

    def sample(self, seg: np.ndarray, organ: int, rng: np.random.Generator,
               size_class: str | None = None) -> tuple[TumourShape, np.ndarray] | None:
        """(shape, texture) for a tumour in organ, or None when the organ has no room."""
        organ_mask = seg == organ
        candidates = None
        if self.margin_mm is not None:
            candidates = eroded(organ_mask, self.spacing, self.margin_mm)
        shape = sample_shape(organ_mask, self.spacing, rng, size_class, self.size_probabilities,
                             candidates=candidates)
        if shape is None:
            return None
        return shape, texture(rng, shape.mask.shape, self.spacing, self.texture_amplitude)

    def synthesise(self, image: np.ndarray, seg: np.ndarray, organ: int, rng: np.random.Generator,
                   size_class: str | None = None, difference_map: np.ndarray | None = None) -> Synthesis | None:
        """A new (image, seg) with one tumour in organ; None when the organ has no room for one.

        image: (C, ...) float; seg: (...) int. difference_map: the generator's map for this organ (...), else the
        procedural difference from the statistics.
        """
        if organ not in self.pairs:
            raise ValueError(f"label {organ} is not an organ of the mapping {self.pairs}")
        if image.shape[1:] != seg.shape:
            raise ValueError(f"image {image.shape} and label {seg.shape} differ in size")
        drawn = self.sample(seg, organ, rng, size_class)
        if drawn is None:
            return None
        shape, tex = drawn
        box = (slice(None), *shape.box)
        if difference_map is None:
            difference = self.difference(organ, image, seg, rng)
            local_difference = difference.reshape((-1,) + (1,) * seg.ndim)
        else:
            difference = np.full(image.shape[0], np.nan)
            local_difference = np.asarray(difference_map)[shape.box][None]
        new_image = image.astype(np.float32, copy=True)
        new_image[box] = compose(new_image[box], shape.soft[None], local_difference, tex[None])
        new_seg = seg.copy()
        new_seg[shape.box][shape.mask] = self.pairs[organ]
        return Synthesis(new_image, new_seg, shape, organ, self.pairs[organ], np.asarray(difference, float))

    def difference(self, organ: int, image: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The procedural difference per channel for one tumour: the organ's, times the contrast jitter."""
        return self.organ_difference(organ, image, seg == organ) * rng.uniform(*self.contrast_jitter)
