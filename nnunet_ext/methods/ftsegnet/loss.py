"""Dice + focal loss, the FTSegNet paper's alternative to nnU-Net's Dice + cross-entropy."""

from __future__ import annotations

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn
from torch.nn import functional as F


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, averaged over the
    pixels that are not the ignore label. Called like nnU-Net's RobustCrossEntropyLoss (logits, labels b,x,y(,z))."""

    def __init__(self, gamma: float = 2.0, ignore_index: int = -100):
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        ce = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        focal = (1 - torch.exp(-ce)) ** self.gamma * ce
        return (focal * valid).sum() / valid.sum().clamp_min(1)


class DC_and_Focal_loss(DC_and_CE_loss):
    """nnU-Net's Dice + CE with the CE term replaced by the focal loss (same ignore-label handling)."""

    def __init__(self, soft_dice_kwargs: dict, gamma: float = 2.0, weight_focal: float = 1.0, weight_dice: float = 1.0,
                 ignore_label: int | None = None):
        super().__init__(soft_dice_kwargs, {}, weight_ce=weight_focal, weight_dice=weight_dice,
                         ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        self.ce = FocalLoss(gamma, -100 if ignore_label is None else ignore_label)
