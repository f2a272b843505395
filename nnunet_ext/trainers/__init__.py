# nnU-Net imports every module of this folder under a top-level name while it searches for a trainer
# (nnUNet_extTrainer). Keep only trainer modules here, give them distinctive names, and import helpers absolutely.
