"""The smallest WeakCycle runs that still cross the phase boundary, for the stock-command tests."""

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
