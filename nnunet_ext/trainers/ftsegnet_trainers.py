"""FTSegNet (Deng, Gong et al., ISBI 2024): a frozen classification prior guiding a transformer+conv U-Net.

    nnUNetv2_train 794 2d 0 -tr FTSegNetTrainer
    nnUNetv2_predict -i IN -o OUT -d 794 -c 2d -tr FTSegNetTrainer

One run, two phases: `prior` (the first `prior_epochs` of the budget, default 10 %) trains only the classification
prior P on image-level targets; `segment` freezes P (eval mode, no gradients) and trains the segmenter with nnU-Net's
Dice+CE and deep supervision. P lives inside the network (nnunet_ext.methods.ftsegnet.network), so the stock
predictor and `--c` need nothing else: P's weights are part of `network_weights`, its optimizer part of the
nnunet_ext checkpoint state, and the phase follows from the epoch counter.

Prior targets, in this order:
- a class table `classification.json` beside dataset.json (nnUNet_preprocessed/DatasetXXX first, then
  nnUNet_raw/DatasetXXX): {"case_id": class_index, ...} with indices 0..K-1 for every training case (tumour types,
  or 0 = no tumour / 1 = tumour). The number of classes K is written into the run's plans (configuration key
  `ftsegnet_prior_classes`) so that prediction builds the same network;
- else "the patch contains foreground" (2 classes), from the segmentation target of each training patch.

A prior trained elsewhere: set `nnUNet_ext_ftsegnet_prior=/path/checkpoint.pth` (an FTSegNet checkpoint, or a file
holding P's state_dict) and the run skips the prior phase and keeps that P frozen throughout.
"""

from __future__ import annotations

import os
from os.path import isfile, join

import torch
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_ext.methods.ftsegnet.loss import DC_and_Focal_loss
from nnunet_ext.methods.ftsegnet.network import ClassificationPrior, FTSegNetwork, count_parameters, prior_strides
from nnunet_ext.methods.ftsegnet.prior import (
    CLASS_TABLE,
    PRIOR,
    PRIOR_CLASSES_KEY,
    PRIOR_ENV,
    prior_state_from_file,
    read_class_table,
)
from nnunet_ext.training.base import nnUNetExtTrainer, unwrap
from nnunet_ext.training.phases import NETWORK, Phase, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["FTSegNetTrainer", "FTSegNetTrainer_DiceFocal", "FTSegNetTrainer_NoCPB", "FTSegNetTrainer_debug",
           "FTSegNetTrainer_demo", "FTSegNetTrainer_DiceFocal_debug", "FTSegNetTrainer_DiceFocal_demo",
           "FTSegNetTrainer_NoCPB_debug", "FTSegNetTrainer_NoCPB_demo"]

