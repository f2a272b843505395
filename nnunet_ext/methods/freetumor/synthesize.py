"""One synthetic tumour in one case or training patch: shape + texture + appearance + label, all from one seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_ext.methods.freetumor.appearance import (
    DEFAULT_CONTRAST_HU,
    DEFAULT_CONTRAST_IN_ORGAN_STD,
    ChannelFrame,
    OrganStats,
    compose,
    texture,
)
from nnunet_ext.methods.freetumor.shape import SIZE_CLASSES_MM, TumourShape, choose_size_class, eroded, sample_shape

CONTRAST_JITTER = (0.7, 1.3)  # each tumour's difference is the organ's, scaled by U[0.7, 1.3]
TEXTURE_AMPLITUDE = 0.3
MAX_ORGAN_SHARE = 0.5


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

    pairs: {organ label: tumour label} (validated, see labels.py); spacing: of the arrays the synthesizer will see (the
    plans' spacing for nnU-Net patches); stats: OrganStats per organ label, whose measured real-tumour difference is
    used where there is one; frames: how each channel was normalised (CT: the default contrast range is in HU, and
    results are clipped as nnU-Net clips real intensities; None: every channel is plain, e.g. raw HU with
    `nnunet_ext synth`); contrast_hu: the default range of organ-minus-tumour differences in HU, negative for
    hyperdense tumours; max_organ_share: the largest share of the organ's voxels (in the patch) a tumour may take.
    """

    def __init__(self, pairs: Mapping[int, int], spacing: Sequence[float],
                 stats: Mapping[int, OrganStats] | None = None,
                 size_probabilities: Mapping[str, float] | None = None, texture_amplitude: float = TEXTURE_AMPLITUDE,
                 contrast_jitter: tuple[float, float] = CONTRAST_JITTER, margin_mm: float | None = None,
                 frames: Sequence[ChannelFrame] | None = None,
                 contrast_hu: tuple[float, float] = DEFAULT_CONTRAST_HU, max_organ_share: float = MAX_ORGAN_SHARE):
        self.pairs = {int(o): int(t) for o, t in pairs.items()}
        self.spacing = tuple(float(s) for s in spacing)
        self.stats = dict(stats or {})
        self.size_probabilities = size_probabilities
        self.texture_amplitude = texture_amplitude
        self.contrast_jitter = contrast_jitter
        self.margin_mm = margin_mm
        self.frames = list(frames) if frames is not None else None
        low, high = sorted(float(c) for c in contrast_hu)
        if low * high < 0:
            raise ValueError(f"contrast_hu {tuple(contrast_hu)}: both ends must have one sign (> 0 hypodense, < 0 "
                             f"hyperdense)")
        self.contrast_hu = (low, high)
        if not 0 < max_organ_share <= 1:
            raise ValueError(f"max_organ_share must lie in (0, 1], got {max_organ_share}")
        self.max_organ_share = float(max_organ_share)

    def eligible_organs(self, seg: np.ndarray, min_voxels: int = 8) -> list[int]:
        """Organs in seg that can take a tumour. A patch holding any real tumour is left alone (FreeTumor
        synthesises on healthy organs; a real tumour there is better supervision than a synthetic one)."""
        if any(np.any(seg == t) for t in self.pairs.values()):
            return []
        return [o for o in self.pairs if np.count_nonzero(seg == o) >= min_voxels]

    def _frame(self, c: int) -> ChannelFrame:
        return self.frames[c] if self.frames is not None else ChannelFrame(True)  # plain HU: std 1, no clip

    def clip_bounds(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) a synthetic intensity is clipped to."""
        frames = [self._frame(c) for c in range(n_channels)]
        return np.array([f.low for f in frames], float), np.array([f.high for f in frames], float)

    def difference(self, organ: int, image: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Organ minus tumour per channel for one tumour: the measured real-tumour difference x the jitter, else a draw
        from the default range (HU through the channel's CT scale; organ std units for other channels)."""
        measured = self.stats[organ].difference() if organ in self.stats else None
        if measured is not None:
            return measured * rng.uniform(*self.contrast_jitter)
        fraction = rng.uniform()  # one draw for all channels: a tumour is equally conspicuous in each
        sign = 1.0 if self.contrast_hu[0] >= 0 else -1.0
        out = np.empty(image.shape[0])
        for c in range(image.shape[0]):
            frame = self._frame(c)
            if frame.ct:
                low, high = (frame.hu_to_normalised(abs(v)) for v in self.contrast_hu)
            else:
                organ_std = float(image[c][seg == organ].std())
                low, high = (k * organ_std for k in DEFAULT_CONTRAST_IN_ORGAN_STD)
            out[c] = sign * (min(low, high) + fraction * abs(high - low))
        return out

    def largest_difference(self, n_channels: int) -> float:
        """The largest organ-minus-tumour magnitude the procedural mode can insert (scales a generator's output)."""
        values = [1.0]
        for organ in self.pairs:
            s = self.stats.get(organ)
            if s is not None and s.difference() is not None:
                values.append(float(np.abs(s.difference()).max() * self.contrast_jitter[1]))
                continue
            for c in range(n_channels):
                frame = self._frame(c)
                if frame.ct:
                    values.append(frame.hu_to_normalised(max(abs(v) for v in self.contrast_hu)))
                elif s is not None:
                    values.append(DEFAULT_CONTRAST_IN_ORGAN_STD[1] * s.organ_std[c])
        return max(values)

    def sample(self, seg: np.ndarray, organ: int, rng: np.random.Generator,
               size_class: str | None = None) -> tuple[TumourShape, np.ndarray] | None:
        """(shape, texture) for a tumour in organ, or None when the organ has no room. A tumour larger than
        max_organ_share of the organ is redrawn one size class smaller (a tumour that swallows its organ teaches
        "organ = tumour")."""
        organ_mask = seg == organ
        n_organ = int(organ_mask.sum())
        candidates = None
        if self.margin_mm is not None:
            candidates = eroded(organ_mask, self.spacing, self.margin_mm)
        size_class = size_class or choose_size_class(rng, self.size_probabilities)
        order = list(SIZE_CLASSES_MM)
        for smaller in reversed(order[:order.index(size_class) + 1]):
            shape = sample_shape(organ_mask, self.spacing, rng, smaller, self.size_probabilities,
                                 candidates=candidates)
            if shape is None:
                return None
            if shape.mask.sum() <= self.max_organ_share * n_organ:
                return shape, texture(rng, shape.mask.shape, self.spacing, self.texture_amplitude)
        return None

    def synthesise(self, image: np.ndarray, seg: np.ndarray, organ: int, rng: np.random.Generator,
                   size_class: str | None = None, difference_map: np.ndarray | None = None) -> Synthesis | None:
        """A new (image, seg) with one tumour in organ; None when the organ has no room for one.

        image: (C, ...) float; seg: (...) int. difference_map: the generator's map for this organ (...), else the
        procedural difference.
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
        low, high = (b.reshape((-1,) + (1,) * seg.ndim) for b in self.clip_bounds(image.shape[0]))
        new_image[box] = np.clip(compose(new_image[box], shape.soft[None], local_difference, tex[None]), low, high)
        new_seg = seg.copy()
        new_seg[shape.box][shape.mask] = self.pairs[organ]
        return Synthesis(new_image, new_seg, shape, organ, self.pairs[organ], np.asarray(difference, float))
