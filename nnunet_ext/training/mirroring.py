"""Left/right label pairs and nnU-Net's mirroring.

nnU-Net mirrors training patches along every spatial axis and averages mirrored predictions at inference. Where the
labels come in left/right pairs (parotid_l / parotid_r, optic nerves, kidneys), a patch mirrored left-right shows the
left structure where the right one lies, still labelled left: an image and its mirror image carry the same labels, so
with symmetric anatomy the network cannot learn which side is which, only "a parotid", and splits the pair by chance.
nnU-Net's maintainers point such data sets to its no-mirroring trainers; this mixin leaves out only the left-right axis,
found from the label names and the plans, and keeps nnU-Net's mirroring along the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

LEFT = {"l", "left", "lt", "sin", "sinister"}
RIGHT = {"r", "right", "rt", "dex", "dexter"}
_SPLIT = re.compile(r"([_\s\-.]+)")


def _side_key(name: str) -> tuple[str, str] | None:
    """(side, the name with its side token replaced) for a name with exactly one side token, else None."""
    parts = _SPLIT.split(name.strip())
    hits = [i for i, p in enumerate(parts) if p.lower() in LEFT | RIGHT]
    if len(hits) != 1:
        return None
    i = hits[0]
    side = "left" if parts[i].lower() in LEFT else "right"
    return side, "".join(parts[:i] + ["{side}"] + parts[i + 1:]).lower()


def lateral_pairs(labels: Mapping[str, object]) -> list[tuple[str, str]]:
    """(left name, right name) for every pair of label names that differ only in a side token (_l/_r, left/right, lt/rt,
    Left-/Right- ...), in the order of the left names."""
    keyed: dict[tuple[str, str], str] = {}
    for name in labels:
        found = _side_key(str(name))
        if found is not None:
            keyed.setdefault(found, str(name))
    return [(name, keyed[("right", key)]) for (side, key), name in keyed.items()
            if side == "left" and ("right", key) in keyed]


def lateral_patch_axis(raw_axis: int, transpose_forward: Sequence[int], patch_dims: int) -> int | None:
    """The patch axis (nnU-Net's mirror-axis numbering) of raw array axis `raw_axis` after the plans' transpose; None
    for a 2d configuration whose slices are cut across that axis (nothing to mirror there)."""
    position = list(transpose_forward).index(raw_axis)
    if patch_dims == len(transpose_forward):
        return position
    offset = len(transpose_forward) - patch_dims  # 2d patches are the last transposed axes
    return position - offset if position >= offset else None


class LateralMirroringMixin:
    """No mirroring along the left-right axis, in training and at inference, when the labels hold left/right pairs.
    Put it before the nnU-Net trainer class in the bases."""

    # raw array axis that runs left-right, in the order nnU-Net's reader gives (SimpleITK: 0 z, 1 y, 2 x; x is the
    # patient's left-right axis in axial CT and MR); None: nnU-Net's mirroring on every axis, pairs or not
    lateral_axis: int | None = 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        pairs = lateral_pairs(self.dataset_json["labels"])
        if self.lateral_axis is None or not pairs or not mirror_axes:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        transpose = self.plans_manager.transpose_forward
        if not 0 <= int(self.lateral_axis) < len(transpose):
            raise ValueError(f"{self.__class__.__name__}.lateral_axis must be a raw array axis "
                             f"(0-{len(transpose) - 1}) or None, got {self.lateral_axis!r}")
        axis = lateral_patch_axis(int(self.lateral_axis), transpose, len(self.configuration_manager.patch_size))
        if axis is None or axis not in mirror_axes:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        kept = tuple(a for a in mirror_axes if a != axis)
        self.inference_allowed_mirroring_axes = kept or None
        names = ", ".join(f"{a}/{b}" for a, b in pairs)
        self.print_to_log_file(f"Left/right label pairs ({names}): no mirroring along patch axis {axis} (raw axis "
                               f"{self.lateral_axis}, left-right), in training and inference; mirror axes {kept}")
        return rotation, dummy_2d, initial_patch_size, kept or None