class FTSegNetTrainer(nnUNetExtTrainer):
    # network structure: class attributes, read by build_network_architecture at training and prediction time
    use_cpb = True  # False: the transformer-only network, no prior (the ablation's middle row)
    transformer_stages = 2  # deepest encoder stages that get transformer blocks
    transformer_depth = 1  # blocks per such stage
    reduction_ratio = 2  # MiT spatial reduction of keys/values, squared per stage above the deepest
    # prior training
    prior_epochs: int | float = 0.1  # int: epochs; float: fraction of num_epochs
    prior_lr = 1e-3
    # `nnunet_ext demo --trainer FTSegNetTrainer`: the tumour phantom, and the Dice its _demo variant reached there
    # (0.988 measured on CPU, phantom seed 0). One false-positive speck on one of the 2 tumour-free held-out images
    # costs ~0.17 (Dice 0 there); background only lands at ~0.33
    demo_phantom = "tumor2d"
    demo_dice_floor = 0.80

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.class_table: dict[str, int] | None = None
        self.class_table_file: str | None = None
        self.prior_file: str | None = None
        self._prior_stats = [0.0, 0, 0]  # loss sum, correct, seen in the current epoch
        if not self.use_cpb:
            return
        self.prior_file = os.environ.get(PRIOR_ENV) or None
        self.class_table_file = self.find_class_table()
        if self.class_table_file is not None:
            self.class_table = read_class_table(self.class_table_file)
            classes = max(2, max(self.class_table.values()) + 1)
            # prediction builds the network from the run's plans.json: the class count must travel with it
            plans["configurations"][configuration][PRIOR_CLASSES_KEY] = classes
            self.configuration_manager.configuration[PRIOR_CLASSES_KEY] = classes

    def build_phase_schedule(self) -> PhaseSchedule | None:
        if not self.use_cpb:
            return None
        if self.prior_file is not None:
            return PhaseSchedule([Phase("segment", None, train=(NETWORK,))])
        return PhaseSchedule([Phase(PRIOR, self.prior_epochs, train=(PRIOR,)),
                              Phase("segment", None, train=(NETWORK,))])

    def find_class_table(self) -> str | None:
        folders = [self.preprocessed_dataset_folder_base]
        if nnUNet_raw is not None:
            folders.append(join(nnUNet_raw, self.plans_manager.dataset_name))
        for folder in folders:
            if isfile(join(folder, CLASS_TABLE)):
                return join(folder, CLASS_TABLE)
        return None

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        unet = cls.plans_unet(configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)
        prior = None
        if cls.use_cpb:
            classes = configuration_manager.configuration.get(PRIOR_CLASSES_KEY, 2)
            prior = ClassificationPrior(num_input_channels, classes, prior_strides(unet.encoder),
                                        unet.encoder.conv_op)
        return FTSegNetwork(unet, prior, configuration_manager.patch_size, cls.transformer_stages,
                            cls.transformer_depth, cls.reduction_ratio)

    # ------------------------------------------------------------------ set-up
    @property
    def prior(self) -> nn.Module | None:
        return unwrap(self.network).prior

    def initialize(self):
        # under DDP the prior's parameters sit in two wrappers, the network's and aux_modules[PRIOR]'s. That is safe:
        # a DDP wrapper reduces gradients only after its own forward ran with grad enabled, and each phase trains
        # through exactly one of them (prior: aux_modules[PRIOR]; segment: the network, whose wrapper then excludes
        # the frozen prior); the network wrapper's forward in the prior phase runs in validation, under no_grad
        super().initialize()
        if self.class_table is not None:
            read_class_table(self.class_table_file, list(self.get_tr_and_val_datasets()[0].identifiers))
        if self.prior_file is not None:
            state = prior_state_from_file(self.prior_file)
            try:
                self.prior.load_state_dict(state)
            except RuntimeError as e:
                raise RuntimeError(f"{PRIOR_ENV}={self.prior_file} does not fit this data set's prior "
                                   f"({self.prior.num_classes} classes, {self.num_input_channels} input "
                                   f"channels): {e}") from None
        net = unwrap(self.network)
        prior_params = count_parameters(net.prior) if net.prior is not None else 0
        self.print_to_log_file(
            f"FTSegNet: {count_parameters(net) - prior_params} segmenter + {prior_params} prior parameters; "
            f"transformers in the deepest {self.transformer_stages} stages; CPB {'on' if self.use_cpb else 'off'}; "
            f"prior targets: {self.prior_target_source()}")

    def prior_target_source(self) -> str:
        if not self.use_cpb:
            return "none (no prior)"
        if self.prior_file is not None:
            return f"none, prior loaded from {self.prior_file}"
        if self.class_table_file is not None:
            return f"class table {self.class_table_file}"
        return "patch contains foreground"

    def build_aux_modules(self) -> dict[str, nn.Module]:
        # the same module object as network.prior: the phase machinery freezes/unfreezes it by name, and the
        # checkpoint keeps its optimizer; its weights travel inside network_weights for the predictor
        return {PRIOR: self.prior} if self.use_cpb else {}

    def configure_aux_optimizers(self):
        if not self.use_cpb:
            return {}
        return {PRIOR: (torch.optim.Adam(self.prior.parameters(), lr=self.prior_lr), None)}

    def extra_checkpoint_state(self) -> dict:
        return {"prior_classes": self.prior.num_classes if self.use_cpb else None,
                "prior_targets": self.prior_target_source()}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        if self.use_cpb and state.get("prior_classes") != self.prior.num_classes:
            raise RuntimeError(f"the checkpoint's prior has {state.get('prior_classes')} classes, this run's "
                               f"{self.prior.num_classes} (class table {self.class_table_file})")

    # ------------------------------------------------------------------ phases
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        phase = self.current_phase
        if phase is not None and phase.name == "segment" and phase.start > 0:
            # the segmenter's poly schedule spans the epochs it trains, not those the prior took
            progress = (self.current_epoch - phase.start) / (self.num_epochs - phase.start)
            for group in self.optimizer.param_groups:
                group["lr"] = self.initial_lr * (1 - progress) ** 0.9
        self._prior_stats = [0.0, 0, 0]

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        loss, correct, seen = self._prior_stats
        if seen:
            self.print_to_log_file(f"prior: loss {loss / seen:.4f}, patch accuracy {correct / seen:.3f}")

    def prior_targets(self, batch: dict, target: torch.Tensor) -> torch.Tensor:
        if self.class_table is not None:
            return torch.tensor([self.class_table[k] for k in batch["keys"]], device=self.device)
        foreground = target > 0
        if self.label_manager.ignore_label is not None:
            foreground &= target != self.label_manager.ignore_label
        return foreground.flatten(1).any(1).long()

    def train_step_prior(self, batch: dict) -> dict:
        data, _, target = self.batch_to_device(batch)
        labels = self.prior_targets(batch, target)
        optimizer = self.aux_optimizers[PRIOR]
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            # through the DDP wrapper (when there is one), so the prior's gradients are averaged over the ranks
            logits, _ = self.aux_modules[PRIOR](data)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        self.optimizer_step(loss, optimizer, self.prior.parameters())
        n = labels.shape[0]
        self._prior_stats[0] += loss.item() * n
        self._prior_stats[1] += int((logits.argmax(1) == labels).sum())
        self._prior_stats[2] += n
        return {"loss": loss.detach().cpu().numpy()}


