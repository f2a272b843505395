"""Exact region-of-interest crops and pastes, box placement and Gaussian centroid heatmaps.

Boxes are given by their start index and size along the trailing spatial axes of a tensor ([B, C, *spatial] or
any tensor whose last len(box) axes are spatial). Crops are views (no interpolation), so a crop pasted back where it
came from restores the tensor bit for bit, which is what lets the FocusNetV2 network replace S-Net's logits inside a
box and leave every other voxel untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def box_slices(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, size, strict=True))


def place_box(centre: Sequence[float], size: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Start of a box of `size` centred on `centre` and shifted (clamped) so that it lies inside `shape`."""
    start = []
    for c, n, s in zip(centre, size, shape, strict=True):
        if n > s:
            raise ValueError(f"ROI box {tuple(size)} does not fit into the spatial shape {tuple(shape)}")
        start.append(int(min(max(round(float(c)) - n // 2, 0), s - n)))
    return tuple(start)


def crop(tensor: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    spatial = tensor.shape[tensor.ndim - len(size):]
    for st, n, s in zip(start, size, spatial, strict=True):
        if st < 0 or st + n > s:
            raise ValueError(f"box start {tuple(start)} size {tuple(size)} leaves the spatial shape {tuple(spatial)}")
    return tensor[(Ellipsis, *box_slices(start, size))]


def paste(tensor: torch.Tensor, patch: torch.Tensor, start: Sequence[int]) -> torch.Tensor:
    """A copy of `tensor` with the box at `start` replaced by `patch` (out of place, so autograd stays intact)."""
    size = tuple(patch.shape[-len(start):])
    crop(tensor, start, size)  # bounds check with the same message
    out = tensor.clone()
    out[(Ellipsis, *box_slices(start, size))] = patch
    return out


def centroid(mask: torch.Tensor) -> tuple[float, ...] | None:
    """Centre of mass (voxel indices) of a boolean spatial mask, None when it is empty."""
    idx = torch.nonzero(mask, as_tuple=False)
    if idx.shape[0] == 0:
        return None
    return tuple(float(v) for v in idx.float().mean(0))


def gaussian_heatmap(shape: Sequence[int], centre: Sequence[float], sigma: Sequence[float],
                     floor: float = 0.01, device: torch.device | str = "cpu") -> torch.Tensor:
    """exp(-|x - centre|^2 / 2 sigma^2) per axis, 1 at the centre; values below `floor` are set to 0 (the spec)."""
    heat = torch.zeros((), device=device)
    for axis, (n, c, s) in enumerate(zip(shape, centre, sigma, strict=True)):
        coords = torch.arange(n, device=device, dtype=torch.float32) - float(c)
        view = [1] * len(shape)
        view[axis] = n
        heat = heat + (coords ** 2 / (2.0 * float(s) ** 2)).view(view)
    heat = torch.exp(-heat)
    return torch.where(heat < floor, torch.zeros_like(heat), heat)


def peak(heat: torch.Tensor) -> tuple[tuple[int, ...], float]:
    """(index, value) of the maximum of one spatial map; ties go to the first index in C order."""
    flat = int(torch.argmax(heat))
    index = []
    for n in reversed(heat.shape):
        index.append(flat % n)
        flat //= n
    return tuple(reversed(index)), float(heat.flatten().max())
