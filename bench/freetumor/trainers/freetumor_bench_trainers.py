"""Equal-budget trainers for bench/freetumor/bench_freetumor_phantom.py: stock nnU-Net behaviour and FreeTumorTrainer,
both with a U-Net of features 8-16-32-64 (the plans' 32-320 is too slow for a CPU comparison) and the same budget. The
width is a class attribute (unet_base_features), so stock nnUNetv2_predict builds the same small network."""

from nnunet_ext.trainers.freetumor_trainers import FreeTumorTrainer
from nnunet_ext.training.base import nnUNetExtTrainer
from nnunet_ext.training.variants import short_variant

EPOCHS, ITERATIONS = 8, 10


class _StockSmall(nnUNetExtTrainer):
    unet_base_features = 8


class _FreeTumorSmall(FreeTumorTrainer):
    unet_base_features = 8


nnUNetTrainer_benchsmall = short_variant(_StockSmall, "nnUNetTrainer_benchsmall", epochs=EPOCHS, iterations=ITERATIONS,
                                         val_iterations=2)
FreeTumorTrainer_benchsmall = short_variant(_FreeTumorSmall, "FreeTumorTrainer_benchsmall", epochs=EPOCHS,
                                            iterations=ITERATIONS, val_iterations=2)
