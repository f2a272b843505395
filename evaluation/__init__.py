"""Metrics and reports beyond nnU-Net's own Dice/IoU evaluation."""
