"""Quality control of synthetic tumours by a baseline segmentor (FreeTumor): keep a synthetic tumour only when the
baseline labels more than 70% of its voxels as tumour (any tumour class), else keep the original patch.

The baseline is a checkpoint of any nnU-Net model trained on the same data set (built with its own trainer class,
plans and configuration, so a stock nnUNetTrainer, one of ours or a FreeTumorSynthesisTrainer checkpoint all work), a
frozen copy of the segmentor after it trained on the real tumours, or an exponential moving average (EMA) of it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

QC_THRESHOLD = 0.7


class BaselineError(RuntimeError):
    pass


def _labels(dataset_json: Mapping) -> dict[str, object]:
    return {str(k): v for k, v in dataset_json["labels"].items()}


def load_baseline(filename: str | os.PathLike, dataset_json: Mapping, device: torch.device,
                  setting: str = "baseline checkpoint") -> nn.Module:
    """An nnU-Net checkpoint's network in eval mode, frozen, deep supervision off (outputs plain logits)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise BaselineError(f"{setting} {filename}: file not found")
    try:
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise BaselineError(f"{setting} {filename}: not a readable torch checkpoint ({e})") from None
    missing = [k for k in ("network_weights", "init_args", "trainer_name") if k not in checkpoint]
    if missing:
        raise BaselineError(f"{setting} {filename}: not an nnU-Net training checkpoint (missing {missing})")
    init = checkpoint["init_args"]
    theirs = _labels(init["dataset_json"])
    if theirs != _labels(dataset_json):
        raise BaselineError(f"{setting} {filename}: trained with labels {theirs}, but this data set has "
                            f"{_labels(dataset_json)}; the baseline must come from the same data set")
    trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    plans_manager = PlansManager(init["plans"])
    configuration_manager = plans_manager.get_configuration(init["configuration"])
    label_manager = plans_manager.get_label_manager(init["dataset_json"])
    n_in = determine_num_input_channels(plans_manager, configuration_manager, init["dataset_json"])
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, n_in, label_manager.num_segmentation_heads, False)
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v
               for k, v in checkpoint["network_weights"].items()}
    network.load_state_dict(weights)
    return freeze(network).to(device)


def freeze(network: nn.Module) -> nn.Module:
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def ema_copy(network: nn.Module) -> nn.Module:
    return freeze(copy.deepcopy(network))


@torch.no_grad()
def update_ema(ema: nn.Module, network: nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, [p.detach() for p in network.parameters()], alpha=1 - decay)
    for b_ema, b in zip(ema.buffers(), network.buffers(), strict=True):
        b_ema.copy_(b)


def logits_of(output) -> torch.Tensor:
    """Full-resolution logits from a network output (a list under deep supervision)."""
    return output[0] if isinstance(output, list | tuple) else output


@torch.no_grad()
def tumour_fractions(baseline: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                     tumour_labels: Sequence[int]) -> np.ndarray:
    """Per sample, the fraction of its synthetic tumour voxels (masks, bool (n, ...)) that the baseline labels as any of
    tumour_labels (argmax over its outputs): FreeTumor counts any tumour class, so a liver tumour the judge calls a
    kidney tumour is still a visible tumour."""
    was_training = baseline.training
    baseline.eval()
    prediction = logits_of(baseline(images)).argmax(1)
    baseline.train(was_training)
    labels = torch.as_tensor(sorted(set(int(t) for t in tumour_labels)), device=prediction.device)
    hits = (torch.isin(prediction, labels) & masks).flatten(1).sum(1).float()
    return (hits / masks.flatten(1).sum(1).clamp_min(1).float()).cpu().numpy()


def accept(fractions: np.ndarray, threshold: float = QC_THRESHOLD) -> np.ndarray:
    """More than threshold of the synthetic voxels seen as tumour."""
    return np.asarray(fractions) > threshold
