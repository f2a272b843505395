"""The smallest A/V fusion runs that still cross an epoch boundary, for the stock-command tests."""

from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer_GAN
from nnunet_ext.training.variants import short_variant

AVFusionTrainer_GAN_tiny = short_variant(AVFusionTrainer_GAN, "AVFusionTrainer_GAN_tiny", epochs=2, iterations=2,
                                         val_iterations=1)
# checkpoint_latest.pth after every epoch, for the kill-and-resume test
AVFusionTrainer_GAN_tiny_kill = short_variant(AVFusionTrainer_GAN, "AVFusionTrainer_GAN_tiny_kill", epochs=4,
                                              iterations=2, val_iterations=1, save_every=1)
