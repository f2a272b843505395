"""Light U-GAT-IT-style translation networks for WeakCycleTrainer (consistency label transfer, Du et al. 2024).

The generator turns a disease image into a normal-looking one (or back). Its CAM head classifies the domain of the
input from globally pooled features and re-weights the feature map by the classifier's weights; a 3x3 convolution
with a sigmoid on those features is the attention mask: where the translation may change the image. Two streams run
side by side through the bottleneck, as in the original: the translation stream (AdaILN residual blocks, gamma/beta
from the pooled CAM features) and a reconstruction stream (residual blocks on the encoder features). After every
block the translation stream is blended with the reconstruction stream by the attention (at feature resolution):
    h = block(h) * attention + r * (1 - attention)
so only attended positions carry translated content into the decoder. Outputs:
    translated     = decoder(h)                (the translation; the cycle, identity and adversarial losses use it)
    reconstruction = reconstruction_decoder(r)
    composite      = translated * mask + input * (1 - mask)
The discriminators are PatchGAN-style with spectral norm and their own CAM logits; the global one looks at the
whole patch (more downsampling), the local one at small neighbourhoods.

Everything is written for 2D and 3D (dim = len(patch size)); sizes come from the plans (channels, patch size).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm


def _conv(dim: int):
    return nn.Conv2d if dim == 2 else nn.Conv3d


def _instance_norm(dim: int):
    return nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        conv, norm = _conv(dim), _instance_norm(dim)
        self.body = nn.Sequential(conv(channels, channels, 3, padding=1, padding_mode="reflect", bias=False),
                                  norm(channels), nn.ReLU(inplace=True),
                                  conv(channels, channels, 3, padding=1, padding_mode="reflect", bias=False),
                                  norm(channels))

    def forward(self, x):
        return x + self.body(x)


class AdaILN(nn.Module):
    """Adaptive instance-layer norm: a learned mix (rho) of instance and layer statistics, scaled by gamma/beta
    that come from the image (U-GAT-IT's MLP on the pooled CAM features)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.full((1, channels), 0.9))

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        dims = _spatial_dims(x)
        expand = (slice(None), slice(None)) + (None,) * len(dims)
        instance = (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, keepdim=True) + self.eps)
        all_dims = (1, *dims)
        layer = (x - x.mean(all_dims, keepdim=True)) / torch.sqrt(x.var(all_dims, keepdim=True) + self.eps)
        rho = self.rho.clamp(0, 1)[expand]
        return (rho * instance + (1 - rho) * layer) * gamma[expand] + beta[expand]


