"""The smallest FTSegNet run that still crosses the prior -> segment boundary, for the stock-command tests."""

from kill_switch import kill_variant

from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer
from nnunet_ext.training.variants import short_variant

FTSegNetTrainer_tiny = short_variant(FTSegNetTrainer, "FTSegNetTrainer_tiny", epochs=2, iterations=2, val_iterations=1)
# prior_epochs 0.1 of 4 rounds to 1, so the prior trains in epoch 0 and the segment phase takes epochs 1-3; the kill in
# epoch 2 lands in the segment phase with the prior frozen and its optimizer state in the checkpoint
FTSegNetTrainer_tiny_kill = kill_variant(FTSegNetTrainer, "FTSegNetTrainer_tiny_kill")
