"""Equal small CPU budgets for the DRIVE-AV comparison (bench/av_fusion/bench_av_drive.py): stock nnU-Net behaviour and
AVFusionTrainer, same epochs x iterations, same plans. This folder goes on nnUNet_extTrainer for that run only."""

from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer
from nnunet_ext.training.base import nnUNetExtTrainer
from nnunet_ext.training.variants import short_variant

BUDGET = {"epochs": 6, "iterations": 25, "val_iterations": 1}


class _NoFinalValidation:
    """The final validation (one case, sliding window with mirroring) would cost more CPU time than the training
    budget; checkpoint_final is what the comparison predicts with, so nothing is chosen on any data."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (bench/av_fusion/trainers: CPU budget)")


class _StockDrive(_NoFinalValidation, nnUNetExtTrainer):
    pass


class _AVFusionDrive(_NoFinalValidation, AVFusionTrainer):
    pass


nnUNetTrainer_drivecpu = short_variant(_StockDrive, "nnUNetTrainer_drivecpu", **BUDGET)
AVFusionTrainer_drivecpu = short_variant(_AVFusionDrive, "AVFusionTrainer_drivecpu", **BUDGET)
