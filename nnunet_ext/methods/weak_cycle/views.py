"""The refinement phase's two views of one patch, made in nnU-Net's augmentation workers.

The teacher sees a weak view (nnU-Net's spatial augmentation and mirroring), the student a strong view of the same
patch (the weak view plus nnU-Net's intensity augmentations and extra per-sample contrast, brightness and noise).
Both must share their geometry and their target, so they come from one pass through the pipeline: StrongViewTransform
sits where nnU-Net's intensity augmentations were and leaves the image as [strong, weak] stacked along the channel
axis. nnU-Net's loader keeps only 'image' and 'segmentation' of a transformed sample (nnUNetDataLoader
.generate_train_batch) and sizes the batch from the sample's shape, so a second image key would be dropped, while the
stacked channels reach the train step, which splits them (split_views). Everything after this transform (mirroring,
masking, label removal, deep-supervision downsampling) then treats both views alike.
"""

from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms


class StrongViewTransform(BasicTransform):
    """image (C x spatial) -> [strong, weak] (2C x spatial); segmentation untouched.

    The strong view: `intensity` (nnU-Net's intensity augmentations) on a copy, then per sample a contrast factor in
    1 +- contrast around the sample mean, a brightness shift in +-brightness and Gaussian noise with a standard
    deviation drawn from [0, noise_std]. Parameters come from numpy's stream and the noise from torch's, as in
    batchgeneratorsv2's own transforms (nnU-Net seeds both per worker)."""

    def __init__(self, intensity: ComposeTransforms, noise_std: float, contrast: float, brightness: float):
        super().__init__()
        self.intensity = intensity
        self.noise_std = float(noise_std)
        self.contrast = float(contrast)
        self.brightness = float(brightness)

    def get_parameters(self, **data_dict) -> dict:
        return {"contrast": 1 + np.random.uniform(-self.contrast, self.contrast),
                "brightness": np.random.uniform(-self.brightness, self.brightness),
                "noise_std": np.random.uniform(0, self.noise_std)}

    def apply(self, data_dict: dict, **params) -> dict:
        weak = data_dict["image"]
        # the intensity transforms work in place on some inputs; the weak view must stay as it is
        strong = self.intensity(image=weak.clone())["image"] if self.intensity.transforms else weak.clone()
        mean = strong.mean()
        strong = (strong - mean) * params["contrast"] + mean + params["brightness"]
        if params["noise_std"] > 0:
            strong = strong + torch.randn_like(strong) * params["noise_std"]
        data_dict["image"] = torch.cat((strong.to(weak.dtype), weak))
        return data_dict


def split_views(data: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(strong, weak) of a batch from the refinement loader (B x 2C x spatial)."""
    if data.shape[1] != 2 * channels:
        raise ValueError(f"expected a batch of stacked strong and weak views ({2 * channels} channels for "
                         f"{channels} input channels), got {data.shape[1]} channels: the training loader stacks "
                         f"them with StrongViewTransform (WeakCycleTrainer.get_training_transforms)")
    return data[:, :channels], data[:, channels:]
