"""The smallest WeakCycle runs that still cross the phase boundary, for the stock-command tests."""

from kill_switch import KillMidEpoch

from nnunet_ext.trainers.weak_cycle_trainers import WeakCycleTrainer
from nnunet_ext.training.variants import short_variant


class WeakCycleTrainer_small(WeakCycleTrainer):
    """Generators and discriminators at a quarter of the width, one residual block: the same code paths, CPU-fast."""

    generator_features = 8
    generator_blocks = 1
    discriminator_features = 8
    pseudo_update_every = 1


WeakCycleTrainer_tiny = short_variant(WeakCycleTrainer_small, "WeakCycleTrainer_tiny", epochs=4, iterations=2,
                                      val_iterations=1)


class WeakCycleTrainer_tiny_kill(KillMidEpoch, WeakCycleTrainer_tiny):
    """For the kill-and-resume test. Translation in epoch 0 only, refinement
    in epochs 1-3: the kill in epoch 2 comes after the phase-1 pseudo-masks, one EMA epoch of the teacher and the
    teacher's first rewrite of the masks (start of epoch 2), so all of that must come back from the checkpoint."""

    translation_fraction = 0.25
