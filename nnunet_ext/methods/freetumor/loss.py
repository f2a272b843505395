"""FreeTumor's generator and discriminator losses (Wu et al. 2025), on voxel masks.

L_G = 0.1 * (1 - mean P_D(real | synthetic voxels)) + (1 - mean P_seg(tumour | synthetic voxels))
L_D = 0.5 * [(1 - mean P_D(synthetic | synthetic voxels)) + (1 - mean P_D(real | real tumour voxels))]
A batch without real tumour voxels contributes only the synthetic term to L_D (averaging over no voxels is
undefined, and the term would otherwise be a constant 1).
"""

from __future__ import annotations

import torch

from nnunet_ext.methods.freetumor.network import FAKE, REAL

ADVERSARIAL_WEIGHT = 0.1


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def generator_loss(disc_logits: torch.Tensor, seg_logits: torch.Tensor, fake: torch.Tensor,
                   tumour_labels: torch.Tensor, adversarial_weight: float = ADVERSARIAL_WEIGHT) -> dict:
    """disc_logits (B, 3, ...), seg_logits (B, K, ...) of the synthetic images; fake: bool (B, ...) synthetic
    voxels; tumour_labels: (B,) the label each sample's tumour carries."""
    p_real = torch.softmax(disc_logits.float(), 1)[:, REAL]
    p_seg = torch.softmax(seg_logits.float(), 1)
    index = tumour_labels.view(-1, 1, *([1] * (p_seg.ndim - 2))).expand(-1, 1, *p_seg.shape[2:])
    p_tumour = p_seg.gather(1, index)[:, 0]
    adversarial = 1 - masked_mean(p_real, fake)
    segmentation = 1 - masked_mean(p_tumour, fake)
    return {"loss": adversarial_weight * adversarial + segmentation, "adversarial": adversarial,
            "segmentation": segmentation}


def discriminator_loss(fake_logits: torch.Tensor, fake: torch.Tensor, real_logits: torch.Tensor | None = None,
                       real: torch.Tensor | None = None) -> torch.Tensor:
    fake_term = 1 - masked_mean(torch.softmax(fake_logits.float(), 1)[:, FAKE], fake)
    if real_logits is None or real is None or not bool(real.any()):
        return fake_term
    real_term = 1 - masked_mean(torch.softmax(real_logits.float(), 1)[:, REAL], real)
    return 0.5 * (fake_term + real_term)
