"""Budget-matched WeakCycle runs for the measurements in README (CPU: half-width generators, 10 x 10 iterations)."""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.weak_cycle_trainers import WeakCycleTrainer, WeakCycleTrainer_CAM
from nnunet_ext.training.variants import short_variant


class _Half:
    generator_features = 16
    generator_blocks = 2
    discriminator_features = 16
    pseudo_update_every = 2


class WeakCycleTrainer_half(_Half, WeakCycleTrainer):
    pass


class WeakCycleTrainer_CAM_half(_Half, WeakCycleTrainer_CAM):
    pass


BUDGET = {"epochs": 10, "iterations": 10, "val_iterations": 2}
WeakCycleTrainer_bench = short_variant(WeakCycleTrainer_half, "WeakCycleTrainer_bench", **BUDGET)
WeakCycleTrainer_CAM_bench = short_variant(WeakCycleTrainer_CAM_half, "WeakCycleTrainer_CAM_bench", **BUDGET)
nnUNetTrainer_bench = short_variant(nnUNetTrainer, "nnUNetTrainer_bench", **BUDGET)
