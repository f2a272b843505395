"""FTSegNet (Deng, Gong et al., ISBI 2024): a frozen classification prior guiding a transformer+conv U-Net.

    nnUNetv2_train 794 2d 0 -tr FTSegNetTrainer
    nnUNetv2_predict -i IN -o OUT -d 794 -c 2d -tr FTSegNetTrainer

The classification prior P has its own budget: `prior_iterations` Adam steps on image-level targets, run once before
segmentation epoch 0 (in on_train_start). The segmenter then trains exactly the epochs and iterations stock nnU-Net
would, with P frozen (eval mode, no gradients) inside it. P lives inside the network
(nnunet_ext.methods.ftsegnet.network), so the stock predictor needs nothing else; `--c` finds the prior's progress
in the checkpoint (a checkpoint is written as soon as the prior is trained) and does not train it again.

Prior targets, in this order:
- a class table `classification.json` beside dataset.json (nnUNet_preprocessed/DatasetXXX first, then
  nnUNet_raw/DatasetXXX): {"case_id": class_index, ...} with indices 0..K-1 for every training case (tumour types,
  or 0 = no tumour / 1 = tumour). The number of classes K is written into the run's plans (configuration key
  `ftsegnet_prior_classes`) so that prediction builds the same network;
- else "the patch contains foreground" (2 classes), from the segmentation target of each training patch.

Classification-only cases: a training case whose label map is all ignore label (dataset.json must declare "ignore")
has an image-level class in classification.json and no mask. P trains on it; the segmenter never draws it (it has
nothing to learn from it: nnU-Net's Dice+CE gives it zero loss), so masks are not diluted by such cases.

A prior trained elsewhere: set `nnUNet_ext_ftsegnet_prior=/path/checkpoint.pth` (an FTSegNet checkpoint, or a file
holding P's state_dict) and the run skips the prior's training and keeps that P frozen throughout.

The transformer blocks train with their own update rule (`transformer_optimizer`, AdamW with a warm-up by default)
in the same optimizer as the rest of the network, which keeps nnU-Net's SGD (nnunet_ext.methods.ftsegnet.optim).
"""

from __future__ import annotations

import os
from os.path import isfile, join

import torch
import torch.distributed as dist
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_ext.methods.ftsegnet.loss import DC_and_Focal_loss
from nnunet_ext.methods.ftsegnet.network import (
    ClassificationPrior,
    FTSegNetwork,
    GateCalibration,
    count_parameters,
    prior_strides,
)
from nnunet_ext.methods.ftsegnet.optim import RULES, GroupPolyLR, SGDAdamW
from nnunet_ext.methods.ftsegnet.prior import (
    CLASS_TABLE,
    PRIOR,
    PRIOR_CLASSES_KEY,
    PRIOR_ENV,
    classification_only_cases,
    prior_state_from_file,
    read_class_table,
)
from nnunet_ext.training.base import nnUNetExtTrainer, unwrap
from nnunet_ext.training.phases import NETWORK, Phase, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["FTSegNetTrainer", "FTSegNetTrainer_DiceFocal", "FTSegNetTrainer_NoCPB", "FTSegNetTrainer_debug",
           "FTSegNetTrainer_demo", "FTSegNetTrainer_DiceFocal_debug", "FTSegNetTrainer_DiceFocal_demo",
           "FTSegNetTrainer_NoCPB_debug", "FTSegNetTrainer_NoCPB_demo", "FTSegNetTrainer_ClassOnly",
           "FTSegNetTrainer_rawGate"]

