"""FocusNetV2 (Gao et al., MedIA 2021) as one nn.Module built from the nnU-Net plans.

- S-Net: the plans' U-Net, all classes (its deep-supervision outputs unchanged).
- SOL-Net: a heatmap head on S-Net's decoder features, conv-norm-ReLU twice then a 1x1 conv, one channel per small
  organ; sigmoid gives the heatmap. By default it reads every decoder stage (summed at full resolution) from detached
  features (SOLHead, FocusNetV2Trainer.sol_input / sol_detach_features).
- ROI pooling: a fixed box (from the training labels, nnunet_ext.methods.focusnet.organs) centred on each heatmap
  peak and shifted to lie inside the patch. The crop takes the image, S-Net's last decoder features and S-Net's
  probability of the organ, all detached: no gradient flows from SOS into S-Net.
- SOS-Net: one small U-Net per small organ on its crop, one logit map.

Eval-mode forward returns S-Net's logits with, for each small organ whose heatmap peak exceeds `peak_threshold`, the
SOS result fused into the box: P(organ) = sigmoid(SOS), the other classes share 1 - P(organ) in S-Net's proportions,
returned as log-probabilities (softmax gives back exactly these probabilities, so nnU-Net's sliding-window averaging,
mirroring and --save_probabilities work unchanged). Outside the boxes the logits are S-Net's, bit for bit.

Which organs are small and the box size are data-derived, but stock nnUNetv2_predict builds the network from the
plans alone: they live in two buffers (focus_labels, focus_box) saved with the weights, and load_state_dict rebuilds
the SOL head and SOS-Nets from them before loading. `sos_ready` (a buffer too) turns pasting on once SOS has trained,
and `focus_peak_threshold` carries the peak threshold (the constructor's, or the one the trainer chose on validation
after training).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_ext.methods.focusnet.organs import MAX_POOL, pooling_per_axis
from nnunet_ext.methods.focusnet.roi import crop, paste, peak, place_box
from nnunet_ext.methods.unet import check_unet, decode_stages


@dataclass
class SNetOutput:
    features: torch.Tensor  # last decoder stage, full resolution
    logits: torch.Tensor  # S-Net's full-resolution logits
    side: list[torch.Tensor]  # deep-supervision outputs (empty when deep supervision is off)
    heat_logits: torch.Tensor | None  # SOL-Net, one channel per small organ (None before configure)
    stages: list[torch.Tensor]  # every decoder stage's features, coarsest first (what SOL reads)


def _ops(dim: int):
    if dim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d
    if dim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d
    raise ValueError(f"FocusNetV2 works on 2D or 3D patches, got {dim} spatial axes")


def stage_strides(box: Sequence[int]) -> list[list[int]]:
    pools = pooling_per_axis(box)
    return [[1] * len(box)] + [[2 if level < p else 1 for p in pools] for level in range(MAX_POOL)]


class SOLHead(nn.Module):
    """Heatmap head: conv-norm-ReLU twice, then a 1x1 conv, one channel per small organ.

    With `context` it reads every decoder stage of S-Net, not only the last: each stage goes through a 1x1 conv to the
    head's width, is resampled to the head's grid and summed before the body. On detached features the last stage
    alone (8-32 channels, two 3x3 convs on top: a 5-voxel receptive field) cannot tell one optic nerve from another
    spot of the same intensity; the coarse stages carry where the mandible and brainstem are (docs/focusnet.md).

    `stage` is the decoder stage whose grid the body works on, counted from the full-resolution one (0). Above 0,
    finer stages are average-pooled onto it and the logits are interpolated back to full resolution, so targets,
    loss and peaks stay at full resolution: as CenterNet predicts its centres at stride 4, the peak needs only to fall
    inside the ROI box, and a 32-wide body at full resolution cost more than a narrow S-Net itself.
    """

    def __init__(self, stage_channels: Sequence[int], organs: int, dim: int, context: bool = True,
                 features: int | None = None, prior: float = 0.01, stage: int = 0):
        super().__init__()
        if not 0 <= stage < len(stage_channels):
            raise ValueError(f"SOL head stage {stage}: S-Net's decoder has stages 0-{len(stage_channels) - 1}")
        conv, _, norm = _ops(dim)
        width = features or stage_channels[-1]
        self.context = context
        self.stage = stage
        # with context every stage is mapped to the head's width; without, the first 3x3 conv does it
        self.lateral = nn.ModuleList(conv(c, width, 1) for c in stage_channels) if context else None
        first = width if context else stage_channels[-1]
        self.body = nn.Sequential(conv(first, width, 3, 1, 1), norm(width, affine=True), nn.ReLU(inplace=True),
                                  conv(width, width, 3, 1, 1), norm(width, affine=True), nn.ReLU(inplace=True),
                                  conv(width, organs, 1))
        self.apply(InitWeights_He(1e-2))
        # start every voxel at heatmap value `prior` (as CenterNet / RetinaNet heads): a head that starts at 0.5
        # spends its first steps learning the background and its focal loss starts huge
        nn.init.constant_(self.body[-1].bias, math.log(prior / (1 - prior)))

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        full = stages[-1].shape[2:]
        grid = stages[-1 - self.stage].shape[2:]
        mode = "bilinear" if len(full) == 2 else "trilinear"
        if not self.context:
            x = self.body(_pool_to(stages[-1], grid))
        else:
            x = None
            for lateral, stage in zip(self.lateral, stages, strict=True):
                if all(a >= b for a, b in zip(stage.shape[2:], grid, strict=True)):
                    y = lateral(_pool_to(stage, grid))  # pooling first: both are linear, and the pool is cheaper
                else:
                    y = nn.functional.interpolate(lateral(stage), size=grid, mode=mode, align_corners=False)
                x = y if x is None else x + y
            x = self.body(x)
        if tuple(grid) == tuple(full):
            return x
        return nn.functional.interpolate(x, size=full, mode=mode, align_corners=False)


def _pool_to(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Average-pool x onto `grid` (each axis an integer multiple of it, as between U-Net stages)."""
    if tuple(x.shape[2:]) == tuple(grid):
        return x
    kernel = [a // b for a, b in zip(x.shape[2:], grid, strict=True)]
    pool = nn.functional.avg_pool2d if len(grid) == 2 else nn.functional.avg_pool3d
    return pool(x, kernel, kernel)


def sos_net(in_channels: int, box: Sequence[int], features: int) -> nn.Module:
    conv, _, norm = _ops(len(box))
    net = PlainConvUNet(in_channels, MAX_POOL + 1, [features * 2 ** i for i in range(MAX_POOL + 1)], conv, 3,
                        stage_strides(box), 2, 1, [2] * MAX_POOL, conv_bias=True, norm_op=norm,
                        norm_op_kwargs={"affine": True, "eps": 1e-5}, nonlin=nn.LeakyReLU,
                        nonlin_kwargs={"inplace": True}, deep_supervision=False)
    net.apply(InitWeights_He(1e-2))
    # without deep supervision only the last 1x1 head runs: drop the others (no dead weights in checkpoints)
    for s in range(len(net.decoder.seg_layers) - 1):
        net.decoder.seg_layers[s] = nn.Identity()
    return net


def fuse_organ(logits: torch.Tensor, sos_logit: torch.Tensor, channel: int) -> torch.Tensor:
    """Log-probabilities with P(channel) = sigmoid(sos_logit) and the other classes S-Net's, rescaled."""
    probs = torch.softmax(logits.float(), 1)
    p = torch.sigmoid(sos_logit.float())
    others = probs.clone()
    others[:, channel] = 0
    others = others / others.sum(1, keepdim=True).clamp_min(1e-12)
    fused = others * (1 - p)
    fused[:, channel] = p[:, 0]
    return torch.log(fused.clamp_min(1e-8)).to(logits.dtype)


class FocusNetV2Network(nn.Module):
    def __init__(self, snet: nn.Module, num_input_channels: int, sos_features: int = 16,
                 peak_threshold: float = 0.6):
        super().__init__()
        check_unet(snet, "S-Net")
        self.snet = snet
        self.dim = 3 if snet.encoder.conv_op is nn.Conv3d else 2
        self.num_input_channels = num_input_channels
        self.sos_features = sos_features
        # a buffer, so that a threshold chosen on validation after training travels with the weights
        self.register_buffer("focus_peak_threshold", torch.tensor(float(peak_threshold)))
        self.default_peak_threshold = float(peak_threshold)
        self.register_buffer("focus_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("focus_box", torch.zeros(self.dim, dtype=torch.long))
        self.register_buffer("sos_ready", torch.zeros((), dtype=torch.bool))
        # the SOL head's grid (decoder stage from the full-resolution one) is not visible in its weights' shapes
        self.register_buffer("focus_sol_stage", torch.zeros((), dtype=torch.long))
        self.sol = None
        self.sos = nn.ModuleList()
        # set by the trainer around validation steps: forward keeps its SNetOutput here, so the heatmap's vital
        # signs come from the pass nnU-Net's validation makes anyway
        self.keep_last_output = False
        self.last_output: SNetOutput | None = None
        # set by the trainer (sol_detach_features): the heatmap loss then trains the SOL head only and cannot pull
        # S-Net's decoder features away from segmentation
        self.sol_detached = False

    # ------------------------------------------------------------------ structure
    @property
    def decoder(self) -> nn.Module:
        # nnU-Net toggles deep supervision through network.decoder.deep_supervision: that is S-Net's
        return self.snet.decoder

    @property
    def peak_threshold(self) -> float:
        return round(float(self.focus_peak_threshold), 6)  # a float32 buffer: 0.6 comes back as 0.6000000238

    @peak_threshold.setter
    def peak_threshold(self, value: float) -> None:
        self.focus_peak_threshold.fill_(float(value))

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.focus_labels.tolist())

    @property
    def box(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.focus_box.tolist())

    @property
    def feature_channels(self) -> int:
        return self.snet.decoder.stages[-1].output_channels

    @property
    def stage_channels(self) -> list[int]:
        return [stage.output_channels for stage in self.snet.decoder.stages]

    def configure(self, labels: Sequence[int], box: Sequence[int], sol_context: bool = True,
                  sol_features: int | None = None, sol_stage: int = 0) -> None:
        """Build the SOL head (reading every decoder stage with sol_context, else the last; sol_features wide, None:
        the last decoder stage's width) and one SOS-Net per small organ for these labels and this ROI box."""
        if len(box) != self.dim or min(box) < 1:
            raise ValueError(f"ROI box {tuple(box)} does not match a {self.dim}D network")
        device = self.focus_labels.device
        self.focus_labels = torch.as_tensor(list(labels), dtype=torch.long, device=device)
        self.focus_box = torch.as_tensor(list(box), dtype=torch.long, device=device)
        self.focus_sol_stage.fill_(int(sol_stage))
        self.sol = SOLHead(self.stage_channels, len(labels), self.dim, sol_context, sol_features,
                           stage=sol_stage).to(device) \
            if labels else None
        # SOS input: image, S-Net's last decoder features and S-Net's probability of the organ
        channels = self.num_input_channels + self.feature_channels + 1
        self.sos = nn.ModuleList(sos_net(channels, box, self.sos_features) for _ in labels).to(device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "focus_peak_threshold" not in state_dict:  # checkpoints from before the threshold was calibrated
            state_dict = {**state_dict, "focus_peak_threshold": torch.tensor(self.default_peak_threshold)}
        if "focus_sol_stage" not in state_dict:  # checkpoints from before the grid was a setting: full resolution
            state_dict = {**state_dict, "focus_sol_stage": torch.zeros((), dtype=torch.long)}
        stage = int(state_dict["focus_sol_stage"])
        labels, box = state_dict.get("focus_labels"), state_dict.get("focus_box")
        # the SOL head's form travels in its weights: lateral convs mean context, the first body conv's width
        context = any(k.startswith("sol.lateral.") for k in state_dict)
        width = state_dict["sol.body.0.weight"].shape[0] if "sol.body.0.weight" in state_dict else None
        if labels is not None and box is not None and (labels.tolist() != list(self.labels)
                                                         or box.tolist() != list(self.box) or self.sol is None
                                                         or self.sol.context != context
                                                         or self.sol.body[0].out_channels != width
                                                         or self.sol.stage != stage):
            if len(labels):
                self.configure(labels.tolist(), box.tolist(), context, width, stage)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ forward pieces
    def snet_forward(self, x: torch.Tensor, with_heat: bool = True) -> SNetOutput:
        """S-Net's pass and, with_heat and once configured, the SOL head's heatmap logits on it."""
        stages, side = decode_stages(self.snet, x, self.snet.decoder.deep_supervision)
        features = stages[-1]
        logits = self.snet.decoder.seg_layers[-1](features)
        heat = None
        if with_heat and self.sol is not None:
            heat = self.sol([s.detach() for s in stages] if self.sol_detached else stages)
        return SNetOutput(features, logits, side, heat, stages)

    def sos_input(self, x: torch.Tensor, out: SNetOutput, organ: int, b: int, start: Sequence[int]) -> torch.Tensor:
        """The crop SOS-Net `organ` sees for batch item b, detached from S-Net (gradient stop)."""
        channel = self.labels[organ]
        prob = torch.softmax(out.logits[b:b + 1].detach().float(), 1)[:, channel:channel + 1]
        full = torch.cat((x[b:b + 1].float(), out.features[b:b + 1].detach().float(), prob), 1)
        return crop(full, start, self.box)

    def paste_sos(self, x: torch.Tensor, out: SNetOutput) -> torch.Tensor:
        """S-Net's logits with each confidently localised small organ's SOS result fused into its box."""
        logits = out.logits
        if self.sol is None or not bool(self.sos_ready):
            return logits
        heat = torch.sigmoid(out.heat_logits.float())
        spatial = tuple(x.shape[2:])
        rows = []
        for b in range(x.shape[0]):
            row = logits[b:b + 1]
            for k, channel in enumerate(self.labels):
                index, value = peak(heat[b, k])
                if value <= self.peak_threshold:
                    continue
                start = place_box(index, self.box, spatial)
                sos_logit = self.sos[k](self.sos_input(x, out, k, b, start))
                row = paste(row, fuse_organ(crop(row, start, self.box), sos_logit, channel), start)
            rows.append(row)
        return torch.cat(rows)

    def forward(self, x: torch.Tensor):
        out = self.snet_forward(x)
        if self.keep_last_output:
            self.last_output = out
        logits = out.logits if self.training else self.paste_sos(x, out)
        return [logits, *out.side] if self.snet.decoder.deep_supervision else logits


class ShapeAutoencoder(nn.Module):
    """One small convolutional autoencoder per small organ on binary ROI crops (the shape prior).

    forward(organ, shape) -> (latent, [two intermediate encoder feature maps], reconstruction logits). The strides
    follow the ROI box like the SOS-Nets', so a box-sized input comes back box-sized."""

    def __init__(self, box: Sequence[int], organs: int, features: int = 8, latent_channels: int = 4):
        super().__init__()
        conv, tconv, norm = _ops(len(box))
        strides = stage_strides(box)[1:]
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        for _ in range(organs):
            self.encoders.append(nn.ModuleList([
                nn.Sequential(conv(1, features, 3, strides[0], 1), norm(features, affine=True), nn.LeakyReLU(0.2)),
                nn.Sequential(conv(features, 2 * features, 3, strides[1], 1), norm(2 * features, affine=True),
                              nn.LeakyReLU(0.2)),
                conv(2 * features, latent_channels, 1)]))
            self.decoders.append(nn.Sequential(
                tconv(latent_channels, 2 * features, strides[1], strides[1]), norm(2 * features, affine=True),
                nn.LeakyReLU(0.2), tconv(2 * features, features, strides[0], strides[0]),
                norm(features, affine=True), nn.LeakyReLU(0.2), conv(features, 1, 1)))

    def forward(self, organ: int, shape: torch.Tensor):
        first, second, to_latent = self.encoders[organ]
        f1 = first(shape)
        f2 = second(f1)
        latent = to_latent(f2)
        return latent, [f1, f2], self.decoders[organ](latent)
