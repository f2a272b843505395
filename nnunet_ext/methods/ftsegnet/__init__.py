"""FTSegNet (Deng, Gong et al., ISBI 2024): classification prior, class-prior blocks and transformer stages.

- network.py: the prior P, the CPB, the MiT-style transformer blocks and the network that wraps the plans' U-Net
- loss.py: Dice + focal loss (the paper's loss variant)
- prior.py: class tables (classification.json) and priors loaded from a checkpoint
"""