class AdaILNResidualBlock(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        conv = _conv(dim)
        self.conv1 = conv(channels, channels, 3, padding=1, padding_mode="reflect", bias=False)
        self.norm1 = AdaILN(channels)
        self.conv2 = conv(channels, channels, 3, padding=1, padding_mode="reflect", bias=False)
        self.norm2 = AdaILN(channels)

    def forward(self, x, gamma, beta):
        out = torch.relu(self.norm1(self.conv1(x), gamma, beta))
        return x + self.norm2(self.conv2(out), gamma, beta)


def _upsampling_decoder(channels: int, out_channels: int, n_down: int, dim: int) -> nn.Sequential:
    conv, norm = _conv(dim), _instance_norm(dim)
    layers: list[nn.Module] = []
    c = channels
    for _ in range(n_down):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   conv(c, c // 2, 3, padding=1, padding_mode="reflect", bias=False), norm(c // 2),
                   nn.ReLU(inplace=True)]
        c //= 2
    layers.append(conv(c, out_channels, 7 if dim == 2 else 3, padding=3 if dim == 2 else 1, padding_mode="reflect"))
    return nn.Sequential(*layers)


class CAMHead(nn.Module):
    """Average- and max-pooled features each through Linear(C->1): two domain logits; the Linear weights re-weight
    the feature map (class activation), the two re-weighted maps are fused by a 1x1 convolution."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.gap_fc = nn.Linear(channels, 1, bias=False)
        self.gmp_fc = nn.Linear(channels, 1, bias=False)
        self.fuse = _conv(dim)(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, domain logits B x 2, class activation map B x 1 x ...)"""
        dims = _spatial_dims(x)
        expand = (slice(None), slice(None)) + (None,) * len(dims)
        gap_logit = self.gap_fc(x.mean(dims))
        gmp_logit = self.gmp_fc(x.amax(dims))
        features = torch.cat((x * self.gap_fc.weight[expand], x * self.gmp_fc.weight[expand]), 1)
        features = torch.relu(self.fuse(features))
        return features, torch.cat((gap_logit, gmp_logit), 1), features.sum(1, keepdim=True)


class WeakCycleGenerator(nn.Module):
    """Encoder (7x7 conv, n_down stride-2 convs, residual blocks), CAM head, attention mask, AdaILN decoder and a
    reconstruction decoder. Inputs must be divisible by 2**n_down along every axis."""

    def __init__(self, in_channels: int, dim: int = 2, features: int = 32, n_down: int = 2, n_blocks: int = 4):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"WeakCycleGenerator works on 2D or 3D images, got dim={dim}")
        conv, norm = _conv(dim), _instance_norm(dim)
        self.dim, self.n_down = dim, n_down
        k = 7 if dim == 2 else 3
        layers: list[nn.Module] = [conv(in_channels, features, k, padding=k // 2, padding_mode="reflect", bias=False),
                                   norm(features), nn.ReLU(inplace=True)]
        c = features
        for _ in range(n_down):
            layers += [conv(c, 2 * c, 3, stride=2, padding=1, padding_mode="reflect", bias=False), norm(2 * c),
                       nn.ReLU(inplace=True)]
            c *= 2
        layers += [ResidualBlock(c, dim) for _ in range(n_blocks)]
        self.encoder = nn.Sequential(*layers)
        self.cam = CAMHead(c, dim)
        self.attention = conv(c, 1, 3, padding=1)
        # light U-GAT-IT: gamma and beta from the pooled features, not the whole map
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c), nn.ReLU(inplace=True))
        self.gamma = nn.Linear(c, c)
        self.beta = nn.Linear(c, c)
        self.blocks = nn.ModuleList(AdaILNResidualBlock(c, dim) for _ in range(n_blocks))
        self.reconstruction_blocks = nn.ModuleList(ResidualBlock(c, dim) for _ in range(n_blocks))
        self.decoder = _upsampling_decoder(c, in_channels, n_down, dim)
        self.reconstruction = _upsampling_decoder(c, in_channels, n_down, dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """translated, composite, reconstruction (images), mask (attention in [0, 1] at input size), cam_logits
        (B x 2, disease-vs-normal from the input), cam_map (class activation, input size, unnormalised)."""
        encoded = self.encoder(x)
        features, cam_logits, cam_map = self.cam(encoded)
        size = x.shape[2:]
        mode = "bilinear" if self.dim == 2 else "trilinear"
        attention = torch.sigmoid(self.attention(features))
        style = self.mlp(features.mean(_spatial_dims(features)))
        gamma, beta = self.gamma(style), self.beta(style)
        h, r = features, encoded
        for block, reconstruction_block in zip(self.blocks, self.reconstruction_blocks, strict=True):
            r = reconstruction_block(r)
            h = block(h, gamma, beta) * attention + r * (1 - attention)
        translated = self.decoder(h)
        reconstruction = self.reconstruction(r)
        mask = nn.functional.interpolate(attention, size=size, mode=mode, align_corners=False)
        composite = translated * mask + x * (1 - mask)
        cam_map = nn.functional.interpolate(cam_map, size=size, mode=mode, align_corners=False)
        return {"translated": translated, "composite": composite, "reconstruction": reconstruction, "mask": mask,
                "cam_logits": cam_logits, "cam_map": cam_map}


class WeakCycleDiscriminator(nn.Module):
    """PatchGAN with spectral norm and CAM logits; n_layers stride-2 convolutions set its field of view (global:
    more, local: fewer)."""

    def __init__(self, in_channels: int, dim: int = 2, features: int = 32, n_layers: int = 3):
        super().__init__()
        conv = _conv(dim)
        layers: list[nn.Module] = [spectral_norm(conv(in_channels, features, 4, stride=2, padding=1)),
                                   nn.LeakyReLU(0.2, inplace=True)]
        c = features
        for _ in range(n_layers - 1):
            layers += [spectral_norm(conv(c, 2 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        layers += [spectral_norm(conv(c, 2 * c, 3, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        c *= 2
        self.body = nn.Sequential(*layers)
        self.gap_fc = spectral_norm(nn.Linear(c, 1, bias=False))
        self.gmp_fc = spectral_norm(nn.Linear(c, 1, bias=False))
        self.fuse = conv(2 * c, c, 1)
        self.head = spectral_norm(conv(c, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch logits, CAM logits B x 2)"""
        h = self.body(x)
        dims = _spatial_dims(h)
        expand = (slice(None), slice(None)) + (None,) * len(dims)
        cam_logits = torch.cat((self.gap_fc(h.mean(dims)), self.gmp_fc(h.amax(dims))), 1)
        h = torch.cat((h * self.gap_fc.weight[expand], h * self.gmp_fc.weight[expand]), 1)
        h = nn.functional.leaky_relu(self.fuse(h), 0.2)
        return self.head(h), cam_logits


def discriminator_depths(patch_size) -> tuple[int, int]:
    """(global, local) numbers of stride-2 layers: the global one down to about 4 pixels on the smallest axis (at
    most 5, U-GAT-IT's 256x256 value), the local one at most 3 (70-pixel receptive field)."""
    smallest = int(min(patch_size))
    depth = max(1, min(5, smallest.bit_length() - 3))
    return depth, max(1, min(3, depth - 2))


MIN_ATTENTION_CELLS = 24


def generator_downsamplings(patch_size, min_attention: int = MIN_ATTENTION_CELLS) -> int:
    """Two stride-2 encoder convolutions as in U-GAT-IT (on the original's 256x256 images a 64x64 attention mask),
    one where two would leave the attention grid under `min_attention` cells on the smallest axis: the attention is
    the lesion mask, and on a 48x48 image a 12x12 grid gives lesions a few pixels wide one or two cells, too coarse
    to outline them. In 2D the residual blocks cost the same either way (half the channels on four times the
    cells), in 3D twice as much with one."""
    smallest = int(min(patch_size))
    return 2 if smallest / 4 >= min_attention else 1


def pad_to_multiple(x: torch.Tensor, multiple: tuple[int, ...]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Replicate-pad the spatial axes up to multiples; the slices cut the original region back out."""
    pads, crop = [], [slice(None), slice(None)]
    for size, m in zip(x.shape[2:], multiple, strict=True):
        extra = (-size) % m
        pads.append((extra // 2, extra - extra // 2))
        crop.append(slice(extra // 2, extra // 2 + size))
    flat = [p for pair in reversed(pads) for p in pair]
    if any(flat):
        x = nn.functional.pad(x, flat, mode="replicate")
    return x, tuple(crop)


@torch.no_grad()
def attention_and_cam(generator: WeakCycleGenerator, x: torch.Tensor, chunk: int = 8) -> dict[str, torch.Tensor]:
    """G_AB's attention and its CAM (ReLU, divided by its maximum per image) for a batch (N x C x spatial), both N x
    1 x spatial. Inputs are padded to what the downsamplings need and cut back; `chunk` images at a time bound the
    memory a whole volume's slices would take."""
    multiple = (2 ** generator.n_down,) * (x.ndim - 2)
    attention, cams = [], []
    for start in range(0, x.shape[0], chunk):
        padded, crop = pad_to_multiple(x[start:start + chunk], multiple)
        out = generator(padded)
        attention.append(out["mask"][crop])
        cam = torch.relu(out["cam_map"][crop])
        cams.append(cam / cam.flatten(1).amax(1).clamp_min(1e-8).view(-1, *(1,) * (cam.ndim - 1)))
    return {"attention": torch.cat(attention), "cam": torch.cat(cams)}
