"""The smallest A/V fusion runs that still cross an epoch boundary, for the stock-command tests."""

from kill_switch import kill_variant

from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer_GAN
from nnunet_ext.training.variants import short_variant

AVFusionTrainer_GAN_tiny = short_variant(AVFusionTrainer_GAN, "AVFusionTrainer_GAN_tiny", epochs=2, iterations=2,
                                         val_iterations=1)
AVFusionTrainer_GAN_tiny_kill = kill_variant(AVFusionTrainer_GAN, "AVFusionTrainer_GAN_tiny_kill")
