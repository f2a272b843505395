"""Artery/vein binary-to-multi-class fusion (Zhou et al., MICCAI 2021).

- network.py: G, G_A, G_V and the fusion head as one module; the per-pixel discriminator of the GAN variant
- loss.py: which labels are artery, vein and crossing; the branch targets and their Dice+BCE
"""
