"""The smallest FTSegNet runs for the stock-command tests: a few prior steps before epoch 0, then segmentation."""

from kill_switch import kill_variant

from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer
from nnunet_ext.training.variants import short_variant


class FTSegNetTrainer_fewpriorsteps(FTSegNetTrainer):
    prior_iterations = 6


FTSegNetTrainer_tiny = short_variant(FTSegNetTrainer_fewpriorsteps, "FTSegNetTrainer_tiny", epochs=2, iterations=2,
                                     val_iterations=1)
# the prior trains before epoch 0 (checkpoint written right after), the segmenter epochs 0-3; the kill in epoch 2
# lands with the prior frozen inside the network and its optimizer state in the checkpoint
FTSegNetTrainer_tiny_kill = kill_variant(FTSegNetTrainer_fewpriorsteps, "FTSegNetTrainer_tiny_kill")
