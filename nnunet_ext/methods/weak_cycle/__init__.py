"""Lesion segmentation from image-level labels (Du et al. 2024, consistency label transfer).

- network.py: the light U-GAT-IT generator (CAM, attention mask, AdaILN decoder) and discriminators
- loss.py: cycle-translation losses and the teacher-student consistency
- data.py: weak-label cases, the pseudo-label data set, body masks, thresholds and the pseudo-label export
"""
