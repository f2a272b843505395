"""The smallest FreeTumor runs that still cross an epoch boundary: 2 epochs x 2 iterations, and a U-Net with
features 4-8-16-32 instead of the plans' 32-320, so a 3D step takes a fraction of a second on 2 CPU cores. The
width is a class attribute (unet_base_features), so stock nnUNetv2_predict builds the same small network."""

from kill_switch import kill_variant

from nnunet_ext.trainers.freetumor_trainers import FreeTumorSynthesisTrainer, FreeTumorTrainer
from nnunet_ext.training.variants import short_variant


class FreeTumorTrainer_small(FreeTumorTrainer):
    unet_base_features = 4
    synthesis_probability = 1.0
    quality_control = "ema"
    qc_warmup = 1  # epoch 0 unchecked, epoch 1 judged by the EMA


class FreeTumorTrainer_small_baseline(FreeTumorTrainer_small):
    quality_control = "baseline"
    qc_baseline_fraction = 0.25  # of 4 epochs: the judge trains in epoch 0 and is frozen from epoch 1


class FreeTumorSynthesisTrainer_small(FreeTumorSynthesisTrainer):
    unet_base_features = 4
    generator_features = (4, 8)
    discriminator_features = (4, 8)


FreeTumorTrainer_tiny = short_variant(FreeTumorTrainer_small, "FreeTumorTrainer_tiny", epochs=2, iterations=2,
                                      val_iterations=1)


class FreeTumorTrainer_small_auto(FreeTumorTrainer_small):
    quality_control = "auto"  # judged by a given checkpoint; else off on the fixture (2 tumour cases)


FreeTumorTrainer_tiny_auto = short_variant(FreeTumorTrainer_small_auto, "FreeTumorTrainer_tiny_auto", epochs=2,
                                           iterations=2, val_iterations=1)
FreeTumorSynthesisTrainer_tiny = short_variant(FreeTumorSynthesisTrainer_small, "FreeTumorSynthesisTrainer_tiny",
                                               epochs=2, iterations=2, val_iterations=1)
# the baseline judge frozen at epoch 1, so the kill in epoch 2 lands where it judges every synthetic tumour: the
# resumed run must keep the judge of the checkpoint, not freeze a new one
FreeTumorTrainer_tiny_kill = kill_variant(FreeTumorTrainer_small_baseline, "FreeTumorTrainer_tiny_kill")


class FreeTumorSynthesisTrainer_short_baseline(FreeTumorSynthesisTrainer_small):
    baseline_fraction = 0.25  # of 4 epochs: baseline in epoch 0, generator and discriminator in epochs 1-3


# the kill in epoch 2 lands in the second synthesis epoch: generator, discriminator and their Adam states trained
FreeTumorSynthesisTrainer_tiny_kill = kill_variant(FreeTumorSynthesisTrainer_short_baseline,
                                                   "FreeTumorSynthesisTrainer_tiny_kill")
