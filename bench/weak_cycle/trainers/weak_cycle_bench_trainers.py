"""Budget-matched WeakCycle runs for the measurements in README (CPU: quarter-width generators, 6 x 8 iterations)."""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.weak_cycle_trainers import WeakCycleTrainer, WeakCycleTrainer_CAM
from nnunet_ext.training.variants import short_variant


class _Quarter:
    generator_features = 8
    generator_blocks = 1
    discriminator_features = 8
    pseudo_update_every = 1


class WeakCycleTrainer_quarter(_Quarter, WeakCycleTrainer):
    pass


class WeakCycleTrainer_CAM_quarter(_Quarter, WeakCycleTrainer_CAM):
    pass


BUDGET = {"epochs": 6, "iterations": 8, "val_iterations": 1}
WeakCycleTrainer_bench = short_variant(WeakCycleTrainer_quarter, "WeakCycleTrainer_bench", **BUDGET)
WeakCycleTrainer_CAM_bench = short_variant(WeakCycleTrainer_CAM_quarter, "WeakCycleTrainer_CAM_bench", **BUDGET)
nnUNetTrainer_bench = short_variant(nnUNetTrainer, "nnUNetTrainer_bench", **BUDGET)

# the real BraTS and ISIC samples (bench_weak_cycle_real.py): 160x160 patches, batch 2, about 0.3 s per step
REAL_BUDGET = {"epochs": 40, "iterations": 12, "val_iterations": 2}
WeakCycleTrainer_real = short_variant(WeakCycleTrainer_quarter, "WeakCycleTrainer_real", **REAL_BUDGET)
WeakCycleTrainer_CAM_real = short_variant(WeakCycleTrainer_CAM_quarter, "WeakCycleTrainer_CAM_real", **REAL_BUDGET)
