"""Stock and FocusNetV2 with the same narrow S-Net (features 8-64 instead of 32-320) and the same budget
(12 epochs x 10 iterations), so that the phantom comparison fits a shared 2-core CPU. The comparison script
(bench/focusnet/bench_focusnet_phantom.py) puts this folder on nnUNet_extTrainer. The width is a class attribute
(unet_base_features), so stock nnUNetv2_predict builds the same narrow network."""

from nnunet_ext.trainers.baseline_trainers import nnUNetExtTrainer
from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer
from nnunet_ext.training.variants import short_variant

BUDGET = {"epochs": 12, "iterations": 10, "val_iterations": 2}


class _StockNarrow(nnUNetExtTrainer):
    unet_base_features = 8


class _FocusNetV2Narrow(FocusNetV2Trainer):
    unet_base_features = 8
    sos_features = 8
    shape_features = 8


nnUNetTrainer_hnbench = short_variant(_StockNarrow, "nnUNetTrainer_hnbench", **BUDGET)
FocusNetV2Trainer_hnbench = short_variant(_FocusNetV2Narrow, "FocusNetV2Trainer_hnbench", **BUDGET)


class _FocusNetV2CostProbe(FocusNetV2Trainer):
    """For bench/harness/bench_trainers.py, which times the steps of the epoch it starts in and predicts with the
    network as it is: start in `start_phase`, with pasting on and every small organ pasted in every window (threshold
    0, the worst case of prediction cost)."""

    start_phase = "snet"
    peak_threshold = 0.0

    def on_train_start(self):
        super().on_train_start()
        resolved = {r.name: r for r in self.phase_schedule.resolve(self.num_epochs)}
        self.current_epoch = resolved[self.start_phase].start
        self.focus_network.sos_ready.fill_(True)


class FocusNetV2Trainer_cost_snet(_FocusNetV2CostProbe):
    start_phase = "snet"


class FocusNetV2Trainer_cost_sos(_FocusNetV2CostProbe):
    start_phase = "sos"


class FocusNetV2Trainer_cost_adversarial(_FocusNetV2CostProbe):
    start_phase = "adversarial"
