"""Equal-budget variants for bench/ftsegnet/bench_ftsegnet_ablation.py (found through nnUNet_extTrainer)."""

from nnunet_ext.trainers.baseline_trainers import nnUNetExtTrainer
from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer, FTSegNetTrainer_NoCPB
from nnunet_ext.training.variants import short_variant

BUDGET = {"epochs": 5, "iterations": 16, "val_iterations": 2}

nnUNetTrainer_ablation = short_variant(nnUNetExtTrainer, "nnUNetTrainer_ablation", **BUDGET)
FTSegNetTrainer_NoCPB_ablation = short_variant(FTSegNetTrainer_NoCPB, "FTSegNetTrainer_NoCPB_ablation", **BUDGET)
FTSegNetTrainer_ablation = short_variant(FTSegNetTrainer, "FTSegNetTrainer_ablation", **BUDGET)
