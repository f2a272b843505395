"""Planner presets: ExperimentPlanner subclasses that write a plans file beside nnUNetPlans.

nnU-Net sizes its default plans for an 8 GB GPU: a 2d patch as large as the images allow with 32-512 features, a 3d
patch of ~128^3 with 32-320 features. On a few CPU cores an iteration of those takes seconds to minutes. The presets
here keep nnU-Net's own planning (spacing, topology, normalisation, patch aspect ratio from the data) and change only
what decides the cost of an iteration:

- `cpu`: 16-base features capped at 256, and a compute budget per iteration instead of a memory target. The budget
  is in multiply-accumulates of the forward pass of the whole batch (counted exactly for PlainConvUNet by
  `plain_unet_macs`), so the patch shrinks from the data's median shape until a batch of 2 fits, and small images get
  a larger batch, as nnU-Net's memory rule does. No 3d_lowres (a cascade doubles the training on a CPU).
- `cpu_narrow`: `cpu` with 8-base features (8-128): the width the FocusNetV2 and FreeTumor CPU benchmarks used
  through `unet_base_features = 8`; the same budget then buys larger patches.
- `cpu_context`: 2d only, for methods that need context more than width and run several U-Nets a step (AVFusion's
  three on DRIVE-AV): `cpu_narrow`'s 8-128 features at a quarter of the `cpu` budget (halving every width quarters
  the count), and a floor under the patch: never below 256 pixels a side (or the median image where that is
  smaller), since 128-pixel patches on DRIVE-AV learnt no arteries. Where the floor binds, the batch is nnU-Net's
  minimum of 2 and the floor's cost goes over the budget.
- `lowmem`: nnU-Net's default planner with a 4 GB GPU-memory target (its documented knob), for small GPUs.

A preset is applied through nnU-Net's Python API (`plan_experiment_dataset` takes the planner class: nnU-Net finds
`-pl` planners only inside nnunetv2) and is then used with the stock commands through `-p PLANS_IDENTIFIER`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

CPU_CONFIGURATIONS = ("2d", "3d_fullres")
ALL_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")

# Measured on DRIVE-AV (docs/cpu.md): a 256x256 patch, batch 2, 16-32-64-128-256-256 features and 3 input channels
# took ~0.45 s an iteration on 2 CPU cores and learnt arteries and veins, where 128x128 patches learnt no arteries.
# That batch is 7.16e9 forward multiply-accumulates (plain_unet_macs; the same as counting torch's convolutions),
# the cpu budget. 3d uses the same budget: 3x3x3 kernels cost 3x more per voxel, so the patch holds fewer voxels.
CPU_MACS_PER_ITERATION = 7.2e9


def _stage_sizes(patch_size, strides) -> list[float]:
    sizes, voxels = [], float(np.prod(patch_size, dtype=np.float64))
    for s in strides:
        voxels /= float(np.prod(s))
        sizes.append(voxels)
    return sizes


def plain_unet_macs(patch_size, input_channels: int, output_channels: int, arch_kwargs: dict) -> float:
    """Multiply-accumulates of one sample's forward pass through a PlainConvUNet with these arch_kwargs.

    Encoder stage s runs n_conv_per_stage[s] convolutions at its resolution (the first one strided, from the previous
    stage's width); decoder stage s upsamples with a transposed convolution whose kernel is the stride (f[s+1] x f[s]
    MACs per output voxel), then convolves the concatenation (2 f[s] -> f[s]) and n-1 more times f[s] -> f[s]; the
    1x1 segmentation layer closes it (deep-supervision heads and norms are left out: under 1% here)."""
    features = list(arch_kwargs["features_per_stage"])
    kernels = [float(np.prod(k)) for k in arch_kwargs["kernel_sizes"]]
    enc, dec = arch_kwargs["n_conv_per_stage"], arch_kwargs["n_conv_per_stage_decoder"]
    voxels = _stage_sizes(patch_size, arch_kwargs["strides"])
    macs, previous = 0.0, input_channels
    for s, f in enumerate(features):
        macs += voxels[s] * kernels[s] * f * (previous + f * (enc[s] - 1))
        previous = f
    for s in range(len(features) - 1):
        f = features[s]
        macs += voxels[s] * features[s + 1] * f
        macs += voxels[s] * kernels[s] * f * (2 * f + f * (dec[s] - 1))
    return macs + voxels[0] * features[0] * output_channels


class CPUPlanner(ExperimentPlanner):
    """nnU-Net's planner with a CPU compute budget in place of the GPU-memory target (see the module docstring).

    nnU-Net shrinks the patch while `estimate / ref_bs * 2 > reference` and then takes batch = reference / estimate
    * ref_bs. With the estimate being one sample's forward MACs, ref_bs 2 and the reference half the budget, the
    patch shrinks until a batch of 2 fits the budget, and the batch grows where the whole median image costs less.
    """

    preset_name = "cpu"
    base_features = 16
    max_features = 256
    macs_per_iteration = CPU_MACS_PER_ITERATION

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or f"nnUNetPlans_{self.preset_name}", overwrite_target_spacing, suppress_transpose)
        self.UNet_base_num_features = self.base_features
        self.UNet_max_features_2d = self.UNet_max_features_3d = self.max_features
        # reference * (target / corresp_GB) is what nnU-Net compares with: make that factor 1 whatever the target
        self.UNet_vram_target_GB = self.UNet_reference_val_corresp_GB = 1
        self.UNet_reference_val_2d = self.UNet_reference_val_3d = self.macs_per_iteration / 2
        self.UNet_reference_val_corresp_bs_2d = self.UNet_reference_val_corresp_bs_3d = 2
        # never add a 3d_lowres stage: the loop that builds it runs while the patch covers less than this fraction
        self.lowres_creation_threshold = 0

    @staticmethod
    def static_estimate_VRAM_usage(patch_size, input_channels: int, output_channels: int, arch_class_name: str,
                                   arch_kwargs: dict, arch_kwargs_req_import) -> float:
        # a count, not a measurement: planning stays deterministic and does not build networks
        return plain_unet_macs(patch_size, input_channels, output_channels, arch_kwargs)


class CPUNarrowPlanner(CPUPlanner):
    preset_name = "cpu_narrow"
    base_features = 8
    max_features = 128


class CPUContextPlanner(CPUNarrowPlanner):
    """cpu_narrow at a quarter of the budget with a minimum 2d patch side (see the module docstring)."""

    preset_name = "cpu_context"
    macs_per_iteration = CPU_MACS_PER_ITERATION / 4
    min_patch_2d = 256

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # pool down to 8 px, not nnU-Net's 4: a 256 px patch then gets the six stages measured on DRIVE-AV (a seventh
        # would run 128-feature convolutions on a 4x4 map, more cost where the floor already went over the budget)
        self.UNet_featuremap_min_edge_length = 8

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(spacing) != 2:
            return plan
        floor = [min(self.min_patch_2d, int(m)) for m in median_shape[-2:]]
        if all(p >= f for p, f in zip(plan["patch_size"], floor, strict=True)):
            return plan
        # nnU-Net's budget loop shrank below the floor: raise the short sides back and rebuild the topology as that
        # loop does for each patch it tries (get_pool_and_conv_props rounds the patch up to what the poolings divide)
        wanted = [max(int(p), f) for p, f in zip(plan["patch_size"], floor, strict=True)]
        _, strides, kernels, patch, _ = get_pool_and_conv_props(spacing, wanted, self.UNet_featuremap_min_edge_length,
                                                                999999)
        n = len(strides)
        plan["architecture"]["arch_kwargs"].update(
            n_stages=n, kernel_sizes=kernels, strides=strides,
            features_per_stage=tuple(min(self.max_features, self.base_features * 2 ** i) for i in range(n)),
            n_conv_per_stage=self.UNet_blocks_per_stage_encoder[:n],
            n_conv_per_stage_decoder=self.UNet_blocks_per_stage_decoder[:n - 1])
        plan["patch_size"] = tuple(patch)
        plan["batch_size"] = self.UNet_min_batch_size
        return plan


class LowMemPlanner(ExperimentPlanner):
    """nnU-Net's default planner for a 4 GB GPU (its `gpu_memory_target_in_gb`, 8 by default)."""

    preset_name = "lowmem"
    gpu_memory_target_in_gb = 4.0

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float | None = None,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb or self.gpu_memory_target_in_gb,
                         preprocessor_name, plans_name or f"nnUNetPlans_{self.preset_name}", overwrite_target_spacing,
                         suppress_transpose)


@dataclass(frozen=True)
class Preset:
    name: str
    planner: type
    configurations: tuple[str, ...]
    description: str

    @property
    def plans_identifier(self) -> str:
        return f"nnUNetPlans_{self.name}"


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu", CPUPlanner, CPU_CONFIGURATIONS,
           "a few CPU cores: 16-256 features, batch >= 2, patch from the data within "
           f"{CPU_MACS_PER_ITERATION / 1e9:g} GMAC per iteration (~0.5 s on 2 cores)"),
    Preset("cpu_narrow", CPUNarrowPlanner, CPU_CONFIGURATIONS,
           "cpu with 8-128 features (the FocusNetV2/FreeTumor CPU benchmark width): larger patches, same budget"),
    Preset("cpu_context", CPUContextPlanner, ("2d",),
           "2d, several U-Nets a step (AVFusion): 8-128 features, a quarter of the cpu budget, patch never below "
           f"{CPUContextPlanner.min_patch_2d} px a side (or the image): the context A/V needs"),
    Preset("lowmem", LowMemPlanner, ALL_CONFIGURATIONS,
           "small GPUs: nnU-Net's default planner with a 4 GB GPU-memory target"),
)}
