"""Equal-budget trainers for bench/bench_freetumor_phantom.py: stock nnU-Net behaviour and FreeTumorTrainer, both
with a U-Net of features 8-16-32-64 (the plans' 32-320 is too slow for a CPU comparison) and the same budget."""

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_ext.trainers.freetumor_trainers import FreeTumorTrainer
from nnunet_ext.training.base import nnUNetExtTrainer

EPOCHS, ITERATIONS = 8, 10


def small_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                  enable_deep_supervision=True):
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    kwargs["features_per_stage"] = [min(f, 8 * 2 ** i) for i, f in enumerate(kwargs["features_per_stage"])]
    return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)


class nnUNetTrainer_benchsmall(nnUNetExtTrainer):
    build_network_architecture = staticmethod(small_network)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = EPOCHS, ITERATIONS, 2


class FreeTumorTrainer_benchsmall(FreeTumorTrainer):
    build_network_architecture = staticmethod(small_network)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = EPOCHS, ITERATIONS, 2
