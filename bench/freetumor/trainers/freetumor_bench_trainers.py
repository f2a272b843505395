"""Equal-budget trainers for bench/freetumor/bench_freetumor_phantom.py: stock nnU-Net behaviour and FreeTumorTrainer
with the same U-Net (features from 16, capped by the plans: the plans' 32-512 is too slow for a CPU comparison), the
same epochs x iterations x batch and the same validation. The width is a class attribute (unet_base_features), so
stock nnUNetv2_predict builds the same network."""

import os

from nnunet_ext.trainers.freetumor_trainers import FreeTumorTrainer
from nnunet_ext.training.base import nnUNetExtTrainer
from nnunet_ext.training.variants import short_variant

EPOCHS, ITERATIONS, VAL_ITERATIONS = 20, 20, 4
# the long budget: at the short one (400 iterations) neither trainer predicted any tumour and the pancreas was not
# learnt either (bench/results/freetumor/phantom_2d)
LONG_EPOCHS = 75
# the extra-long budget (6000 iterations): at 1500 even the scarce arm with real tumours found 2 of 9 medium held-out
# tumours, so whether organ-only sensitivity is a matter of budget is measured, not assumed
XLONG_EPOCHS = 300


class _StockBench(nnUNetExtTrainer):
    unet_base_features = 16


class _FreeTumorBench(FreeTumorTrainer):
    unet_base_features = 16


class _FreeTumorBenchMatched(_FreeTumorBench):
    """A control, not FreeTumor's default: the procedural contrast set to the data source's own tumour contrast
    (FREETUMOR_BENCH_CONTRAST_HU="LOW,HIGH", given by the bench from what the source documents), so that a miss can
    be told apart as contrast mismatch or budget."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        value = os.environ.get("FREETUMOR_BENCH_CONTRAST_HU")
        if not value:
            raise RuntimeError(f"{type(self).__name__}: set FREETUMOR_BENCH_CONTRAST_HU=LOW,HIGH (organ minus tumour, "
                               f"HU)")
        low, high = (float(v) for v in value.split(","))
        self.procedural_contrast_hu = (low, high)


class _FreeTumorBenchInStep(_FreeTumorBench):
    synthesis_location = "step"  # the cost of synthesis after augmentation, on the batch, without quality control


def _variant(base, name, epochs=EPOCHS):
    return short_variant(base, name, epochs=epochs, iterations=ITERATIONS, val_iterations=VAL_ITERATIONS)


nnUNetTrainer_ftbench = _variant(_StockBench, "nnUNetTrainer_ftbench")
FreeTumorTrainer_ftbench = _variant(_FreeTumorBench, "FreeTumorTrainer_ftbench")
nnUNetTrainer_ftbench_long = _variant(_StockBench, "nnUNetTrainer_ftbench_long", LONG_EPOCHS)
FreeTumorTrainer_ftbench_long = _variant(_FreeTumorBench, "FreeTumorTrainer_ftbench_long", LONG_EPOCHS)
nnUNetTrainer_ftbench_xlong = _variant(_StockBench, "nnUNetTrainer_ftbench_xlong", XLONG_EPOCHS)
FreeTumorTrainer_ftbench_xlong = _variant(_FreeTumorBench, "FreeTumorTrainer_ftbench_xlong", XLONG_EPOCHS)
FreeTumorTrainer_ftbench_long_matched = _variant(_FreeTumorBenchMatched, "FreeTumorTrainer_ftbench_long_matched",
                                                 LONG_EPOCHS)
# cost only (no scores): a few epochs are enough for the time per iteration
FreeTumorTrainer_ftbench_instep = _variant(_FreeTumorBenchInStep, "FreeTumorTrainer_ftbench_instep", 4)
