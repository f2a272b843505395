"""FocusNetV2 with a narrow S-Net (4..16 features) and 4 epochs x 2 iterations: every phase once (snet gets two
epochs), cheap enough for the stock train -> stop -> --c -> predict test on the 3D phantom."""

import copy

import torch
from kill_switch import KillMidEpoch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer


class FocusNetV2Trainer_tiny(FocusNetV2Trainer):
    sos_features = 4
    shape_features = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        narrow = copy.deepcopy(configuration_manager.configuration)
        kwargs = narrow["architecture"]["arch_kwargs"]
        kwargs["features_per_stage"] = [min(f, 4 * 2 ** i) for i, f in enumerate(kwargs["features_per_stage"])]
        return super().build_network_architecture(plans_manager, ConfigurationManager(narrow), num_input_channels,
                                                  num_output_channels, enable_deep_supervision)


class FocusNetV2Trainer_tiny_kill(KillMidEpoch, FocusNetV2Trainer_tiny):
    """For the kill-and-resume test."""
