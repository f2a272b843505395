"""FreeTumor's generator and discriminator, small U-Nets whose strides follow the plans (anisotropy included).

- Generator: input the image patch and the blurred tumour shape; output one difference channel per organ (tanh,
  scaled by the trainer's difference_scale). A tumour in organ k takes channel k, never the liver's for all.
- Discriminator: input an image patch; output per voxel 3 classes: healthy, real tumour, synthetic tumour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

HEALTHY, REAL, FAKE = 0, 1, 2


def small_unet(dim: int, in_channels: int, out_channels: int, strides: Sequence[Sequence[int]],
               kernel_sizes: Sequence[Sequence[int]], features: Sequence[int]) -> PlainConvUNet:
    if len(strides) != len(features) or len(kernel_sizes) != len(features):
        raise ValueError(f"strides {strides}, kernel sizes {kernel_sizes} and features {features} differ in length")
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    return PlainConvUNet(in_channels, len(features), list(features), conv, [list(k) for k in kernel_sizes],
                         [list(s) for s in strides], 2, out_channels, 2, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=False)


def network_config(configuration_manager, n_stages: int, features: Sequence[int]) -> dict:
    """The generator's/discriminator's layout from an nnU-Net configuration: its first n_stages strides and kernels.
    Stored in checkpoints so that a generator is rebuilt without the plans it was trained with."""
    n = min(n_stages, len(configuration_manager.pool_op_kernel_sizes))
    return {"dim": len(configuration_manager.patch_size),
            "strides": [list(s) for s in configuration_manager.pool_op_kernel_sizes[:n]],
            "kernel_sizes": [list(k) for k in configuration_manager.network_arch_init_kwargs["kernel_sizes"][:n]],
            "features": list(features[:n])}


class TumourGenerator(nn.Module):
    def __init__(self, in_channels: int, n_organs: int, dim: int, strides, kernel_sizes, features):
        super().__init__()
        self.in_channels, self.n_organs = in_channels, n_organs
        self.unet = small_unet(dim, in_channels + 1, n_organs, strides, kernel_sizes, features)

    def forward(self, image: torch.Tensor, soft_shape: torch.Tensor) -> torch.Tensor:
        """(B, n_organs, ...) in [-1, 1]."""
        return torch.tanh(self.unet(torch.cat((image, soft_shape), 1)))

    @staticmethod
    def select(difference: torch.Tensor, organ_index: torch.Tensor) -> torch.Tensor:
        """Per sample the channel of its own organ: (B, n_organs, ...) -> (B, 1, ...)."""
        index = organ_index.view(-1, 1, *([1] * (difference.ndim - 2))).expand(-1, 1, *difference.shape[2:])
        return difference.gather(1, index)


class TumourDiscriminator(nn.Module):
    def __init__(self, in_channels: int, dim: int, strides, kernel_sizes, features):
        super().__init__()
        self.unet = small_unet(dim, in_channels, 3, strides, kernel_sizes, features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Per-voxel logits over (healthy, real tumour, synthetic tumour)."""
        return self.unet(image)


def load_generator(filename, dataset_json, device: torch.device, setting: str = "generator checkpoint"):
    """(generator in eval mode, difference scale, organ labels of its channels) from a FreeTumorSynthesisTrainer
    checkpoint."""
    import os

    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{setting} {filename}: file not found")
    checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
    ours = checkpoint.get("nnunet_ext", {}) if isinstance(checkpoint, dict) else {}
    config = ours.get("extra", {}).get("generator")
    weights = ours.get("aux_modules", {}).get("generator")
    if config is None or weights is None:
        raise ValueError(f"{setting} {filename}: no FreeTumor generator in it (written by "
                         f"{checkpoint.get('trainer_name') if isinstance(checkpoint, dict) else '?'}); train one "
                         f"with nnUNetv2_train ... -tr FreeTumorSynthesisTrainer")
    labels = checkpoint.get("init_args", {}).get("dataset_json", {}).get("labels")
    if labels is not None and dict(labels) != dict(dataset_json["labels"]):
        raise ValueError(f"{setting} {filename}: trained on labels {labels}, this data set has "
                         f"{dataset_json['labels']}")
    if config.get("difference_scale") is None:
        raise ValueError(f"{setting} {filename}: the generator was saved before training started (no difference "
                         f"scale); use a checkpoint of its synthesis phase")
    generator = TumourGenerator(config["in_channels"], len(config["organs"]), config["dim"], config["strides"],
                                config["kernel_sizes"], config["features"])
    generator.load_state_dict(weights)
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return generator.to(device), float(config["difference_scale"]), [int(o) for o in config["organs"]]
