"""The stock nnUNetTrainer behaviour with nnunet-ext's machinery (seeding, clean stop, atomic checkpoints), and its
short-budget variants used by the demo, the tests and the benchmarks."""

from nnunet_ext.training.base import nnUNetExtTrainer
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["nnUNetExtTrainer", "nnUNetTrainer_debug", "nnUNetTrainer_demo"]

nnUNetTrainer_debug = short_variant(nnUNetExtTrainer, "nnUNetTrainer_debug", **DEBUG_BUDGET)
nnUNetTrainer_demo = short_variant(nnUNetExtTrainer, "nnUNetTrainer_demo", **DEMO_BUDGET)
