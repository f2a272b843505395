"""Vital signs of the A/V fusion, counted on nnU-Net's validation patches from the same forward pass.

nnU-Net's pseudo-Dice shows the fused output only. What the method adds is two binary branches that never face the
ambiguous four-class decision, and a fusion that should build on them; the signs below show whether they do:
- `branches/artery dice`, `branches/vein dice`: each branch (sigmoid > 0.5) against its own target, where a
  crossing belongs to both vessels. A branch near 0 gives the fusion no evidence.
- `crossings/both branches`: share of the reference crossing pixels that both branches mark, the method's reading
  of a crossing (NaN when the patches hold none).
- `fusion/overrides branches`: on pixels that the fused output calls artery or vein and the branches call a vessel,
  the share where the fused label differs from the branches' (artery where the artery logit is the larger). On
  DRIVE-AV the branches alone mix fewer vessel segments than the fused output of the same network
  (bench/av_fusion/branch_decisions.py): this is the share of the vessel the fusion decides against them.
- `fused/artery vs reference`, `fused/vein vs reference`: pixels the fused output calls artery (vein) over those the
  reference does. 0 is the collapse where every vessel gets the other label.
"""

from __future__ import annotations

import math

import torch

from nnunet_ext.methods.av_fusion.loss import AVLabels

COUNTS = ("artery_tp", "artery_fp", "artery_fn", "vein_tp", "vein_fp", "vein_fn", "crossing_reference",
          "crossing_both", "vessel_judged", "overridden", "fused_artery", "reference_artery", "fused_vein",
          "reference_vein")
# a branch Dice or a class ratio below this, epoch after epoch, is a collapse
COLLAPSE_LEVEL = 0.05


def vital_counts(fused_logits: torch.Tensor, artery_logits: torch.Tensor, vein_logits: torch.Tensor,
                 target: torch.Tensor, av: AVLabels, ignore_label: int | None = None) -> torch.Tensor:
    """Pixel counts (float64, in COUNTS order) of one validation batch. fused_logits (b, classes, ...), branch
    logits (b, 1, ...), target (b, 1, ...) label map at the same resolution."""
    labels = target[:, 0].long()
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_label is None else labels != ignore_label
    artery_value, vein_value = av.artery[0], av.vein[0]

    def isin(values: tuple[int, ...]) -> torch.Tensor:
        return torch.isin(labels, torch.as_tensor(values, device=labels.device, dtype=labels.dtype)) & valid

    artery_marked, vein_marked = artery_logits[:, 0] > 0, vein_logits[:, 0] > 0
    # the branch targets (a crossing in both) and the crossings alone, each inside the valid pixels
    artery_target, vein_target, crossing = isin(av.artery), isin(av.vein), isin(av.artery[1:])
    fused = fused_logits.argmax(1)
    fused_artery, fused_vein = (fused == artery_value) & valid, (fused == vein_value) & valid
    judged = (fused_artery | fused_vein) & (artery_marked | vein_marked)
    branch_says_artery = artery_logits[:, 0] > vein_logits[:, 0]
    counts = [artery_marked & artery_target, artery_marked & ~artery_target & valid, ~artery_marked & artery_target,
              vein_marked & vein_target, vein_marked & ~vein_target & valid, ~vein_marked & vein_target,
              crossing, crossing & artery_marked & vein_marked, judged,
              judged & (fused_artery != branch_says_artery), fused_artery, isin((artery_value,)),
              fused_vein, isin((vein_value,))]
    return torch.stack([c.sum() for c in counts]).double()


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def vital_values(counts: torch.Tensor) -> dict[str, float]:
    """The logged vital signs from the counts of an epoch's validation batches."""
    c = dict(zip(COUNTS, counts.tolist(), strict=True))
    return {
        "branches/artery dice": _ratio(2 * c["artery_tp"], 2 * c["artery_tp"] + c["artery_fp"] + c["artery_fn"]),
        "branches/vein dice": _ratio(2 * c["vein_tp"], 2 * c["vein_tp"] + c["vein_fp"] + c["vein_fn"]),
        "crossings/both branches": _ratio(c["crossing_both"], c["crossing_reference"]),
        "fusion/overrides branches": _ratio(c["overridden"], c["vessel_judged"]),
        "fused/artery vs reference": _ratio(c["fused_artery"], c["reference_artery"]),
        "fused/vein vs reference": _ratio(c["fused_vein"], c["reference_vein"]),
    }


def vital_warnings(history: list[dict], epochs: int) -> list[str]:
    """Warnings when a branch or a fused class has stayed collapsed (below COLLAPSE_LEVEL) for `epochs` epochs."""
    if epochs <= 0 or len(history) < epochs:
        return []
    recent = history[-epochs:]
    warnings = []

    def collapsed(key: str) -> bool:
        values = [row.get(key, math.nan) for row in recent]
        return all(v == v and v < COLLAPSE_LEVEL for v in values)

    for vessel in ("artery", "vein"):
        if collapsed(f"branches/{vessel} dice"):
            warnings.append(f"the {vessel} branch has marked almost none of its vessels on the validation patches "
                            f"for {epochs} epochs (Dice {recent[-1][f'branches/{vessel} dice']:.3f}): the fusion "
                            f"gets no {vessel} evidence")
    for vessel, other in (("artery", "vein"), ("vein", "artery")):
        if collapsed(f"fused/{vessel} vs reference"):
            warnings.append(f"the fused output has called almost no pixel {vessel} for {epochs} epochs "
                            f"({recent[-1][f'fused/{vessel} vs reference']:.3f} of the reference's): it labels "
                            f"the vessels {other}")
    return warnings
