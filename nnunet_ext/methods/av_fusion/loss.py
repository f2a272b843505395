"""Artery/vein classes found by name in dataset.json, and the binary branch losses of the A/V fusion method.

A crossing (or "uncertain") pixel belongs to both vessels: the artery branch learns artery = {artery, crossing},
the vein branch vein = {vein, crossing}. The multi-class decision about such pixels is left to the fusion head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

ARTERY = re.compile(r"arter")
VEIN = re.compile(r"vein|venous|venule")
SHARED = re.compile(r"uncertain|crossing|cross|overlap|unknown|both")


@dataclass(frozen=True)
class AVLabels:
    artery: tuple[int, ...]  # label values that count as artery for G_A
    vein: tuple[int, ...]  # label values that count as vein for G_V
    names: dict  # name -> value of the classes found, for the log

    def describe(self) -> str:
        return f"artery branch = labels {list(self.artery)}, vein branch = labels {list(self.vein)} ({self.names})"


def find_av_labels(labels: dict, dataset_name: str = "this data set") -> AVLabels:
    """Artery, vein and optional crossing/uncertain classes by name (case-insensitive) in dataset.json's labels."""
    found: dict[str, list[tuple[str, int]]] = {"artery": [], "vein": [], "shared": []}
    for name, value in labels.items():
        if name == "ignore":
            continue
        if not isinstance(value, int):
            raise ValueError(f"{dataset_name}: label {name!r} is a region {value!r}; the A/V fusion trainers need "
                             f"plain class labels (0 background, artery, vein, optionally crossing)")
        key = name.lower()
        for kind, pattern in (("shared", SHARED), ("artery", ARTERY), ("vein", VEIN)):
            if pattern.search(key):
                found[kind].append((name, value))
                break
    for kind in ("artery", "vein"):
        if len(found[kind]) != 1:
            what = "no" if not found[kind] else f"{len(found[kind])} ({[n for n, _ in found[kind]]})"
            raise ValueError(
                f"{dataset_name}: the A/V fusion trainers need exactly one {kind} class in dataset.json's labels, "
                f"found {what}; labels are {labels}. Name the classes e.g. 'artery', 'vein' and optionally "
                f"'uncertain' or 'crossing'")
    shared = tuple(v for _, v in found["shared"])
    (a_name, a), (v_name, v) = found["artery"][0], found["vein"][0]
    names = {a_name: a, v_name: v, **{n: val for n, val in found["shared"]}}
    return AVLabels(artery=(a, *shared), vein=(v, *shared), names=names)


def branch_target(target: torch.Tensor, values: tuple[int, ...]) -> torch.Tensor:
    """(b, 1, ...) label map -> (b, 1, ...) float 0/1 map of the given label values."""
    return torch.isin(target, torch.as_tensor(values, device=target.device, dtype=target.dtype)).float()


class BranchLoss(nn.Module):
    """nnU-Net's Dice + BCE (region style, one channel) on the artery and the vein branch, averaged.

    With an ignore label, its pixels count for neither branch (nnU-Net's convention: the mask is the last target
    channel)."""

    def __init__(self, av: AVLabels, batch_dice: bool, ignore_label: int | None = None, ddp: bool = False):
        super().__init__()
        self.av = av
        self.ignore_label = ignore_label
        self.loss = DC_and_BCE_loss({}, {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": ddp},
                                    use_ignore_label=ignore_label is not None,
                                    dice_class=MemoryEfficientSoftDiceLoss)

    def one(self, logits: torch.Tensor, target: torch.Tensor, values: tuple[int, ...]) -> torch.Tensor:
        region = branch_target(target, values)
        if self.ignore_label is not None:
            region = torch.cat((region, (target == self.ignore_label).float()), 1)
        return self.loss(logits, region)

    def forward(self, artery_logits: torch.Tensor, vein_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.one(artery_logits, target, self.av.artery) + self.one(vein_logits, target, self.av.vein))