class FTSegNetTrainer_DiceFocal(FTSegNetTrainer):
    """Dice + focal loss (gamma 2) in place of Dice + CE, one of the paper's loss variants."""

    focal_gamma = 2.0

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise ValueError(f"{self.__class__.__name__}: the focal loss is multi-class; "
                             f"{self.plans_manager.dataset_name} uses region-based labels")
        loss = DC_and_Focal_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                  "do_bg": False, "ddp": self.is_ddp}, gamma=self.focal_gamma,
                                 ignore_label=self.label_manager.ignore_label)
        if self.enable_deep_supervision:
            scales = self._get_deep_supervision_scales()
            weights = [1 / 2 ** i for i in range(len(scales))]
            weights[-1] = 0  # as nnU-Net: the lowest output does not count
            total = sum(weights)
            loss = DeepSupervisionWrapper(loss, [w / total for w in weights])
        return loss


class FTSegNetTrainer_NoCPB(FTSegNetTrainer):
    """The transformer+conv U-Net alone: no prior, no CPB, no prior phase (the ablation's transformer-only row)."""

    use_cpb = False


FTSegNetTrainer_debug = short_variant(FTSegNetTrainer, "FTSegNetTrainer_debug", **DEBUG_BUDGET)
FTSegNetTrainer_demo = short_variant(FTSegNetTrainer, "FTSegNetTrainer_demo", **DEMO_BUDGET)
FTSegNetTrainer_DiceFocal_debug = short_variant(FTSegNetTrainer_DiceFocal, "FTSegNetTrainer_DiceFocal_debug",
                                                **DEBUG_BUDGET)
FTSegNetTrainer_DiceFocal_demo = short_variant(FTSegNetTrainer_DiceFocal, "FTSegNetTrainer_DiceFocal_demo",
                                               **DEMO_BUDGET)
FTSegNetTrainer_NoCPB_debug = short_variant(FTSegNetTrainer_NoCPB, "FTSegNetTrainer_NoCPB_debug", **DEBUG_BUDGET)
FTSegNetTrainer_NoCPB_demo = short_variant(FTSegNetTrainer_NoCPB, "FTSegNetTrainer_NoCPB_demo", **DEMO_BUDGET)
