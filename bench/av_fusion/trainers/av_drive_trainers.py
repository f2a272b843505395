"""Equal CPU budgets for the DRIVE-AV comparison (bench/av_fusion/bench_av_drive.py): stock nnU-Net behaviour,
AVFusionTrainer (detached branches, the default), AVFusionTrainer_attached and AVFusionTrainer_mean (the authors'
later feature-mean fusion), same epochs x iterations x batch, same plans. This folder goes on nnUNet_extTrainer for
that run only."""

import os

from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer, AVFusionTrainer_attached, AVFusionTrainer_mean
from nnunet_ext.training.base import nnUNetExtTrainer
from nnunet_ext.training.variants import short_variant

EPOCHS_ENV = "nnUNet_ext_av_bench_epochs"

# sized from the measured step times of bench_av_drive.py --stage time (see docs/av_fusion.md): six trainings must
# fit ~30 min of two shared CPU cores; bench_av_drive.py --epochs sets a larger one through the environment
BUDGET = {"epochs": int(os.environ.get(EPOCHS_ENV, 10)), "iterations": 100, "val_iterations": 1}


class _NoFinalValidation:
    """The final validation (one case, sliding window with mirroring) would cost more CPU time than it tells here;
    checkpoint_final is what the comparison predicts with, so nothing is chosen on any data."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (bench/av_fusion/trainers: CPU budget)")


class _StockDrive(_NoFinalValidation, nnUNetExtTrainer):
    pass


class _AVFusionDrive(_NoFinalValidation, AVFusionTrainer):
    pass


class _AVFusionAttachedDrive(_NoFinalValidation, AVFusionTrainer_attached):
    pass


class _AVFusionMeanDrive(_NoFinalValidation, AVFusionTrainer_mean):
    pass


nnUNetTrainer_drivecpu = short_variant(_StockDrive, "nnUNetTrainer_drivecpu", **BUDGET)
AVFusionTrainer_drivecpu = short_variant(_AVFusionDrive, "AVFusionTrainer_drivecpu", **BUDGET)
AVFusionTrainer_attached_drivecpu = short_variant(_AVFusionAttachedDrive, "AVFusionTrainer_attached_drivecpu",
                                                  **BUDGET)
AVFusionTrainer_mean_drivecpu = short_variant(_AVFusionMeanDrive, "AVFusionTrainer_mean_drivecpu", **BUDGET)
