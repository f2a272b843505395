"""U-Net pieces that several methods use: the plans' U-Net, and walking its decoder to reach the features that
nnU-Net's decoder keeps to itself.

nnU-Net builds its networks from the plans (`architecture.network_class_name` + `arch_kwargs`), the same way at
training and at prediction time. Methods that put extra heads or branches around that U-Net (AVFusion's G, G_A, G_V;
FocusNetV2's S-Net; FTSegNet's segmenter; WeakCycle's teacher) build it with `plans_unet` so the predictor's rebuild
gives the same module tree.
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn


def plans_unet(configuration_manager: ConfigurationManager, num_input_channels: int, num_output_channels: int,
               deep_supervision: bool, arch_kwargs: dict | None = None) -> nn.Module:
    """The configuration's U-Net, initialised as nnU-Net does; arch_kwargs replaces the plans' (narrow test
    variants, CPU presets) without touching the plans themselves."""
    kwargs = configuration_manager.network_arch_init_kwargs if arch_kwargs is None else arch_kwargs
    return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=deep_supervision)


def check_unet(unet: nn.Module, role: str) -> None:
    """`decode` walks an encoder + UNetDecoder (PlainConvUNet, ResidualEncoderUNet); refuse anything else by name."""
    decoder = getattr(unet, "decoder", None)
    if getattr(unet, "encoder", None) is None or not all(
            hasattr(decoder, a) for a in ("stages", "transpconvs", "seg_layers", "deep_supervision")):
        raise TypeError(f"{role} must be an nnU-Net U-Net from the plans (encoder + UNetDecoder, e.g. PlainConvUNet "
                        f"or ResidualEncoderUNet); got a {type(unet).__name__}")


def decode_stages(unet: nn.Module, x: torch.Tensor, side_outputs: bool) -> tuple[list[torch.Tensor],
                                                                                  list[torch.Tensor]]:
    """Run an nnU-Net U-Net and return the output features of every decoder stage, coarsest first (the last one is
    what the 1x1 segmentation layer reads) and, when asked, the logits of the lower-resolution deep-supervision
    outputs, highest resolution first.

    The stock decoder only returns logits; heads that need the features walk the decoder's stages here with its own
    modules (same parameters, same state_dict keys).
    """
    skips = unet.encoder(x)
    decoder = unet.decoder
    below = skips[-1]
    stages, side = [], []
    last = len(decoder.stages) - 1
    for s in range(len(decoder.stages)):
        below = decoder.stages[s](torch.cat((decoder.transpconvs[s](below), skips[-(s + 2)]), 1))
        stages.append(below)
        if side_outputs and s < last:
            side.append(decoder.seg_layers[s](below))
    return stages, side[::-1]


def decode(unet: nn.Module, x: torch.Tensor, side_outputs: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """decode_stages with the last decoder stage's features only."""
    stages, side = decode_stages(unet, x, side_outputs)
    return stages[-1], side
