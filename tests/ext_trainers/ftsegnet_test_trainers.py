"""The smallest FTSegNet run that still crosses the prior -> segment boundary, for the stock-command tests."""

from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer
from nnunet_ext.training.variants import short_variant

FTSegNetTrainer_tiny = short_variant(FTSegNetTrainer, "FTSegNetTrainer_tiny", epochs=2, iterations=2, val_iterations=1)
