"""Procedural tumour synthesis as a batchgeneratorsv2 transform, for nnU-Net's augmentation workers.

Placed right after the spatial transform, so a synthetic tumour then goes through the same intensity augmentations as
a real one (noise, blur, brightness, contrast, low-resolution simulation, gamma, mirroring); synthesis in the train
step happens after all of them and gives the network cleaner tumours than it will ever see for real. It needs no
network, so it cannot run quality control (that needs the train step).

The transform is pickled into every worker: it holds only the synthesizer (label pairs, spacing, statistics) and draws
its random numbers from the worker's numpy stream, which nnU-Net seeds per worker.
"""

from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_ext.methods.freetumor.synthesize import TumourSynthesizer


class TumourSynthesisTransform(BasicTransform):
    def __init__(self, synthesizer: TumourSynthesizer, probability: float):
        super().__init__()
        self.synthesizer = synthesizer
        self.probability = float(probability)

    def apply(self, data_dict: dict, **params) -> dict:
        image, seg = data_dict.get("image"), data_dict.get("segmentation")
        if image is None or seg is None or self.probability <= 0:
            return data_dict
        seg_np = seg[0].numpy() if isinstance(seg, torch.Tensor) else np.asarray(seg[0])
        organs = self.synthesizer.eligible_organs(seg_np)
        if not organs or np.random.uniform() >= self.probability:
            return data_dict
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        organ = organs[int(rng.integers(len(organs)))]
        image_np = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        result = self.synthesizer.synthesise(image_np, seg_np, organ, rng)
        if result is None:
            return data_dict
        data_dict["image"] = torch.from_numpy(result.image).to(image.dtype if isinstance(image, torch.Tensor)
                                                                 else torch.float32)
        new_seg = torch.from_numpy(result.seg[None].astype(seg_np.dtype, copy=False))
        data_dict["segmentation"] = new_seg.to(seg.dtype) if isinstance(seg, torch.Tensor) else new_seg
        return data_dict
