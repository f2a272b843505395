"""Which organs are small, and how large the ROI box around them is, from the preprocessed training labels.

Small organs: foreground classes whose median voxel count per case (over the cases that contain the class) lies
below `fraction` x the median foreground voxel count per case (default 1 %, the spec), at most `max_organs` of them,
smallest first. When no class passes the threshold the single smallest class is taken (logged as a fallback), so the
method still runs on a data set of similar-sized organs. A user override (names or label values) replaces the rule.

ROI box: per spatial axis the `percentile` (95) of the small organs' bounding-box extents over all training cases,
plus a margin on both sides (`margin_mm`, at least one voxel), rounded up to the SOS-Net's pooling factor on that
axis and clipped to the patch size. Everything is in the preprocessed (target spacing) voxel grid the networks see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

MAX_POOL = 2  # SOS-Net and shape autoencoder: at most two 2x poolings per axis
MIN_POOLED = 4  # and at least 4 voxels left along an axis after pooling


@dataclass
class CaseStats:
    """Voxel count and bounding-box extents (voxels per axis) of each present foreground label in one case. A 3D case
    trained with 2D patches has one extent per slice that shows the label (the box lives in the slice)."""

    counts: dict[int, int]
    extents: dict[int, list[tuple[int, ...]]]


def _extent(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i.max() - i.min() + 1) for i in np.nonzero(mask))


def case_stats(seg: np.ndarray, labels: Sequence[int], patch_dims: int | None = None) -> CaseStats:
    """seg: one case's label map (spatial axes, optionally with a leading channel axis of 1); patch_dims: 2 for a
    2d configuration of 3D data, else the spatial dimensionality of seg."""
    seg = np.asarray(seg)
    if seg.ndim >= 3 and seg.shape[0] == 1:
        seg = seg[0]
    patch_dims = seg.ndim if patch_dims is None else patch_dims
    counts, extents = {}, {}
    for lab in labels:
        mask = seg == lab
        n = int(mask.sum())
        if n == 0:
            continue
        counts[lab] = n
        if patch_dims == seg.ndim:
            extents[lab] = [_extent(mask)]
        else:
            flat = mask.reshape(-1, *mask.shape[seg.ndim - patch_dims:])
            extents[lab] = [_extent(m) for m in flat if m.any()]
    return CaseStats(counts, extents)


@dataclass
class SmallOrganSelection:
    labels: tuple[int, ...]
    names: tuple[str, ...]
    rule: str  # "threshold", "fallback-smallest" or "override"
    threshold_voxels: float
    median_voxels: dict[str, float] = field(default_factory=dict)
    median_foreground_voxels: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        medians = ", ".join(f"{n}: {self.median_voxels.get(n, 0):.0f}" for n in self.median_voxels)
        return (f"small organs {list(self.names)} (labels {list(self.labels)}, rule {self.rule}, threshold "
                f"{self.threshold_voxels:.1f} voxels = fraction of the median foreground "
                f"{self.median_foreground_voxels:.0f}); median voxels per case: {medians}")


def parse_override(value: str | Sequence[str | int] | None, label_names: Mapping[str, int]) -> tuple[int, ...] | None:
    """Names or label values (a comma-separated string or a sequence) -> label values; None stays None."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    by_value = {v: k for k, v in label_names.items()}
    out = []
    for item in items:
        if isinstance(item, str) and item in label_names:
            out.append(int(label_names[item]))
        elif str(item).lstrip("-").isdigit() and int(item) in by_value and int(item) != 0:
            out.append(int(item))
        else:
            raise ValueError(f"small-organ override: {item!r} is not a foreground label of this data set; "
                             f"labels are {dict(label_names)}")
    if len(set(out)) != len(out):
        raise ValueError(f"small-organ override names a label twice: {items}")
    return tuple(out)


def select_small_organs(stats: Sequence[CaseStats], label_names: Mapping[str, int], fraction: float = 0.01,
                        max_organs: int = 3, override: Sequence[int] | None = None) -> SmallOrganSelection:
    if not stats:
        raise ValueError("small-organ selection needs at least one training case")
    if not 0 < fraction < 1 or max_organs < 1:
        raise ValueError(f"small-organ selection: fraction must lie in (0, 1) and max_organs be >= 1, got "
                         f"{fraction} and {max_organs}")
    names = {int(v): k for k, v in label_names.items() if int(v) != 0}
    medians = {}
    for lab in names:
        counts = [s.counts[lab] for s in stats if lab in s.counts]
        if counts:
            medians[lab] = float(np.median(counts))
    median_fg = float(np.median([sum(s.counts.values()) for s in stats]))
    threshold = fraction * median_fg
    if override is not None:
        chosen, rule = tuple(override), "override"
    else:
        ranked = sorted(medians, key=lambda lab: (medians[lab], lab))
        chosen = tuple(lab for lab in ranked if medians[lab] < threshold)[:max_organs]
        rule = "threshold"
        if not chosen:
            chosen, rule = tuple(ranked[:1]), "fallback-smallest"
    missing = [names.get(lab, lab) for lab in chosen if lab not in medians]
    if missing:
        raise ValueError(f"small organs {missing} occur in no training case")
    return SmallOrganSelection(labels=tuple(sorted(chosen)), names=tuple(names[lab] for lab in sorted(chosen)),
                               rule=rule, threshold_voxels=threshold,
                               median_voxels={names[lab]: medians[lab] for lab in sorted(medians)},
                               median_foreground_voxels=median_fg)


def pooling_per_axis(box: Sequence[int]) -> tuple[int, ...]:
    """Number of 2x poolings the SOS-Net applies along each axis of a box: as many as divide the size and leave at
    least MIN_POOLED voxels, at most MAX_POOL. The box alone fixes the architecture (rebuilt from it at prediction)."""
    pools = []
    for n in box:
        p = 0
        while p < MAX_POOL and n % 2 == 0 and n // 2 >= MIN_POOLED:
            n //= 2
            p += 1
        pools.append(p)
    return tuple(pools)


def roi_box(extents: Sequence[Sequence[int]], patch_size: Sequence[int], spacing: Sequence[float],
            margin_mm: float = 3.0, percentile: float = 95.0) -> tuple[int, ...]:
    """extents: bounding-box sizes (voxels per axis) of every small-organ instance in the training cases."""
    if len(extents) == 0:
        raise ValueError("ROI box: no small-organ instance in the training cases")
    ext = np.percentile(np.asarray(extents, dtype=float), percentile, axis=0)
    box = []
    for e, s, p in zip(ext, spacing, patch_size, strict=True):
        margin = max(1, math.ceil(margin_mm / float(s)))
        raw = math.ceil(e) + 2 * margin
        pools = min(MAX_POOL, int(math.floor(math.log2(raw / MIN_POOLED)))) if raw >= 2 * MIN_POOLED else 0
        factor = 2 ** pools
        box.append(min(int(math.ceil(raw / factor) * factor), int(p)))
    return tuple(box)
