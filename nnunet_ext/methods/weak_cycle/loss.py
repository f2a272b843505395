"""Losses of the cycle translation (U-GAT-IT style, least squares) and of the teacher-student stage.

Domain A is "disease", B is "normal". G_AB turns disease into normal, G_BA normal into disease. Discriminators D_B*
judge normal-looking images, D_A* disease-looking ones (global and local each).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits, l1_loss, mse_loss

# the original's values per data set (spec: adversarial 1, cycle 5-10, identity 10-50, CAM 1000-1400,
# reconstruction 10); BraTS is the default
# "adversarial_composite" is the original's second adversarial term, on the composited image (the spec's "adversarial
# on translated and composited images"); what it changes on the distractor phantom is in docs/weak_cycle.md
BRATS_LOSS_WEIGHTS = {"adversarial": 1.0, "adversarial_composite": 1.0, "cycle": 10.0, "identity": 10.0,
                      "cam": 1000.0, "reconstruction": 10.0}
ISIC_LOSS_WEIGHTS = {"adversarial": 1.0, "adversarial_composite": 1.0, "cycle": 5.0, "identity": 50.0,
                     "cam": 1400.0, "reconstruction": 10.0}
CYCLE_LOSS_WEIGHTS = BRATS_LOSS_WEIGHTS
LOSS_PRESETS = {"brats": BRATS_LOSS_WEIGHTS, "isic": ISIC_LOSS_WEIGHTS}
# every term cycle_generator_losses computes ("identity_attention" is ours, weight 0 unless a variant sets it)
LOSS_NAMES = (*BRATS_LOSS_WEIGHTS, "identity_attention")


def lsgan(outputs: tuple[torch.Tensor, torch.Tensor], real: bool) -> torch.Tensor:
    """Least-squares GAN loss on a discriminator's (patch logits, CAM logits)."""
    target = 1.0 if real else 0.0
    return sum(mse_loss(o, torch.full_like(o, target)) for o in outputs)


def cam_bce(logits: torch.Tensor, is_source: bool) -> torch.Tensor:
    """The generator's CAM classifier: 1 for images of its source domain (those it must change), 0 otherwise."""
    return binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if is_source else 0.0))


def discriminator_loss(discriminators: tuple[nn.Module, ...], real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Real images of a domain against the (detached) translated images into it, as the original: the composite
    is never shown to a discriminator."""
    loss = real.new_zeros(())
    for d in discriminators:
        loss = loss + lsgan(d(real), True) + lsgan(d(fake.detach()), False)
    return loss


def cycle_generator_losses(g_ab: nn.Module, g_ba: nn.Module, d_a: tuple[nn.Module, ...], d_b: tuple[nn.Module, ...],
                           disease: torch.Tensor, normal: torch.Tensor, composite: bool = True
                           ) -> tuple[dict[str, torch.Tensor], dict]:
    """Unweighted generator losses by name and the translations (for the discriminator step).

    As the original, the cycle and identity terms act on the generators' decoder output ("translated"), not on the
    composite: an L1 on the composite is smallest where the attention is 0, which pushes the mask towards nothing.
    The adversarial term judges the translated image; "adversarial_composite" (left out when `composite` is False,
    which saves the discriminator passes) the composite, the only term that reaches the attention directly.
    "identity_attention" is the mean attention of the identity passes (each generator fed an image of its target
    domain, which it must leave alone): not one of the original's losses (weight 0 in its presets). Meant to teach
    the attention to stay off what normal images also hold; at weight 10 on the distractor phantom it drove the
    attention to 0 everywhere, lesions first (docs/weak_cycle.md), so no trainer sets it."""
    ab, ba = g_ab(disease), g_ba(normal)  # disease -> normal, normal -> disease
    aba, bab = g_ba(ab["translated"]), g_ab(ba["translated"])  # cycles
    aa, bb = g_ba(disease), g_ab(normal)  # identities: a generator fed its target domain must leave it alone
    adversarial = sum(lsgan(d(ab["translated"]), True) for d in d_b) + \
        sum(lsgan(d(ba["translated"]), True) for d in d_a)
    losses = {
        "adversarial": adversarial,
        "cycle": l1_loss(aba["translated"], disease) + l1_loss(bab["translated"], normal),
        "identity": l1_loss(aa["translated"], disease) + l1_loss(bb["translated"], normal),
        "cam": cam_bce(ab["cam_logits"], True) + cam_bce(bb["cam_logits"], False)
        + cam_bce(ba["cam_logits"], True) + cam_bce(aa["cam_logits"], False),
        "reconstruction": l1_loss(ab["reconstruction"], disease) + l1_loss(ba["reconstruction"], normal),
        "identity_attention": aa["mask"].mean() + bb["mask"].mean(),
    }
    if composite:
        losses["adversarial_composite"] = sum(lsgan(d(ab["composite"]), True) for d in d_b) + \
            sum(lsgan(d(ba["composite"]), True) for d in d_a)
    return losses, {"ab": ab, "ba": ba, "bb": bb}


def weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """A loss missing from weights does not count (weight 0)."""
    return sum(float(weights.get(name, 0.0)) * value for name, value in losses.items())


def teacher_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the softmax outputs (mean teacher)."""
    return mse_loss(torch.softmax(student_logits.float(), 1), torch.softmax(teacher_logits.float(), 1))
