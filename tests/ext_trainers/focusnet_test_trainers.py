"""FocusNetV2 with a narrow S-Net (4..16 features) and 4 epochs x 2 iterations: every phase once (snet gets two
epochs), cheap enough for the stock train -> stop -> --c -> predict test on the 3D phantom."""

import torch
from kill_switch import KillMidEpoch

from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer


class FocusNetV2Trainer_tiny(FocusNetV2Trainer):
    unet_base_features = 4
    sos_features = 4
    shape_features = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


class FocusNetV2Trainer_tiny_kill(KillMidEpoch, FocusNetV2Trainer_tiny):
    """For the kill-and-resume test."""
