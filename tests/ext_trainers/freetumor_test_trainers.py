"""The smallest FreeTumor runs that still cross an epoch boundary: 2 epochs x 2 iterations, and a U-Net with
features 4-8-16-32 instead of the plans' 32-320, so a 3D step takes a fraction of a second on 2 CPU cores. The
network override is a static method, so stock nnUNetv2_predict builds the same small network."""

import torch
from kill_switch import kill_variant
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_ext.trainers.freetumor_trainers import FreeTumorSynthesisTrainer, FreeTumorTrainer
from nnunet_ext.training.variants import short_variant


def small_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                  enable_deep_supervision=True):
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    kwargs["features_per_stage"] = [min(f, 4 * 2 ** i) for i, f in enumerate(kwargs["features_per_stage"])]
    return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)


class FreeTumorTrainer_small(FreeTumorTrainer):
    build_network_architecture = staticmethod(small_network)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.synthesis_probability = 1.0
        self.qc_warmup = 1  # epoch 0 unchecked, epoch 1 judged by the EMA


class FreeTumorSynthesisTrainer_small(FreeTumorSynthesisTrainer):
    generator_features = (4, 8)
    discriminator_features = (4, 8)
    build_network_architecture = staticmethod(small_network)


FreeTumorTrainer_tiny = short_variant(FreeTumorTrainer_small, "FreeTumorTrainer_tiny", epochs=2, iterations=2,
                                      val_iterations=1)
FreeTumorSynthesisTrainer_tiny = short_variant(FreeTumorSynthesisTrainer_small, "FreeTumorSynthesisTrainer_tiny",
                                               epochs=2, iterations=2, val_iterations=1)
# EMA quality control from epoch 1 (qc_warmup 1), so the kill in epoch 2 lands where the EMA judges every synthetic
# tumour
FreeTumorTrainer_tiny_kill = kill_variant(FreeTumorTrainer_small, "FreeTumorTrainer_tiny_kill")


class FreeTumorSynthesisTrainer_short_baseline(FreeTumorSynthesisTrainer_small):
    baseline_fraction = 0.25  # of 4 epochs: baseline in epoch 0, generator and discriminator in epochs 1-3


# the kill in epoch 2 lands in the second synthesis epoch: generator, discriminator and their Adam states trained
FreeTumorSynthesisTrainer_tiny_kill = kill_variant(FreeTumorSynthesisTrainer_short_baseline,
                                                   "FreeTumorSynthesisTrainer_tiny_kill")
