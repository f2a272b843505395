"""FocusNetV2 losses: SOL heatmap (penalty-reduced focal, or the original's MSE), SOS binary focal + Tversky-Dice,
and the shape-prior terms.

Organs missing from a case contribute nothing (their entries are masked out), as PDDCA has such cases.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def heatmap_loss(heat_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """MSE between sigmoid(heat_logits) and the Gaussian targets, averaged over the (item, organ) pairs that have a
    target (valid[b, k]); zero, still attached to the graph, when none has.

    The original's loss. Its voxel mean is won by predicting zeros: a Gaussian covers a few dozen of ~10^5 voxels, so
    the all-zero map scores ~1e-3 and a head trained on it collapses (measured); kept for the ablation."""
    err = ((torch.sigmoid(heat_logits.float()) - targets) ** 2).flatten(2).mean(2)
    weight = valid.float()
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def heatmap_focal_loss(heat_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced focal loss on Gaussian centre heatmaps (CenterNet's), normalised by the number of centres.

    The voxel at a target's maximum is the centre: -(1 - p)^alpha log p pulls it to 1. Every other voxel is pushed
    towards 0 by -(1 - y)^beta p^alpha log(1 - p), the push weakened near the centre by (1 - y)^beta. Dividing by the
    number of centres, not of voxels, keeps the centre term from drowning in the background, so the all-zero map
    is no minimum. Maps with an all-zero target (organ in the case but outside the patch) only push down; pairs with
    valid[b, k] False (organ missing from the case) count nothing."""
    logits = heat_logits.float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    flat_t = targets.flatten(2)
    top = flat_t.amax(2, keepdim=True)
    centre = ((flat_t == top) & (top > 0)).view_as(targets)
    pos = (1 - p) ** alpha * log_p * centre
    neg = (1 - targets) ** beta * p ** alpha * log_not_p * ~centre
    weight = valid.float().view(*valid.shape, *([1] * (targets.ndim - 2)))
    centres = (centre.flatten(2).any(2) & valid).sum().clamp_min(1)
    return -((pos + neg) * weight).sum() / centres


def binary_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    p_true = torch.exp(-bce)
    return ((1 - p_true) ** gamma * bce).mean()


def tversky_dice(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                 smooth: float = 1.0) -> torch.Tensor:
    """1 - Tversky index per crop (false negatives weigh more than false positives for thin organs), averaged."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.flatten(1)
    tp = (p * t).sum(1)
    fp = (p * (1 - t)).sum(1)
    fn = ((1 - p) * t).sum(1)
    return (1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)).mean()


def sos_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return binary_focal(logits, target) + tversky_dice(logits, target)


def reconstruction_loss(recon_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(recon_logits.float(), target) + tversky_dice(recon_logits, target)


def shape_prior_terms(ae, organ: int, pred_probs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The SOS-Net side of the adversarial stage: latent MSE, MSE of the two intermediate encoder maps and the MSE
    between sigmoid(prediction) and the reference, with the autoencoder's code of the reference as the target."""
    latent_p, feats_p, _ = ae(organ, pred_probs)
    with torch.no_grad():
        latent_t, feats_t, _ = ae(organ, target)
    return {"latent": F.mse_loss(latent_p, latent_t),
            "feature": sum(F.mse_loss(a, b) for a, b in zip(feats_p, feats_t, strict=True)),
            "mse": F.mse_loss(pred_probs, target)}


def autoencoder_adversarial_loss(ae, organ: int, pred_probs: torch.Tensor, target: torch.Tensor,
                                 margin: float = 1.0) -> torch.Tensor:
    """The autoencoder side: reconstruct the true shapes well and push the predicted shapes' codes away from the true
    ones in latent space; the push is a hinge (at most `margin`), so the autoencoder cannot win by inflating codes."""
    latent_t, _, recon_t = ae(organ, target)
    latent_p, _, _ = ae(organ, pred_probs.detach())
    return reconstruction_loss(recon_t, target) + F.relu(margin - F.mse_loss(latent_p, latent_t))
