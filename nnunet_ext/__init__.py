"""nnunet-ext: published segmentation methods as self-configuring nnU-Net v2 trainers."""

__version__ = "0.1.0"
