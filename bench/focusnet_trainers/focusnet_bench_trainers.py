"""Stock and FocusNetV2 with the same narrow S-Net (features 8-64 instead of 32-320) and the same budget
(12 epochs x 10 iterations), so that the phantom comparison fits a shared 2-core CPU. The comparison script puts this
folder on nnUNet_extTrainer."""

import copy

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ext.trainers.baseline_trainers import nnUNetExtTrainer
from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer


def narrow(configuration_manager) -> ConfigurationManager:
    configuration = copy.deepcopy(configuration_manager.configuration)
    kwargs = configuration["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(f, 8 * 2 ** i) for i, f in enumerate(kwargs["features_per_stage"])]
    return ConfigurationManager(configuration)


def budget(trainer) -> None:
    trainer.num_epochs = 12
    trainer.num_iterations_per_epoch = 10
    trainer.num_val_iterations_per_epoch = 2


class nnUNetTrainer_hnbench(nnUNetExtTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        budget(self)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return nnUNetExtTrainer.build_network_architecture(plans_manager, narrow(configuration_manager),
                                                           num_input_channels, num_output_channels,
                                                           enable_deep_supervision)


class FocusNetV2Trainer_hnbench(FocusNetV2Trainer):
    sos_features = 8
    shape_features = 8

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        budget(self)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return super().build_network_architecture(plans_manager, narrow(configuration_manager), num_input_channels,
                                                  num_output_channels, enable_deep_supervision)


class _FocusNetV2CostProbe(FocusNetV2Trainer):
    """For bench/bench_trainers.py, which times the steps of the epoch it starts in and predicts with the network as
    it is: start in `start_phase`, with pasting on and every small organ pasted in every window (threshold 0, the
    worst case of prediction cost)."""

    start_phase = "snet"
    peak_threshold = 0.0

    def on_train_start(self):
        super().on_train_start()
        resolved = {r.name: r for r in self.phase_schedule.resolve(self.num_epochs)}
        self.current_epoch = resolved[self.start_phase].start
        self.focus_network.sos_ready.fill_(True)


class FocusNetV2Trainer_cost_snet(_FocusNetV2CostProbe):
    start_phase = "snet"


class FocusNetV2Trainer_cost_sos(_FocusNetV2CostProbe):
    start_phase = "sos"


class FocusNetV2Trainer_cost_adversarial(_FocusNetV2CostProbe):
    start_phase = "adversarial"
