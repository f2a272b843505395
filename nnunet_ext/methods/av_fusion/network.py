"""Binary-to-multi-class fusion for artery/vein segmentation (Zhou et al., MICCAI 2021), as one nn.Module.

G (multi-class), G_A (artery vs rest) and G_V (vein vs rest) are three U-Nets built from the same nnU-Net plans; a
1x1 convolution fuses them into the final class logits. Keeping all of it in one module is what lets the stock
`nnUNetv2_predict` work unchanged: it builds the network with the trainer's `build_network_architecture`, loads
`network_weights` and calls forward, which in eval mode returns the fused logits (mirroring and
`--save_probabilities` included).

Fusion modes:
- "concat" (the paper): [sigmoid(G_A logits), G's last decoder features, sigmoid(G_V logits)] -> 1x1 conv;
- "mean" (the authors' later code): the mean of the three networks' last decoder features -> 1x1 conv.
With detach_branches (the default, as in both versions of the original) the branch inputs of the fusion are detached,
so the fused loss trains G and the head only and the branches learn from their binary losses alone.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_ext.methods.unet import check_unet, decode

FUSION_MODES = ("concat", "mean")


class AVFusionNetwork(nn.Module):
    """forward(x) -> fused logits (eval / deep supervision off) or [fused, G's side outputs...] (deep supervision on,
    the list nnU-Net's DeepSupervisionWrapper expects); forward(x, return_branches=True) also returns the artery and
    vein logits for the branch losses."""

    def __init__(self, multi: nn.Module, artery: nn.Module, vein: nn.Module, num_classes: int,
                 fusion: str = "concat", detach_branches: bool = True):
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {fusion!r}; choose from {FUSION_MODES}")
        for unet, role in ((multi, "G"), (artery, "G_A"), (vein, "G_V")):
            check_unet(unet, role)
        for unet, role in ((artery, "G_A"), (vein, "G_V")):
            if unet.decoder.num_classes != 1:
                raise ValueError(f"{role} must have one output channel, has {unet.decoder.num_classes}")
        self.multi, self.artery, self.vein = multi, artery, vein
        # G's full-resolution 1x1 head is replaced by the fusion head and the branches have no side outputs: drop the
        # heads that would never run, so that every parameter gets a gradient (DDP insists) and checkpoints hold no
        # dead weights. Training and prediction build the network the same way, so the keys always match.
        multi.decoder.seg_layers[-1] = nn.Identity()
        for unet in (artery, vein):
            for s in range(len(unet.decoder.seg_layers) - 1):
                unet.decoder.seg_layers[s] = nn.Identity()
        self.fusion_mode = fusion
        self.detach_branches = detach_branches
        features = multi.decoder.stages[-1].output_channels
        if fusion == "mean":
            for unet, role in ((artery, "G_A"), (vein, "G_V")):
                if unet.decoder.stages[-1].output_channels != features:
                    raise ValueError(f"feature-mean fusion needs equal feature counts; G has {features}, {role} "
                                     f"{unet.decoder.stages[-1].output_channels}")
        in_channels = features + 2 if fusion == "concat" else features
        self.fusion = multi.encoder.conv_op(in_channels, num_classes, 1, 1, 0, bias=True)
        # initialised like the rest of the plans' networks (nnU-Net's He init): PyTorch's default is about 2.5x
        # smaller here and left the fused output at background for the first ~150 iterations on DRIVE-AV
        self.fusion.apply(InitWeights_He(1e-2))
        # set by the trainer during validation: forward then keeps (fused, artery, vein) logits for the vital signs,
        # so that they come from nnU-Net's own validation pass instead of a second one
        self.keep_outputs = False
        self.last_outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def decoder(self) -> nn.Module:
        # nnU-Net switches deep supervision with `network.decoder.deep_supervision = ...`: that is G's decoder
        return self.multi.decoder

    def forward(self, x: torch.Tensor, return_branches: bool = False):
        deep_supervision = self.multi.decoder.deep_supervision
        g_features, side = decode(self.multi, x, deep_supervision)
        a_features, _ = decode(self.artery, x, False)
        v_features, _ = decode(self.vein, x, False)
        a_logits = self.artery.decoder.seg_layers[-1](a_features)
        v_logits = self.vein.decoder.seg_layers[-1](v_features)
        if self.fusion_mode == "concat":
            a_in, v_in = torch.sigmoid(a_logits), torch.sigmoid(v_logits)
            if self.detach_branches:
                a_in, v_in = a_in.detach(), v_in.detach()
            fused = self.fusion(torch.cat((a_in, g_features, v_in), 1))
        else:
            if self.detach_branches:
                a_features, v_features = a_features.detach(), v_features.detach()
            fused = self.fusion((a_features + g_features + v_features) / 3)
        if self.keep_outputs:
            self.last_outputs = (fused.detach(), a_logits.detach(), v_logits.detach())
        output = [fused, *side] if deep_supervision else fused
        if return_branches:
            return output, a_logits, v_logits
        return output


class PixelDiscriminator(nn.Module):
    """The original's discriminator: a U-Net that labels every pixel of an (image, maps) pair real or fake, trained
    against all-ones (reference) and all-zeros (prediction) maps. forward -> per-pixel logits (b, out, ...)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        check_unet(unet, "discriminator")
        if unet.decoder.deep_supervision:
            raise ValueError("the discriminator U-Net must be built without deep supervision")
        # its side heads would never run: dropped so that every parameter gets a gradient (DDP)
        for s in range(len(unet.decoder.seg_layers) - 1):
            unet.decoder.seg_layers[s] = nn.Identity()
        self.unet = unet

    def forward(self, image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat((image, maps), 1))
