"""FTSegNet (Deng, Gong et al., ISBI 2024): a classification prior guiding a transformer+conv U-Net, as one nn.Module.

- The segmenter is the plans' U-Net (PlainConvUNet or ResidualEncoderUNet) whose deepest `transformer_stages`
  encoder stages append transformer blocks: multi-head self-attention over the spatial tokens with MiT's spatial
  reduction of keys/values, and an MLP with a depth-wise convolution between its two linear layers (Mix-FFN).
- The classification prior P is a small CNN with the same strides as the encoder, so its stage s feature G_s has the
  resolution of encoder stage s; a global pooling + linear head gives the class logits.
- A Classification Prior Block (CPB) after every encoder stage s:
      F_s' = F_s * 2 sigmoid(W_c GAP(G_s)) + alpha_s * conv1x1(G_s)
  W_c and alpha_s start at zero, so the block starts as the identity (the factor 2 puts sigmoid(0) at 1; the spec's
  plain sigmoid would halve every feature at initialisation). The class probabilities of P enter the bottleneck
  through a zero-initialised linear layer. At initialisation the network therefore computes exactly what the
  transformer-only network (no prior) computes, and training moves away from it only where the prior helps.
  `spatial_prior=False` drops the spatial term (no conv1x1(G_s), alpha fixed at 0): the CPB then passes on only what
  P's features say about the whole image (the gate and the class vector), an ablation of where the prior enters.
  The gate reads GAP(G_s) standardised per channel by statistics of the frozen P over training patches
  (`calibrate_gates`): P's instance norm leaves every channel's mean nearly the same for every image (measured on the
  tumour phantom: spread across images ~2 % of its level at stage 0), so on the raw GAP a zero-started W_c learns a
  constant gate long before it can tell images apart. Standardising is an affine change of W_c's coordinates, the
  same family of gates; uncalibrated (mean 0, std 1) the block reads the raw GAP, as checkpoints from before it do.

Everything is one module: the stock `nnUNetv2_predict` builds it with the trainer's `build_network_architecture`,
loads `network_weights` (prior included) and calls forward, which runs P and returns the segmentation logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn import functional as F


def _spatial_dims(conv_op: type[nn.Module]) -> int:
    if conv_op is nn.Conv2d:
        return 2
    if conv_op is nn.Conv3d:
        return 3
    raise TypeError(f"FTSegNet supports 2d and 3d U-Nets (Conv2d/Conv3d), not {conv_op.__name__}")


def global_average(x: torch.Tensor) -> torch.Tensor:
    """GAP: (images, channels, *spatial) -> (images, channels). The prior's class head, the CPB gate and the gate's
    calibration must pool alike."""
    return x.flatten(2).mean(2)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention over spatial tokens; keys and values come from a map shrunk by a strided convolution
    (reduction per axis), which keeps attention affordable on large maps and 3D volumes."""

    def __init__(self, channels: int, heads: int, reduction: tuple[int, ...], conv_op: type[nn.Module]):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.heads = heads
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        if any(r > 1 for r in reduction):
            self.reduce = conv_op(channels, channels, reduction, reduction)
            self.reduce_norm = nn.LayerNorm(channels)
        else:
            self.reduce = None

    def forward(self, tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        b, n, c = tokens.shape
        q = self.q(tokens).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.reduce is not None:
            kv_in = self.reduce(tokens.transpose(1, 2).reshape(b, c, *shape)).flatten(2).transpose(1, 2)
            kv_in = self.reduce_norm(kv_in)
        else:
            kv_in = tokens
        k, v = self.kv(kv_in).view(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> depth-wise 3x3(x3) conv over the token grid -> GELU -> linear: the conv gives the MLP the positional
    cue that MiT uses instead of position embeddings (and keeps working at any patch size)."""

    def __init__(self, channels: int, ratio: int, conv_op: type[nn.Module]):
        super().__init__()
        hidden = channels * ratio
        self.fc1 = nn.Linear(channels, hidden)
        self.dw = conv_op(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        b, n, _ = tokens.shape
        h = self.fc1(tokens)
        h = self.dw(h.transpose(1, 2).reshape(b, -1, *shape)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(h))


class TransformerBlock(nn.Module):
    """Pre-norm block on a feature map: x + attention(LN x), then x + MixFFN(LN x)."""

    def __init__(self, channels: int, heads: int, reduction: tuple[int, ...], conv_op: type[nn.Module],
                 mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attention = EfficientSelfAttention(channels, heads, reduction, conv_op)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = MixFFN(channels, mlp_ratio, conv_op)
        # both residual branches start at zero (as LayerScale/ReZero do for deep transformers): a new block is the
        # identity, so the encoder starts as the plans' U-Net and the blocks grow in only as far as they help. With
        # random output layers, every block perturbed the conv features from the first step and the network
        # trained worse than the U-Net it extends (measured: docs/ftsegnet.md)
        for layer in (self.attention.proj, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attention(self.norm1(tokens), shape)
        tokens = tokens + self.mlp(self.norm2(tokens), shape)
        return tokens.transpose(1, 2).reshape(x.shape)


def attention_heads(channels: int, head_channels: int = 64) -> int:
    """Heads of ~head_channels channels each that divide channels exactly."""
    heads = max(1, channels // head_channels)
    while channels % heads:
        heads -= 1
    return heads


def reduction_for(feature_size: tuple[int, ...], ratio: int) -> tuple[int, ...]:
    """MiT's spatial reduction ratio per axis, left at 1 on axes too short to shrink (anisotropic 3d maps)."""
    return tuple(ratio if n >= 2 * ratio else 1 for n in feature_size)


class ClassificationPrior(nn.Module):
    """Small CNN classifier. Stage s has the stride of encoder stage s, so its feature G_s lies on the same grid as
    the segmentation feature F_s; forward returns (class logits, [G_0, ..., G_last])."""

    def __init__(self, input_channels: int, num_classes: int, strides: list, conv_op: type[nn.Module],
                 base_features: int = 8, max_features: int = 64):
        super().__init__()
        dim = _spatial_dims(conv_op)
        norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
        stages, c = [], input_channels
        self.output_channels = []
        for s, stride in enumerate(strides):
            out = min(base_features * 2 ** s, max_features)
            stages.append(nn.Sequential(conv_op(c, out, 3, stride, 1), norm(out, affine=True),
                                        nn.LeakyReLU(0.01, inplace=True)))
            self.output_channels.append(out)
            c = out
        self.stages = nn.ModuleList(stages)
        self.num_classes = num_classes
        self.head = nn.Linear(c, num_classes)
        self.apply(InitWeights_He(1e-2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        evidence = []
        for stage in self.stages:
            x = stage(x)
            evidence.append(x)
        return self.head(global_average(x)), evidence


class ClassificationPriorBlock(nn.Module):
    """F' = F * 2 sigmoid(W_c GAP(G)) + alpha * conv1x1(G), the identity at initialisation (W_c = 0, alpha = 0).
    Without the spatial term (spatial=False): F' = F * 2 sigmoid(W_c GAP(G)), alpha a buffer fixed at 0."""

    def __init__(self, channels: int, prior_channels: int, conv_op: type[nn.Module], spatial: bool = True):
        super().__init__()
        self.gate = nn.Linear(prior_channels, channels)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        # per-channel statistics of GAP(G) over training patches, set once P is frozen (calibrate_gates); the
        # defaults read the raw GAP
        self.register_buffer("evidence_mean", torch.zeros(prior_channels))
        self.register_buffer("evidence_std", torch.ones(prior_channels))
        if spatial:
            self.project = conv_op(prior_channels, channels, 1)
            self.alpha = nn.Parameter(torch.zeros(1))
        else:
            # kept as a buffer so that vital signs and close_cpb read every block alike
            self.project = None
            self.register_buffer("alpha", torch.zeros(1))
        # the gate of the last forward (images x channels), read by the trainer's vital signs
        self.last_gate: torch.Tensor | None = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints from before the gate's standardisation were trained on the raw GAP: keep reading it for them
        for name, value in (("evidence_mean", 0.0), ("evidence_std", 1.0)):
            if prefix + name not in state_dict:
                state_dict[prefix + name] = torch.full_like(getattr(self, name), value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def evidence(self, prior: torch.Tensor) -> torch.Tensor:
        """The gate's input: GAP(G) per image, standardised by the calibrated per-channel statistics."""
        return (global_average(prior) - self.evidence_mean) / self.evidence_std

    def forward(self, features: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        if prior.shape[2:] != features.shape[2:]:
            # odd input sizes round differently in the two networks' strided convs
            prior = F.interpolate(prior, size=features.shape[2:], mode="nearest")
        gate = 2 * torch.sigmoid(self.gate(self.evidence(prior)))
        self.last_gate = gate.detach()
        gate = gate.view(*gate.shape, *([1] * (features.ndim - 2)))
        if self.project is None:
            return features * gate
        return features * gate + self.alpha * self.project(prior)


class FTSegNetwork(nn.Module):
    """forward(x) -> segmentation logits (a list with the deep-supervision outputs when the decoder's
    deep_supervision is on, as nnU-Net expects); forward(x, return_prior_logits=True) -> (output, prior logits)."""

    def __init__(self, unet: nn.Module, prior: ClassificationPrior | None, patch_size: list[int],
                 transformer_stages: int = 2, transformer_depth: int = 1, reduction_ratio: int = 2,
                 mlp_ratio: int = 4, spatial_prior: bool = True):
        super().__init__()
        encoder = getattr(unet, "encoder", None)
        if encoder is None or not hasattr(encoder, "stages") or not hasattr(unet, "decoder"):
            raise TypeError(f"FTSegNetwork needs an nnU-Net U-Net (encoder stages + UNetDecoder) from the plans, "
                            f"got {type(unet).__name__}")
        conv_op = encoder.conv_op
        _spatial_dims(conv_op)
        n_stages = len(encoder.stages)
        if not 0 <= transformer_stages <= n_stages:
            raise ValueError(f"transformer_stages must lie in [0, {n_stages}] for this {n_stages}-stage U-Net, "
                             f"got {transformer_stages}")
        self.unet = unet
        self.prior = prior
        channels = list(encoder.output_channels)
        size = list(patch_size)
        transformers = []
        for s in range(n_stages):
            size = [max(1, n // st) for n, st in zip(size, encoder.strides[s], strict=True)]
            if s >= n_stages - transformer_stages:
                # the deeper the stage, the smaller the map: the deepest one attends over all of its tokens
                ratio = reduction_ratio ** (n_stages - 1 - s)
                transformers.append(nn.Sequential(*[
                    TransformerBlock(channels[s], attention_heads(channels[s]), reduction_for(tuple(size), ratio),
                                     conv_op, mlp_ratio) for _ in range(transformer_depth)]))
            else:
                transformers.append(nn.Identity())
        self.transformers = nn.ModuleList(transformers)
        if prior is not None:
            if len(prior.stages) != n_stages:
                raise ValueError(f"the prior has {len(prior.stages)} stages, the encoder {n_stages}")
            self.cpb = nn.ModuleList([ClassificationPriorBlock(c, pc, conv_op, spatial_prior)
                                      for c, pc in zip(channels, prior.output_channels, strict=True)])
            self.class_to_bottleneck = nn.Linear(prior.num_classes, channels[-1])
            nn.init.zeros_(self.class_to_bottleneck.weight)
            nn.init.zeros_(self.class_to_bottleneck.bias)
        else:
            self.cpb = None
            self.class_to_bottleneck = None

    @property
    def decoder(self) -> nn.Module:
        # nnU-Net switches deep supervision with `network.decoder.deep_supervision = ...`
        return self.unet.decoder

    def forward(self, x: torch.Tensor, return_prior_logits: bool = False):
        prior_logits, evidence = self.prior(x) if self.prior is not None else (None, None)
        encoder = self.unet.encoder
        h = encoder.stem(x) if getattr(encoder, "stem", None) is not None else x
        skips = []
        last = len(encoder.stages) - 1
        for s, stage in enumerate(encoder.stages):
            h = self.transformers[s](stage(h))
            if self.cpb is not None:
                h = self.cpb[s](h, evidence[s])
                if s == last:
                    vector = self.class_to_bottleneck(torch.softmax(prior_logits, 1))
                    h = h + vector.view(*vector.shape, *([1] * (h.ndim - 2)))
            skips.append(h)
        output = self.unet.decoder(skips)
        if return_prior_logits:
            return output, prior_logits
        return output


@torch.no_grad()
def close_cpb(network: FTSegNetwork) -> None:
    """Put every CPB back to the identity (alpha 0, gate weights and bias 0, class projection 0): the network then
    computes what the transformer-only network with the same segmenter weights computes. For ablations."""
    if network.cpb is None:
        return
    for block in network.cpb:
        block.alpha.zero_()
        block.gate.weight.zero_()
        block.gate.bias.zero_()
    network.class_to_bottleneck.weight.zero_()
    network.class_to_bottleneck.bias.zero_()


class GateCalibration:
    """Running per-channel sums of GAP(G_s) for every stage of P, fed batch by batch (`add`), then written into the
    CPBs (`apply`). Sums rather than means, so that DDP ranks can add theirs up (`all_reduce`)."""

    def __init__(self, channels: list[int]):
        self.sums = [torch.zeros(c, dtype=torch.float64) for c in channels]
        self.squares = [torch.zeros(c, dtype=torch.float64) for c in channels]
        self.count = 0

    @torch.no_grad()
    def add(self, evidence: list[torch.Tensor]) -> None:
        for s, g in enumerate(evidence):
            pooled = global_average(g).double().cpu()
            self.sums[s] += pooled.sum(0)
            self.squares[s] += (pooled ** 2).sum(0)
        self.count += evidence[0].shape[0]

    def all_reduce(self, device: torch.device) -> None:
        """Sums and count over every DDP rank (one collective), so that every rank computes the same statistics."""
        sizes = [len(t) for t in self.sums]
        both = torch.cat([*self.sums, *self.squares, torch.tensor([float(self.count)], dtype=torch.float64)])
        both = both.to(device)
        dist.all_reduce(both)
        parts = both.cpu().split(sizes + sizes + [1])
        self.sums, self.squares = list(parts[:len(sizes)]), list(parts[len(sizes):2 * len(sizes)])
        self.count = int(parts[-1])

    def statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, std) per stage; a channel that hardly moves gets a floor of 5 % of the stage's median std, so
        that it is not blown up into noise."""
        if self.count < 2:
            raise ValueError(f"calibrating the CPB gates needs at least 2 patches, got {self.count}")
        out = []
        for total, squares in zip(self.sums, self.squares, strict=True):
            mean = total / self.count
            std = (squares / self.count - mean ** 2).clamp_min(0).sqrt()
            floor = max(1e-6, 0.05 * float(std.median()))
            out.append((mean.float(), std.clamp_min(floor).float()))
        return out

    @torch.no_grad()
    def apply(self, network: FTSegNetwork) -> list[tuple[torch.Tensor, torch.Tensor]]:
        stats = self.statistics()
        for block, (mean, std) in zip(network.cpb, stats, strict=True):
            block.evidence_mean.copy_(mean)
            block.evidence_std.copy_(std)
        return stats


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prior_strides(encoder: nn.Module) -> list:
    """The encoder's per-stage strides, the stem (ResEnc) having stride 1."""
    return [tuple(s) for s in encoder.strides]


__all__ = ["ClassificationPrior", "ClassificationPriorBlock", "EfficientSelfAttention", "FTSegNetwork",
           "GateCalibration", "MixFFN", "TransformerBlock", "attention_heads", "close_cpb", "count_parameters",
           "global_average", "prior_strides", "reduction_for"]
