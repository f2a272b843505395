"""FocusNetV2 with a narrow S-Net (4..16 features) and 5 epochs x 2 iterations: every phase once (snet gets two
epochs), cheap enough for the stock train -> stop -> --c -> predict test on the 3D phantom."""

from kill_switch import KillMidEpoch

from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer
from nnunet_ext.training.variants import short_variant


class FocusNetV2Trainer_narrow(FocusNetV2Trainer):
    unet_base_features = 4
    sos_features = 4
    shape_features = 4
    peak_threshold_candidates = (0.3, 0.6)  # the end-of-training sweep, at half the default's predictions


FocusNetV2Trainer_tiny = short_variant(FocusNetV2Trainer_narrow, "FocusNetV2Trainer_tiny", epochs=5, iterations=2,
                                       val_iterations=1)


class FocusNetV2Trainer_tiny_kill(KillMidEpoch, FocusNetV2Trainer_tiny):
    """For the kill-and-resume test."""
