"""Stock and FocusNetV2 with the same narrow S-Net (features 8-64 instead of 32-320), so that the comparison fits a
2-core CPU. The budget comes from the environment the comparison script (bench/focusnet/bench_focusnet_hn3d.py)
sets: nnUNet_ext_bench_epochs (E) x nnUNet_ext_bench_iterations; this folder goes on nnUNet_extTrainer for that run.

- nnUNetTrainer_hnbench: stock nnU-Net, E epochs, without left-right mirroring as FocusNetV2Trainer (the phantom's
  labels come in left/right pairs; nnunet_ext.training.mirroring); nnUNetTrainer_hnbench_mirrored: with nnU-Net's
  mirroring on every axis (the stock rows of the runs before 2026-12-01's "lateral" run).
- FocusNetV2Trainer_hnbench: E epochs in all, S-Net in the first half (equal total budget).
- FocusNetV2Trainer_hnbench_fullsnet: 2E epochs in all, S-Net in the first E (the stock budget), then the SOS phases
  (the paper's setting: SOS added on top of a trained S-Net).
- FocusNetV2Trainer_hnbench_mse: as _fullsnet with the original's MSE heatmap loss (the ablation).
- FocusNetV2Trainer_hnbench_attached: as _fullsnet with the SOL head as before issue 16's second round: on the last
  decoder stage only, its loss back-propagating into S-Net's features (the ablation of sol_input and the detach).
- FocusNetV2Trainer_hnbench_keep_absent: as _fullsnet with an SOS crop for every patch without the organ (the ablation
  of sos_absent_crop_ratio; the code before 2026-12-02).
- FocusNetV2Trainer_hnbench_sol_adversarial: as _fullsnet with the SOL head training in the adversarial phase too
  (sol_phases; tried as the default on 2026-12-02, the bench's `soladv` run, and not adopted).

The width is a class attribute (unet_base_features), so stock nnUNetv2_predict builds the same narrow network."""

import math
import os

import torch

from nnunet_ext.trainers.baseline_trainers import nnUNetExtTrainer
from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer
from nnunet_ext.training.mirroring import LateralMirroringMixin


class _Budget:
    epoch_factor = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("nnUNet_ext_bench_epochs", 12)) * self.epoch_factor
        self.num_iterations_per_epoch = int(os.environ.get("nnUNet_ext_bench_iterations", 10))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)


class nnUNetTrainer_hnbench(_Budget, LateralMirroringMixin, nnUNetExtTrainer):
    unet_base_features = 8


class nnUNetTrainer_hnbench_mirrored(nnUNetTrainer_hnbench):
    lateral_axis = None


class nnUNetTrainer_hnbench_rot15(nnUNetTrainer_hnbench):
    """Diagnostic: in-plane rotation within +-15 degrees instead of nnU-Net's +-180 for near-square 2d patches (a
    slice then keeps its orientation, and the side of a paired organ is where it lies)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

        rotation, dummy_2d, initial, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch = self.configuration_manager.patch_size
        if len(patch) == 2:
            rotation = (-15.0 / 360 * 2 * math.pi, 15.0 / 360 * 2 * math.pi)
            initial = get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))
        return rotation, dummy_2d, initial, mirror_axes


class FocusNetV2Trainer_hnbench(_Budget, FocusNetV2Trainer):
    unet_base_features = 8
    sos_features = 8
    shape_features = 8


class FocusNetV2Trainer_hnbench_fullsnet(FocusNetV2Trainer_hnbench):
    epoch_factor = 2


class FocusNetV2Trainer_hnbench_mse(FocusNetV2Trainer_hnbench_fullsnet):
    heatmap_loss = "mse"


class FocusNetV2Trainer_hnbench_mirrored(FocusNetV2Trainer_hnbench_fullsnet):
    lateral_axis = None


class FocusNetV2Trainer_hnbench_attached(FocusNetV2Trainer_hnbench_fullsnet):
    sol_detach_features = False
    sol_input = "last"


class FocusNetV2Trainer_hnbench_sigma3(FocusNetV2Trainer_hnbench_fullsnet):
    heatmap_sigma = 3.0


class FocusNetV2Trainer_hnbench_keep_absent(FocusNetV2Trainer_hnbench_fullsnet):
    sos_absent_crop_ratio = None  # every patch without the organ gives SOS an empty crop (before 2026-12-02)


class FocusNetV2Trainer_hnbench_sol_adversarial(FocusNetV2Trainer_hnbench_fullsnet):
    sol_phases = ("snet", "sos", "adversarial")


class _FocusNetV2CostProbe(FocusNetV2Trainer):
    """For bench/harness/bench_trainers.py, which times the steps of the epoch it starts in and predicts with the
    network as it is: start in `start_phase`, with pasting on and every small organ pasted in every window (threshold
    0, the worst case of prediction cost)."""

    start_phase = "snet"
    peak_threshold = 0.0

    def on_train_start(self):
        super().on_train_start()
        self.current_epoch = self.phase_schedule.resolved(self.start_phase, self.num_epochs).start
        self.focus_network.sos_ready.fill_(True)


class FocusNetV2Trainer_cost_snet(_FocusNetV2CostProbe):
    start_phase = "snet"


class FocusNetV2Trainer_cost_sos(_FocusNetV2CostProbe):
    start_phase = "sos"


class FocusNetV2Trainer_cost_adversarial(_FocusNetV2CostProbe):
    start_phase = "adversarial"


class FocusNetV2Trainer_mirrored(FocusNetV2Trainer):
    """The plans' FocusNetV2Trainer with nnU-Net's mirroring on every axis, for cost_by_phase.py --trainer: its
    prediction then runs as many mirrored passes as stock's."""

    lateral_axis = None