class FTSegNetTrainer(nnUNetExtTrainer):
    # network structure: class attributes, read by build_network_architecture at training and prediction time
    use_cpb = True  # False: the transformer-only network, no prior (the ablation's middle row)
    # False: the CPB without its spatial term alpha * conv1x1(G_s): P enters only through what its features say about
    # the whole image (channel gate, class vector), never where in the image (FTSegNetTrainer_ClassOnly)
    cpb_spatial_prior = True
    # True: the CPB gate reads GAP(G_s) standardised per channel by P's statistics over `gate_calibration_batches`
    # training batches, taken once P is frozen. P's instance norm leaves GAP(G_s) nearly the same for every image
    # (spread ~2 % of its level), which a zero-started gate under nnU-Net's SGD turned into a constant gate (spread
    # across images <= 0.006, docs/ftsegnet.md). False: the raw GAP, as before (FTSegNetTrainer_rawGate)
    cpb_gate_standardised = True
    gate_calibration_batches = 50
    transformer_stages = 2  # deepest encoder stages that get transformer blocks
    transformer_depth = 1  # blocks per such stage
    reduction_ratio = 2  # MiT spatial reduction of keys/values, squared per stage above the deepest
    # prior training: its own budget, before segmentation epoch 0 (a prior step costs ~3 % of a segmenter step);
    # 1000 by the prior sweep on the tumour phantom (validation accuracy 0.70 / 0.85 / 0.58 after 300 / 1000 / 3000)
    prior_iterations = 1000
    prior_lr = 1e-3
    # the transformer blocks' update rule ("adamw" or "sgd"), in the network's one optimizer; the rest of the network
    # keeps nnU-Net's SGD. Chosen by a sweep on training/validation cases (docs/ftsegnet.md)
    transformer_optimizer = "adamw"
    transformer_lr = 3e-4
    transformer_weight_decay = 1e-2
    transformer_warmup = 50  # iterations of linear warm-up (AdamW only)
    progress_plot = "ftsegnet_progress.png"
    setting_choices = {"transformer_optimizer": RULES}
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
        self.classification_only: list[str] | None = None
        self.prior_iterations_done = 0
        self.prior_val_scores: dict | None = None  # prior_scores on the validation loader, once P is trained
        self._with_classification_only = False
        self._gates: list[list[torch.Tensor]] = []
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
        # one phase for the epochs: the network trains, P (inside it) stays frozen; P trains before epoch 0
        if not self.use_cpb:
            return None
        return PhaseSchedule([Phase("segment", None, train=(NETWORK,))])

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
                            cls.transformer_depth, cls.reduction_ratio, spatial_prior=cls.cpb_spatial_prior)

    # ------------------------------------------------------------------ set-up
    @property
    def prior(self) -> nn.Module | None:
        return unwrap(self.network).prior

    def do_split(self):
        """nnU-Net's split without the classification-only cases (they have no mask), unless the prior's loaders
        are being built and a class table gives those cases a target."""
        tr_keys, val_keys = super().do_split()
        if self.classification_only is None:
            self.classification_only = classification_only_cases(self.preprocessed_dataset_folder,
                                                                  list(tr_keys) + list(val_keys), self.label_manager)
        if self._with_classification_only or not self.classification_only:
            return tr_keys, val_keys
        only = set(self.classification_only)
        tr_masked = [k for k in tr_keys if k not in only]
        if not tr_masked:
            raise ValueError(f"{self.plans_manager.dataset_name}, fold {self.fold}: every training case is "
                             f"classification-only (label map all ignore label); the segmenter needs some masks")
        return tr_masked, [k for k in val_keys if k not in only]

    def initialize(self):
        # under DDP the prior's parameters sit in two wrappers, the network's and aux_modules[PRIOR]'s. That is safe:
        # a DDP wrapper reduces gradients only after its own forward ran with grad enabled; P trains through
        # aux_modules[PRIOR] before epoch 0, and the network's wrapper is rebuilt without the frozen P when the
        # segment phase freezes it
        super().initialize()
        self._with_classification_only = True
        try:
            all_training = list(self.do_split()[0])
        finally:
            self._with_classification_only = False
        if self.class_table is not None:
            read_class_table(self.class_table_file, all_training)
        elif self.use_cpb and self.classification_only and self.prior_file is None:
            raise ValueError(f"{self.plans_manager.dataset_name}: {len(self.classification_only)} classification-"
                             f"only case(s) (e.g. {self.classification_only[0]}) but no {CLASS_TABLE} to give "
                             f"them a class")
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
            f"transformers in the deepest {self.transformer_stages} stages ({self.transformer_optimizer}, lr "
            f"{self.transformer_lr}); CPB {'on' if self.use_cpb else 'off'}; prior targets: "
            f"{self.prior_target_source()}; {len(self.classification_only or [])} classification-only case(s), not "
            f"drawn for segmentation")

    def configure_optimizers(self):
        net = unwrap(self.network)
        transformer = [p for p in net.transformers.parameters()]
        apart = {id(p) for p in transformer}
        if net.prior is not None:
            apart |= {id(p) for p in net.prior.parameters()}  # P has its own optimizer
        groups = [{"params": [p for p in net.parameters() if id(p) not in apart], "rule": "sgd",
                   "lr": self.initial_lr, "weight_decay": self.weight_decay}]
        if transformer:
            groups.append({"params": transformer, "rule": self.transformer_optimizer, "lr": self.transformer_lr,
                           "weight_decay": self.transformer_weight_decay, "warmup": self.transformer_warmup})
        optimizer = SGDAdamW(groups, momentum=0.99)
        return optimizer, GroupPolyLR(optimizer, self.num_epochs)

    def prior_target_source(self) -> str:
        if not self.use_cpb:
            return "none (no prior)"
        if self.prior_file is not None:
            return f"none, prior loaded from {self.prior_file}"
        if self.class_table_file is not None:
            return f"class table {self.class_table_file}"
        return "patch contains foreground"

    def build_aux_modules(self) -> dict[str, nn.Module]:
        # the same module object as network.prior: the phase machinery freezes it by name, and the checkpoint keeps
        # its optimizer; its weights travel inside network_weights for the predictor
        return {PRIOR: self.prior} if self.use_cpb else {}

    def configure_aux_optimizers(self):
        if not self.use_cpb:
            return {}
        return {PRIOR: (torch.optim.Adam(self.prior.parameters(), lr=self.prior_lr), None)}

    def extra_checkpoint_state(self) -> dict:
        return {"prior_classes": self.prior.num_classes if self.use_cpb else None,
                "prior_targets": self.prior_target_source(), "prior_iterations_done": self.prior_iterations_done,
                "prior_val_scores": self.prior_val_scores}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        if self.use_cpb and state.get("prior_classes") != self.prior.num_classes:
            raise RuntimeError(f"the checkpoint's prior has {state.get('prior_classes')} classes, this run's "
                               f"{self.prior.num_classes} (class table {self.class_table_file})")
        self.prior_iterations_done = state.get("prior_iterations_done", 0)
        self.prior_val_scores = state.get("prior_val_scores")
        if self.prior_val_scores is None and state.get("prior_val_accuracy") is not None:
            # checkpoints before 2026-12-03 kept the plain accuracy only
            self.prior_val_scores = {"accuracy": state["prior_val_accuracy"]}

    # ------------------------------------------------------------------ the prior's own budget
    def prior_iterations_left(self) -> int:
        if not self.use_cpb or self.prior_file is not None:
            return 0
        return max(0, self.prior_iterations - self.prior_iterations_done)

    def prior_dataloaders(self):
        """nnU-Net's loaders (same patches, augmentation and batch size) over the cases P learns from: every
        training case when a class table gives classification-only cases a target."""
        self._with_classification_only = self.class_table is not None
        try:
            return self.get_dataloaders()
        finally:
            self._with_classification_only = False

    def on_train_start(self):
        super().on_train_start()
        if not self.use_cpb:
            return
        left = self.prior_iterations_left()
        if left == 0 and self.prior_val_scores is not None:
            return
        loader_tr, loader_val = self.prior_dataloaders()
        try:
            if left:
                self.train_prior(loader_tr, left)
            scores = self.prior_val_scores = self.prior_scores(loader_val)
            self.print_to_log_file(f"prior: validation patch accuracy {scores['accuracy']:.3f}, class-balanced "
                                   f"{scores['balanced accuracy']:.3f} ({scores['classes']} of "
                                   f"{self.prior.num_classes} classes in the validation patches)")
            if left or self.current_epoch == 0:
                # P is final here (trained or given) and the segmenter has not trained yet: the gate's coordinates
                # are fixed before W_c learns in them; a resumed run keeps the checkpoint's
                self.calibrate_gates(loader_tr)
        finally:
            for loader in (loader_tr, loader_val):
                if hasattr(loader, "_finish"):
                    loader._finish()
        if left:
            # the trained prior survives an interruption of the segmenter's first epoch: --c starts from here
            self.current_epoch -= 1  # save_checkpoint stores current_epoch + 1
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            self.current_epoch += 1

    def train_prior(self, loader, iterations: int) -> None:
        self.print_to_log_file(f"Training the classification prior: {iterations} iterations (of "
                               f"{self.prior_iterations}), before segmentation epoch {self.current_epoch}")
        self.prior.train()
        for p in self.prior.parameters():
            p.requires_grad_(True)
        report = max(1, self.prior_iterations // 5)
        stats = [0.0, 0, 0]
        for _ in range(iterations):
            loss, correct, seen = self.train_step_prior(next(loader))
            stats = [stats[0] + loss * seen, stats[1] + correct, stats[2] + seen]
            self.prior_iterations_done += 1
            if self.prior_iterations_done % report == 0 or self.prior_iterations_done == self.prior_iterations:
                self.print_to_log_file(f"prior iteration {self.prior_iterations_done}: loss {stats[0] / stats[2]:.4f}, "
                                       f"patch accuracy {stats[1] / stats[2]:.3f}")
                stats = [0.0, 0, 0]
        self.aux_optimizers[PRIOR].zero_grad(set_to_none=True)  # frozen from here: no stale gradients kept
        self.prior.eval()
        for p in self.prior.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def calibrate_gates(self, loader) -> int:
        """Per-channel mean and std of GAP(G_s) of the frozen P over `gate_calibration_batches` training batches
        (all ranks' together under DDP, so every rank gets the same network), written into every CPB's gate.
        Returns the patches counted (0 where `cpb_gate_standardised` is off: the gates keep the raw GAP)."""
        if not self.cpb_gate_standardised:
            return 0
        net = unwrap(self.network)
        calibration = GateCalibration(self.prior.output_channels)
        was_training = self.prior.training
        self.prior.eval()
        for _ in range(self.gate_calibration_batches):
            data = self.batch_to_device(next(loader))[0]
            with self.autocast():
                calibration.add(self.prior(data)[1])
        self.prior.train(was_training)
        if self.is_ddp:
            calibration.all_reduce(self.device)
        stats = calibration.apply(net)
        spread = ", ".join(f"{float(std.mean()):.4f} on {float(mean.abs().mean()):.3f}" for mean, std in stats)
        self.print_to_log_file(f"CPB gates calibrated on {calibration.count} training patches: GAP(G_s) std across "
                               f"patches on its mean level, stage by stage: {spread}")
        return calibration.count

    def prior_targets(self, batch: dict, target: torch.Tensor) -> torch.Tensor:
        if self.class_table is not None:
            return torch.tensor([self.class_table[k] for k in batch["keys"]], device=self.device)
        foreground = target > 0
        if self.label_manager.ignore_label is not None:
            foreground &= target != self.label_manager.ignore_label
        return foreground.flatten(1).any(1).long()

    def train_step_prior(self, batch: dict) -> tuple[float, int, int]:
        """One Adam step of P on a batch: (loss, correct, images)."""
        data, _, target = self.batch_to_device(batch)
        labels = self.prior_targets(batch, target)
        optimizer = self.aux_optimizers[PRIOR]
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            # through the DDP wrapper (when there is one), so the prior's gradients are averaged over the ranks
            logits, _ = self.aux_modules[PRIOR](data)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        self.optimizer_step(loss, optimizer, self.prior.parameters())
        return loss.item(), int((logits.argmax(1) == labels).sum()), labels.shape[0]

    @torch.no_grad()
    def prior_scores(self, loader) -> dict:
        """P's patch accuracy on the loader's batches and its class-balanced accuracy (the mean over the classes
        present of its accuracy on that class): a prior that names the commonest class for every patch scores that
        class's share on the first, but 1 / (classes present) on the second."""
        was_training = self.prior.training
        self.prior.eval()
        k = self.prior.num_classes
        hits = torch.zeros(k, dtype=torch.float64)
        counts = torch.zeros(k, dtype=torch.float64)
        # at least 20 batches: a handful of patches makes the accuracy a coin toss (short test budgets)
        for _ in range(max(20, self.num_val_iterations_per_epoch)):
            batch = next(loader)
            data, _, target = self.batch_to_device(batch)
            labels = self.prior_targets(batch, target)
            with self.autocast():
                logits, _ = self.prior(data)
            labels, right = labels.cpu(), (logits.argmax(1) == labels).cpu().double()
            counts += torch.bincount(labels, minlength=k).double()
            hits += torch.bincount(labels, weights=right, minlength=k)
        self.prior.train(was_training)
        if self.is_ddp:
            # every rank saw its own batches: the scores over all of them, the same on every rank
            both = torch.cat([hits, counts]).to(self.device)
            dist.all_reduce(both)
            hits, counts = both.cpu().split(k)
        present = counts > 0
        return {"accuracy": float(hits.sum() / counts.sum()),
                "balanced accuracy": float((hits[present] / counts[present]).mean()), "classes": int(present.sum())}

    def prior_accuracy(self, loader) -> float:
        return self.prior_scores(loader)["accuracy"]

    # ------------------------------------------------------------------ vital signs
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._gates = []

    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step(batch)
        net = unwrap(self.network)
        if net.cpb is not None and net.cpb[0].last_gate is not None:
            self._gates.append([block.last_gate.float().cpu() for block in net.cpb])
        return result

    def epoch_vital_signs(self) -> dict[str, float]:
        net = unwrap(self.network)
        if net.cpb is None:
            return {}
        scores = self.prior_val_scores or {}
        values = {"prior/validation accuracy": scores.get("accuracy", float("nan")),
                  "prior/validation balanced accuracy": scores.get("balanced accuracy", float("nan"))}
        for s, block in enumerate(net.cpb):
            values[f"alpha/stage {s}"] = float(block.alpha.detach())
        if self._gates:
            for s in range(len(net.cpb)):
                gates = torch.cat([g[s] for g in self._gates])  # validation images x channels
                # how differently the gate treats different images; 0 while it ignores the prior
                values[f"gate spread/stage {s}"] = float(gates.std(0).mean()) if len(gates) > 1 else 0.0
        return values

    def vital_sign_warnings(self, history: list[dict]) -> list[str]:
        last = history[-1]
        warnings = []
        accuracy = last.get("prior/validation accuracy")
        balanced = last.get("prior/validation balanced accuracy")
        classes = (self.prior_val_scores or {}).get("classes", 0)
        if accuracy is not None and accuracy == accuracy and accuracy <= 1 / self.prior.num_classes:
            warnings.append(f"the prior's validation accuracy {accuracy:.3f} is at chance "
                            f"({self.prior.num_classes} classes): the CPB has no class evidence to use")
        elif balanced is not None and balanced == balanced and classes >= 2 and balanced <= 1 / classes + 1e-9:
            # the plain accuracy can sit well above chance when one class dominates and P names it for every patch
            warnings.append(f"the prior's class-balanced validation accuracy {balanced:.3f} is no better than naming "
                            f"one class for every patch ({classes} classes in the validation patches): the CPB has "
                            "no class evidence to use")
        if last["epoch"] >= self.num_epochs // 2:
            alphas = [abs(v) for k, v in last.items() if k.startswith("alpha/")]
            spreads = [v for k, v in last.items() if k.startswith("gate spread/")]
            if max(alphas, default=0) < 1e-3 and max(spreads, default=0) < 1e-3:
                warnings.append("the CPB is still closed (alpha ~0, gate the same for every image): the network "
                                "behaves as the transformer-only network")
        return warnings


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
            # as nnU-Net: the lowest output does not count, but under DDP a weight of 0 leaves parameters without a
            # gradient, which DDP refuses
            weights[-1] = 1e-6 if self.is_ddp and not self._do_i_compile() else 0
            total = sum(weights)
            loss = DeepSupervisionWrapper(loss, [w / total for w in weights])
        return loss


class FTSegNetTrainer_NoCPB(FTSegNetTrainer):
    """The transformer+conv U-Net alone: no prior, no CPB, no prior phase (the ablation's transformer-only row)."""

    use_cpb = False


class FTSegNetTrainer_ClassOnly(FTSegNetTrainer):
    """The CPB without its spatial term: P's features reach the segmenter only as a per-image channel gate and the
    class vector in the bottleneck. An ablation: it tells whether a gain (or false positives on look-alikes) comes from
    P's image-level evidence or from its local features, which also answer to tumour mimics."""

    cpb_spatial_prior = False


class FTSegNetTrainer_rawGate(FTSegNetTrainer):
    """The CPB gate on the raw GAP(G_s), as before 2026-12-04: an ablation of the gate's calibration, under which the
    gate stayed nearly the same for every image."""

    cpb_gate_standardised = False


FTSegNetTrainer_debug = short_variant(FTSegNetTrainer, "FTSegNetTrainer_debug", **DEBUG_BUDGET)
FTSegNetTrainer_demo = short_variant(FTSegNetTrainer, "FTSegNetTrainer_demo", **DEMO_BUDGET)
FTSegNetTrainer_DiceFocal_debug = short_variant(FTSegNetTrainer_DiceFocal, "FTSegNetTrainer_DiceFocal_debug",
                                                **DEBUG_BUDGET)
FTSegNetTrainer_DiceFocal_demo = short_variant(FTSegNetTrainer_DiceFocal, "FTSegNetTrainer_DiceFocal_demo",
                                               **DEMO_BUDGET)
FTSegNetTrainer_NoCPB_debug = short_variant(FTSegNetTrainer_NoCPB, "FTSegNetTrainer_NoCPB_debug", **DEBUG_BUDGET)
FTSegNetTrainer_NoCPB_demo = short_variant(FTSegNetTrainer_NoCPB, "FTSegNetTrainer_NoCPB_demo", **DEMO_BUDGET)
