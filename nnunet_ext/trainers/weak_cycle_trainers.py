"""Lesion segmentation from image-level labels (Du et al. 2024, consistency label transfer) as nnU-Net trainers.

    nnUNetv2_train 741 2d 0 -tr WeakCycleTrainer -device cpu
    nnUNetv2_predict -i IN -o OUT -d 741 -c 2d -f 0 -tr WeakCycleTrainer -device cpu

The data set follows the weak-label convention (docs/conversion.md, "Weak labels"): disease cases the ignore label
over the image (0 outside its non-zero region), normal cases all 0, optionally fully labelled validation cases (fold 0
of splits_final.json). One training run has two phases:
1. "translation": light U-GAT-IT generators disease->normal (G_AB) and normal->disease (G_BA) with global and local
   discriminators, on nnU-Net's spatially augmented patches (disease and normal cases sampled equally). At its end
   the attention mask of G_AB on every disease training case, zeroed outside the body (nnU-Net's -1 outside
   marking), rescaled per image over the body and thresholded per image (Otsu, then a morphological opening, as the
   original; or one threshold chosen on the fully labelled validation cases, `threshold_mode`), becomes the case's
   pseudo-mask.
2. "refinement": the plans' nnU-Net network (the student, the one nnU-Net saves and predicts with) trains on the
   pseudo-masks (disease) and all-background maps (normal) from a strong view (the weak view plus nnU-Net's
   intensity augmentations and extra contrast/brightness/noise), plus a consistency term towards an EMA teacher that
   sees the weak view (nnU-Net's spatial augmentation and mirroring only), on the disease cases' samples (the others'
   labels are certain; `consistency_on_certain`); the loader's workers make both views of each patch
   (methods/weak_cycle/views.py); every
   `pseudo_update_every` epochs confident teacher pixels rewrite the pseudo-masks and uncertain ones become ignore.
   nnU-Net's best-checkpoint tracking restarts when refinement starts (the student is untrained before).
Generators, discriminators, teacher, their optimizers and the pseudo-masks are in the checkpoint: `--c` resumes in
either phase. Selection (threshold, nnU-Net's best checkpoint) uses validation cases only, never the test set.

`WeakCycleTrainer_CAM` is the CAM-only baseline: pseudo-masks from G_AB's class activation map instead of its
attention mask. `WeakCycleTrainer_ISIC` uses the original's ISIC loss weights, `WeakCycleTrainer_noComposite` drops
the adversarial term on the composited image (an ablation, docs/weak_cycle.md). Environment variable
nnUNet_ext_weak_export=ID exports the phase-1 pseudo-masks as a labelled raw data set DatasetID_<name>Pseudo (any
trainer can then train on it). Vital signs (attention coverage and inside/outside-body means, CAM accuracy,
validation pseudo-mask Dice, teacher changes) are logged every epoch and plotted to weakcycle_progress.png.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.paths import nnUNet_raw
from nnunetv2.utilities.helpers import dummy_context
from torch import nn

from nnunet_ext.methods.weak_cycle.data import (
    OUTSIDE,
    PseudoLabelDataset,
    WeakCases,
    WeakLabelError,
    balanced_identifiers,
    best_threshold,
    body_mask,
    case_kind,
    classify_cases,
    dice,
    export_pseudo_dataset,
    normalise_in_body,
    save_array,
    teacher_thresholds,
    threshold_image,
    to_raw_geometry,
)
from nnunet_ext.methods.weak_cycle.loss import (
    CYCLE_LOSS_WEIGHTS,
    ISIC_LOSS_WEIGHTS,
    LOSS_NAMES,
    cycle_generator_losses,
    discriminator_loss,
    teacher_consistency,
    weighted_sum,
)
from nnunet_ext.methods.weak_cycle.network import (
    MIN_ATTENTION_CELLS,
    WeakCycleDiscriminator,
    WeakCycleGenerator,
    attention_and_cam,
    discriminator_depths,
    generator_downsamplings,
    pad_to_multiple,
)
from nnunet_ext.methods.weak_cycle.views import StrongViewTransform, split_views
from nnunet_ext.training.base import env_int, nnUNetExtTrainer, unwrap
from nnunet_ext.training.phases import NETWORK, Phase, PhasePolyLRScheduler, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["WeakCycleTrainer", "WeakCycleTrainer_CAM", "WeakCycleTrainer_ISIC", "WeakCycleTrainer_noComposite",
           "WeakCycleTrainer_debug", "WeakCycleTrainer_demo", "WeakCycleTrainer_CAM_debug", "WeakCycleTrainer_CAM_demo"]

EXPORT_ENV = "nnUNet_ext_weak_export"
GENERATORS = ("gen_ab", "gen_ba")
DISCRIMINATORS = ("disc_global_a", "disc_local_a", "disc_global_b", "disc_local_b")
TRANSLATION, REFINEMENT = "translation", "refinement"
# nnU-Net's intensity augmentations: left out of the teacher's weak view, applied to the student's strong view
INTENSITY_TRANSFORMS = (GaussianNoiseTransform, GaussianBlurTransform, MultiplicativeBrightnessTransform,
                        ContrastTransform, SimulateLowResolutionTransform, GammaTransform)
SHRINK_WARNING = 1 / 3  # warn when the teacher's lesion share falls below this share of its first update's
VITAL_CASES = 8  # cases per kind that the per-epoch vital signs look at: bounded cost on large data sets
# the translation's warnings wait for this many epochs (an untrained generator's first epochs are expected to look
# flat); the CAM-at-chance and other-source warnings judge the best or the mean of the last RECENT_EPOCHS, so that one
# noisy epoch neither raises nor clears them
WARN_AFTER_EPOCHS = 5
RECENT_EPOCHS = 3
# warn when the other pseudo-mask source (CAM or attention) beats the chosen one on the validation cases by more than
# this Dice, averaged over the last RECENT_EPOCHS translation epochs: on the ISIC sample at the trainer's widths the
# CAM scored 0.83-0.91 there while the attention stayed at 0.12-0.43
OTHER_SOURCE_MARGIN = 0.1
# the vital sign holding each pseudo-mask source's Dice on the fully labelled validation cases
VALIDATION_DICE = {"attention": "pseudo_mask/validation_dice", "cam": "pseudo_mask/validation_dice_cam"}


def lesion_contrast(attention: np.ndarray, body: np.ndarray, reference: np.ndarray) -> float:
    """How far the attention on a case's lesion stands above the rest of its body, in units of its spread over the
    body: 0 for a map that ignores the lesion, a few for one that singles it out (nan without lesion or rest)."""
    lesion, rest = lesion_and_rest(attention, body, reference)
    if math.isnan(lesion) or math.isnan(rest):
        return math.nan
    return float((lesion - rest) / max(float(attention[body].std()), 1e-8))


def lesion_and_rest(attention: np.ndarray, body: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean attention on the lesion and on the rest of the body (nan where either is empty)."""
    lesion, rest = attention[reference & body], attention[body & ~reference]
    return (float(lesion.mean()) if lesion.size else math.nan), (float(rest.mean()) if rest.size else math.nan)


def load_case_arrays(dataset, identifier: str) -> tuple[np.ndarray, np.ndarray]:
    """(image C x spatial float32, seg 1 x spatial) of one preprocessed case."""
    data, seg, _, _ = dataset.load_case(identifier)
    return np.asarray(data[:], dtype=np.float32), np.asarray(seg[:])


class WeakCycleTrainer(nnUNetExtTrainer):
    # `nnunet_ext demo --trainer WeakCycleTrainer`: the weak-label phantom; no Dice floor set (docs/weak_cycle.md)
    demo_phantom = "weak2d"
    demo_dice_floor = None
    progress_plot = "weakcycle_progress.png"
    # where the pseudo-masks come from: "attention" (the method) or "cam" (the CAM-only baseline)
    pseudo_source = "attention"
    translation_fraction = 0.5  # share of the epochs spent on phase 1
    generator_features = 32
    generator_blocks = 4
    # the generator downsamples twice (the original's) unless that leaves the attention mask, which becomes the
    # lesion mask, under this many cells on the smallest axis; then once. 0: always twice
    attention_min_cells = MIN_ATTENTION_CELLS
    discriminator_features = 32
    translation_lr = 1e-4  # Adam, betas (0.5, 0.999), as the original
    translation_weight_decay = 2e-5  # the original's
    # the generators and discriminators train in float32 as the original, outside nnU-Net's CUDA mixed precision:
    # under it the translation loss was NaN in every epoch of the demo on an H200, so the GradScaler skipped every
    # update and G_AB never moved (bench/results/gpu/demo_WeakCycleTrainer.log, weakcycle_progress.png). True: AMP.
    translation_amp = False
    cycle_loss_weights = CYCLE_LOSS_WEIGHTS  # the original's BraTS weights; ISIC_LOSS_WEIGHTS for ISIC
    # "otsu": per image, as the original; "validation": one threshold with the best mean Dice on the fully labelled
    # validation cases (Otsu where there are none)
    threshold_mode = "otsu"
    opening_radius = 1  # pixels of the morphological opening after thresholding (0: none)
    ema_decay = 0.99
    consistency_weight = 1.0
    # the consistency term (and the teacher's forward pass it needs) on every sample (True) or only on the samples of
    # pseudo-labelled disease cases (False): normal and fully labelled cases carry certain labels that the supervised
    # loss already enforces; leaving them out keeps the weight the disease samples had and costs half the teacher
    # passes on a balanced batch (bench/results/weak_cycle/refinement_step_breakdown.md)
    consistency_on_certain = False
    # a teacher probability beyond this (or below 1 - this) sets a pseudo-mask pixel; in between it becomes ignore
    teacher_confidence = 0.9
    # class-balanced thresholds: each class keeps at least this share of the pixels the teacher assigns to it (its
    # most confident ones), however unsure the teacher; None: the absolute confidence alone
    teacher_keep_fraction: float | None = 0.8  # chosen on validation: bench/weak_cycle/bench_weak_cycle_teacher_rule.py
    # what an update does with the pixels the teacher is unsure about: "keep" (they keep their current pseudo-label, so
    # only confident pixels change it) or "ignore" (the student learns nothing there, which shrank the lesion share
    # update by update); chosen on validation: bench/results/weak_cycle/weak_cycle_checkpoints_phantom_long_keep.md
    teacher_uncertain = "keep"
    pseudo_update_every = 5  # epochs of refinement between pseudo-mask updates; 0: never
    # which G_AB makes the phase-1 pseudo-masks: "validation", the translation epoch whose pseudo-masks (from
    # pseudo_source) score the best Dice on the fully labelled validation cases (the last epoch's where there are
    # none), as the original keeps its best checkpoint but chosen on validation, not on the test set; "last"
    generator_selection = "validation"
    strong_noise_std = 0.1
    strong_contrast = 0.25
    strong_brightness = 0.2
    setting_choices = {"pseudo_source": ("attention", "cam"), "threshold_mode": ("otsu", "validation"),
                       "teacher_uncertain": ("keep", "ignore"), "generator_selection": ("validation", "last")}
    # bench harness: the step needs this trainer's own batches (stacked strong and weak views), not stock's
    benchmark_own_batches = True

    @classmethod
    def check_dataset(cls, plans_manager, configuration_manager, label_manager, dataset_json: dict,
                      configuration: str) -> None:
        dataset = plans_manager.dataset_name
        if label_manager.has_regions:
            raise WeakLabelError(f"{dataset} uses region-based labels; {cls.__name__} needs background, one lesion "
                                 f"label and the ignore label")
        if label_manager.ignore_label is None:
            raise WeakLabelError(f"{dataset}: dataset.json declares no ignore label; weak labels mark disease "
                                 f"cases with an all-ignore label map (docs/conversion.md, 'Weak labels')")
        foreground = list(label_manager.foreground_labels)
        if len(foreground) != 1:
            raise WeakLabelError(f"{dataset}: {cls.__name__} segments one lesion class, the data set has "
                                 f"foreground labels {foreground}")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lesion_label = int(self.label_manager.foreground_labels[0])
        self.export_dataset_id = env_int(EXPORT_ENV)
        self.weak_cases: WeakCases | None = None
        self.pseudo_masks: dict[str, np.ndarray] = {}
        self.pseudo_threshold: dict | None = None
        self.teacher_ready = False
        self._vital_data: dict | None = None
        self._cam_hits = self._cam_total = 0
        self._translation_steps = self._nonfinite_steps = 0
        self._teacher_vitals: dict[str, float] = {}
        # G_AB of the translation epoch with the best validation pseudo-mask Dice so far: epoch, dice, state
        self.selected_generator: dict | None = None

    def build_phase_schedule(self) -> PhaseSchedule:
        unknown = sorted(set(self.cycle_loss_weights) - set(LOSS_NAMES))
        if unknown:  # a misspelt term would silently weigh nothing
            raise ValueError(f"{type(self).__name__}.cycle_loss_weights names unknown losses {unknown}; known: "
                             f"{list(LOSS_NAMES)}")
        return PhaseSchedule([
            Phase(TRANSLATION, self.translation_fraction, train=GENERATORS + DISCRIMINATORS,
                  losses=self.cycle_loss_weights),
            Phase(REFINEMENT, None, train=(NETWORK,), losses={"consistency": self.consistency_weight}),
        ])

    # ------------------------------------------------------------------ modules
    @property
    def spatial_dims(self) -> int:
        return len(self.configuration_manager.patch_size)

    def build_aux_modules(self) -> dict[str, nn.Module]:
        patch, dim, channels = self.configuration_manager.patch_size, self.spatial_dims, self.num_input_channels
        n_down = generator_downsamplings(patch, self.attention_min_cells)
        global_depth, local_depth = discriminator_depths(patch)
        modules = {name: WeakCycleGenerator(channels, dim, self.generator_features, n_down, self.generator_blocks)
                   for name in GENERATORS}
        for domain in ("a", "b"):
            modules[f"disc_global_{domain}"] = WeakCycleDiscriminator(channels, dim, self.discriminator_features,
                                                                      global_depth)
            modules[f"disc_local_{domain}"] = WeakCycleDiscriminator(channels, dim, self.discriminator_features,
                                                                     local_depth)
        # the consistency term and the pseudo-mask updates read only the full-resolution output: no deep
        # supervision heads (the same parameters, so the student's state dict loads)
        teacher = self.build_network_architecture(self.plans_manager, self.configuration_manager, channels,
                                                  self.label_manager.num_segmentation_heads, False)
        teacher.load_state_dict(unwrap(self.network).state_dict())
        modules["teacher"] = teacher
        return modules

    def configure_optimizers(self):
        """nnU-Net's SGD for the student, its poly decay spread over the refinement epochs: the student trains only
        there, and under the whole run's decay it would start at half of nnU-Net's learning rate (translation_fraction
        0.5) and learn its pseudo-masks at a fraction of the rate a stock run of that length has."""
        optimizer, _ = super().configure_optimizers()
        refinement = self.phase_schedule.resolved(REFINEMENT, self.num_epochs)
        return optimizer, PhasePolyLRScheduler(optimizer, self.initial_lr, refinement.start, refinement.end)

    def configure_aux_optimizers(self):
        return {name: (torch.optim.Adam(self.aux_modules[name].parameters(), lr=self.translation_lr,
                                        betas=(0.5, 0.999),
                                        weight_decay=self.translation_weight_decay), None)
                for name in GENERATORS + DISCRIMINATORS}

    def extra_checkpoint_state(self) -> dict:
        return {"pseudo_masks": self.pseudo_masks, "threshold": self.pseudo_threshold,
                "teacher_ready": self.teacher_ready, "selected_generator": self.selected_generator}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        self.pseudo_masks = dict(state["pseudo_masks"])
        self.pseudo_threshold = state["threshold"]
        self.teacher_ready = state["teacher_ready"]
        self.selected_generator = state.get("selected_generator")  # absent in checkpoints before 2026-12-03

    # ------------------------------------------------------------------ data
    @property
    def weak_folder(self) -> Path:
        return Path(self.output_folder) / "weak_cycle"

    @property
    def pseudo_mask_folder(self) -> Path:
        return self.weak_folder / "pseudo_masks"

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.weak_cases is None:
            self.weak_cases = classify_cases(dataset_tr, dataset_tr.identifiers, self.label_manager.ignore_label,
                                             self.plans_manager.dataset_name)
            self.print_to_log_file(f"Weak labels of the training cases: {self.weak_cases.describe()}")
        self.pseudo_mask_folder.mkdir(parents=True, exist_ok=True)
        return PseudoLabelDataset(dataset_tr, self.pseudo_mask_folder, balanced_identifiers(self.weak_cases)), \
            dataset_val

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's pipeline with its intensity augmentations moved into a StrongViewTransform at their place: the
        workers hand over [strong, weak] views of each patch along the channel axis, with one geometry and one
        target (methods/weak_cycle/views.py). The masking of the outside covers both views' channels."""
        channels = self.num_input_channels
        transforms, intensity, position = [], [], None
        for transform in super().get_training_transforms(*args, **kwargs).transforms:
            inner = transform.transform if isinstance(transform, RandomTransform) else transform
            if isinstance(inner, INTENSITY_TRANSFORMS):
                position = len(transforms) if position is None else position
                intensity.append(transform)
            elif isinstance(transform, MaskImageTransform):
                apply_to = list(transform.apply_to_channels)
                transforms.append(MaskImageTransform(apply_to + [c + channels for c in apply_to],
                                                     transform.channel_idx_in_seg, transform.set_outside_to))
            else:
                transforms.append(transform)
        transforms.insert(len(transforms) if position is None else position,
                          self.strong_view_transform(ComposeTransforms(intensity)))
        return ComposeTransforms(transforms)

    def strong_view_transform(self, intensity: ComposeTransforms) -> StrongViewTransform:
        return StrongViewTransform(intensity, self.strong_noise_std, self.strong_contrast, self.strong_brightness)

    def _batch_kinds(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(disease, normal) sample masks of a batch: ignore pixels (padding may add 0s) vs nothing but 0."""
        flat = target.flatten(1)
        disease = (flat == self.label_manager.ignore_label).any(1) & ~(flat == self.lesion_label).any(1)
        normal = (flat == 0).all(1)
        return disease, normal

    def _translation_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal numbers of disease and normal patches, drawing further batches when one kind is missing."""
        disease, normal = [], []
        for attempt in range(50):
            if attempt:
                batch = next(self.dataloader_train)
            target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
            is_disease, is_normal = self._batch_kinds(target)
            _, weak = split_views(batch["data"], self.num_input_channels)  # translation trains on the weak view
            disease.append(weak[is_disease])
            normal.append(weak[is_normal])
            n = min(sum(len(d) for d in disease), sum(len(x) for x in normal))
            if n >= max(1, self.batch_size // 2):
                break
        if n == 0:
            raise RuntimeError(f"{self.__class__.__name__}: 50 batches held no disease/normal pair; check the weak "
                               f"labels of {self.plans_manager.dataset_name}")
        return torch.cat(disease)[:n].to(self.device), torch.cat(normal)[:n].to(self.device)

    # ------------------------------------------------------------------ phase 1: cycle translation
    def on_train_epoch_start(self):
        self._cam_hits = self._cam_total = 0
        self._translation_steps = self._nonfinite_steps = 0
        self._teacher_vitals = {}
        super().on_train_epoch_start()
        phase = self.current_phase
        since = self.current_epoch - phase.start
        if phase.name == REFINEMENT and self.pseudo_update_every and since > 0 and \
                since % self.pseudo_update_every == 0:
            self.update_pseudo_masks_from_teacher()

    def translation_autocast(self):
        """The precision of the translation networks' steps: float32 unless `translation_amp`."""
        return self.autocast() if self.translation_amp else dummy_context()

    def train_step_translation(self, batch: dict) -> dict:
        disease, normal = self._translation_batch(batch)
        m = self.aux_modules
        d_a, d_b = (m["disc_global_a"], m["disc_local_a"]), (m["disc_global_b"], m["disc_local_b"])
        with self.translation_autocast():
            weights = self.current_phase.phase.losses
            losses, translations = cycle_generator_losses(m["gen_ab"], m["gen_ba"], d_a, d_b, disease, normal,
                                                          composite=weights.get("adversarial_composite", 0) > 0)
            generator_loss = weighted_sum(losses, weights)
        for name in GENERATORS:
            self.aux_optimizers[name].zero_grad(set_to_none=True)
        self.optimizer_step(generator_loss, [self.aux_optimizers[n] for n in GENERATORS],
                            [p for n in GENERATORS for p in m[n].parameters()], scaled=self.translation_amp)

        ab, ba, bb = translations["ab"], translations["ba"], translations["bb"]
        with torch.no_grad():  # G_AB's CAM classifier: disease (logit > 0) against normal, for the vital signs
            self._cam_hits += int((ab["cam_logits"].mean(1) > 0).sum()) + int((bb["cam_logits"].mean(1) < 0).sum())
            self._cam_total += len(ab["cam_logits"]) + len(bb["cam_logits"])
        with self.translation_autocast():
            disc_loss = discriminator_loss(d_a, disease, ba["translated"]) + \
                discriminator_loss(d_b, normal, ab["translated"])
        for name in DISCRIMINATORS:  # also drops what the generator step left in their grads
            self.aux_optimizers[name].zero_grad(set_to_none=True)
        self.optimizer_step(disc_loss, [self.aux_optimizers[n] for n in DISCRIMINATORS],
                            [p for n in DISCRIMINATORS for p in m[n].parameters()], scaled=self.translation_amp)
        loss = (generator_loss + disc_loss).detach().cpu().numpy()
        # a step whose loss is not finite changes nothing (the GradScaler skips it) or poisons the weights: counted,
        # since a run of them leaves the generators where they started while the epochs go by
        self._translation_steps += 1
        self._nonfinite_steps += int(not np.isfinite(loss))
        return {"loss": loss}

    @torch.no_grad()
    def generator_maps(self, generator: nn.Module, data: np.ndarray) -> dict[str, np.ndarray]:
        """G_AB's attention and its CAM (ReLU, divided by its maximum per image) on one preprocessed case (C x
        spatial), both of the case's spatial shape; 2D configurations run slice by slice."""
        generator = unwrap(generator)  # under DDP a wrapper, which lacks the module's attributes (n_down)
        was_training = generator.training
        generator.eval()
        x = torch.from_numpy(data).to(self.device)
        x = x.permute(1, 0, 2, 3) if self.spatial_dims == 2 else x[None]  # 2D: slices as the batch
        maps = attention_and_cam(generator, x)
        generator.train(was_training)
        return {key: (m.permute(1, 0, 2, 3) if self.spatial_dims == 2 else m[0]).float().cpu().numpy()[0]
                for key, m in maps.items()}

    def lesion_probability(self, generator: nn.Module, data: np.ndarray, body: np.ndarray | None = None
                           ) -> np.ndarray:
        """The pseudo-mask source map (`pseudo_source`: attention or CAM) on one case, 0 outside the body."""
        self.check_settings("pseudo_source")
        probability = self.generator_maps(generator, data)[self.pseudo_source]
        return probability if body is None else probability * body

    def _images(self, array: np.ndarray):
        """The images thresholded one by one: the slices of a 2D configuration, else the volume."""
        return [(i,) for i in range(array.shape[0])] if self.spatial_dims == 2 else [()]

    def binarise(self, probability: np.ndarray, body: np.ndarray, threshold: float | None = None
                 ) -> tuple[np.ndarray, list[float]]:
        """(lesion mask bool, thresholds used per image): per image normalised over its body, cut at `threshold`
        (None: that image's Otsu threshold), opened by `opening_radius`."""
        mask = np.zeros(probability.shape, bool)
        used = []
        for index in self._images(probability):
            if not body[index].any():
                continue
            mask[index], t = threshold_image(probability[index], body[index], threshold, int(self.opening_radius))
            used.append(t)
        return mask, used

    def global_threshold(self) -> float | None:
        """The threshold `threshold_mode` asks for: None (per-image Otsu) or the one chosen on validation."""
        if self.threshold_mode == "otsu":
            return None
        self.check_settings("threshold_mode")
        chosen = self.pseudo_threshold or {}
        return chosen.get("threshold")

    def validation_cases(self, dataset_val) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(image, body, lesion reference) of the fully labelled validation cases."""
        cases = []
        for case in dataset_val.identifiers:
            data, seg = load_case_arrays(dataset_val, case)
            if case_kind(seg, self.label_manager.ignore_label) == "full":
                cases.append((data, body_mask(seg, data), seg[0] == self.lesion_label))
        return cases

    def choose_threshold(self, dataset_val) -> dict:
        """The thresholding rule and its validation Dice where fully labelled validation cases exist."""
        generator = self.aux_modules["gen_ab"]
        cases = self.validation_cases(dataset_val)
        maps = [self.lesion_probability(generator, data, body) for data, body, _ in cases]
        choice: dict = {"mode": "otsu", "threshold": None, "opening_radius": int(self.opening_radius)}
        if self.threshold_mode == "validation" and cases:
            normalised = [np.stack([normalise_in_body(p[i], b[i]) for i in range(p.shape[0])])
                          if self.spatial_dims == 2 else normalise_in_body(p, b)
                          for p, (_, b, _) in zip(maps, cases, strict=True)]
            t, _ = best_threshold(normalised, [r for _, _, r in cases])
            choice.update(mode="validation", threshold=t)
        elif self.threshold_mode == "validation":
            choice["note"] = "no fully labelled validation case: per-image Otsu"
        else:
            self.global_threshold()  # refuses an unknown mode
        if cases:
            scores = [dice(r, self.binarise(p, b, choice["threshold"])[0])
                      for p, (_, b, r) in zip(maps, cases, strict=True)]
            choice.update(validation_dice=float(np.mean(scores)), source=f"validation ({len(cases)} fully "
                                                                          f"labelled cases)")
        else:
            choice["source"] = "no fully labelled validation case"
        return choice

    def pseudo_label(self, mask: np.ndarray, body: np.ndarray) -> np.ndarray:
        """The label map the student trains on (1 x spatial, int8): lesion 1, background 0, nnU-Net's -1 outside."""
        return np.where(body, mask.astype(np.int8), np.int8(OUTSIDE)).astype(np.int8)[None]

    def make_pseudo_masks(self) -> None:
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        generator = self.aux_modules["gen_ab"]
        self.pseudo_threshold = choice = self.choose_threshold(dataset_val)
        self.pseudo_masks, thresholds, fractions = {}, [], []
        for case in self.weak_cases.disease:
            data, seg = load_case_arrays(dataset_tr, case)
            body = body_mask(seg, data)
            mask, used = self.binarise(self.lesion_probability(generator, data, body), body, choice["threshold"])
            self.pseudo_masks[case] = self.pseudo_label(mask, body)
            thresholds += used
            fractions.append(mask.sum() / max(int(body.sum()), 1))
        choice["thresholds"] = {"mean": float(np.mean(thresholds)), "min": float(np.min(thresholds)),
                                "max": float(np.max(thresholds))}
        rule = "per-image Otsu" if choice["threshold"] is None else f"validation threshold {choice['threshold']:.2f}"
        validation = f"; validation Dice {choice['validation_dice']:.3f}" if "validation_dice" in choice else ""
        self.print_to_log_file(
            f"Phase-1 pseudo-masks ({self.pseudo_source}) of {len(self.pseudo_masks)} disease cases: {rule} on "
            f"body-normalised maps (thresholds {choice['thresholds']['mean']:.2f}, {choice['thresholds']['min']:.2f}"
            f"-{choice['thresholds']['max']:.2f}), opening radius {choice['opening_radius']}, {choice['source']}"
            f"{validation}; mean lesion fraction of the body {np.mean(fractions):.3f}")
        self.write_phase1_masks(dataset_tr)

    def raw_geometry(self, mask: np.ndarray, properties: dict) -> np.ndarray:
        """A preprocessed-space pseudo-label (1 x spatial) back onto the raw image grid as 0/1 (uncropped,
        resampled nearest); outside and ignore count as 0."""
        return to_raw_geometry(mask[0] == self.lesion_label, properties)

    def write_phase1_masks(self, dataset_tr) -> None:
        """The phase-1 pseudo-masks in the raw images' geometry and file format (for scoring and the export)."""
        if self.local_rank != 0:
            return  # under DDP every rank holds the same masks; one writes them
        out = self.weak_folder / "phase1_pseudo_masks"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        writer = self.plans_manager.image_reader_writer_class()
        raw_masks = {}
        for case, mask in self.pseudo_masks.items():
            _, _, _, properties = dataset_tr.load_case(case)
            raw_masks[case] = self.raw_geometry(mask, properties)
            writer.write_seg(raw_masks[case], str(tmp / f"{case}{self.dataset_json['file_ending']}"), properties)
        (tmp / "threshold.json").write_text(json.dumps(dict(self.pseudo_threshold, source_map=self.pseudo_source)))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        if self.export_dataset_id is not None:
            name = f"{self.plans_manager.dataset_name.split('_', 1)[1]}Pseudo"
            target = export_pseudo_dataset(Path(nnUNet_raw) / self.plans_manager.dataset_name, raw_masks,
                                           Path(nnUNet_raw), self.export_dataset_id, name, writer, overwrite=True)
            self.print_to_log_file(f"Exported the phase-1 pseudo-masks as {target} ({EXPORT_ENV})")

    # ------------------------------------------------------------------ phase 2: teacher-student
    def on_phase_start(self, phase) -> None:
        folder = self.pseudo_mask_folder
        if phase.name == TRANSLATION:
            # a fresh or resumed phase 1 trains on the weak labels themselves
            if self.local_rank == 0:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True, exist_ok=True)
            self.wait_for_rank0()
            return
        if not self.pseudo_masks:
            self.use_selected_generator()
            self.make_pseudo_masks()
        self.publish_pseudo_masks()
        if not self.teacher_ready:
            # the teacher starts where the student starts
            unwrap(self.aux_modules["teacher"]).load_state_dict(unwrap(self.network).state_dict())
            self.teacher_ready = True
            # phase 1 never trains the student, so a "best" checkpoint from it is an untrained network; a resumed
            # refinement (teacher_ready from the checkpoint) keeps its tracker
            self._best_ema = None
            self.print_to_log_file("Refinement starts: nnU-Net's best-checkpoint tracking restarts")

    @torch.no_grad()
    def teacher_probability(self, data: np.ndarray) -> np.ndarray:
        teacher = self.aux_modules["teacher"]
        teacher.eval()
        strides = self.configuration_manager.network_arch_init_kwargs.get("strides")
        multiple = tuple(int(np.prod([s[i] for s in strides])) for i in range(self.spatial_dims)) if strides \
            else (1,) * self.spatial_dims
        x = torch.from_numpy(data).to(self.device)
        x = x.permute(1, 0, 2, 3) if self.spatial_dims == 2 else x[None]
        maps = []
        for start in range(0, x.shape[0], 8):
            padded, crop = pad_to_multiple(x[start:start + 8], multiple)
            with self.autocast():
                out = teacher(padded)
            out = out[0] if isinstance(out, list | tuple) else out
            maps.append(torch.softmax(out[crop].float(), 1)[:, self.lesion_label:self.lesion_label + 1])
        probability = torch.cat(maps)
        probability = probability.permute(1, 0, 2, 3) if self.spatial_dims == 2 else probability[0]
        return probability.cpu().numpy()[0]

    def update_pseudo_masks_from_teacher(self) -> None:
        """Confident teacher pixels set the pseudo-labels inside the body (probability >= high: lesion, <= low:
        background; `teacher_thresholds`: teacher_confidence, class-balanced by teacher_keep_fraction); the rest
        become the ignore label, so the student learns nothing there, or with teacher_uncertain "keep" keep the label
        they had."""
        self.check_settings("teacher_uncertain")
        dataset_tr, _ = super().get_tr_and_val_datasets()
        ignore = np.int8(self.label_manager.ignore_label)
        cases = list(self.pseudo_masks)
        bodies, probabilities = [], []
        for case in cases:
            data, seg = load_case_arrays(dataset_tr, case)
            bodies.append(body_mask(seg, data))
            # float16 halves what all cases' maps hold until the dataset-level thresholds are known
            probabilities.append(self.teacher_probability(data).astype(np.float16))
        high, low = teacher_thresholds(probabilities, bodies, self.teacher_confidence, self.teacher_keep_fraction)
        changed = ignored = lesion = total = 0
        for case, body, probability in zip(cases, bodies, probabilities, strict=True):
            old = self.pseudo_masks[case]
            new = np.full(body.shape, np.int8(OUTSIDE), np.int8)
            new[body] = old[0][body] if self.teacher_uncertain == "keep" else ignore
            new[body & (probability >= high)] = self.lesion_label
            new[body & (probability <= low)] = 0
            changed += int((new[body] != old[0][body]).sum())
            ignored += int((new[body] == ignore).sum())
            lesion += int((new[body] == self.lesion_label).sum())
            total += int(body.sum())
            self.pseudo_masks[case] = new[None]
        self.publish_pseudo_masks()
        self._teacher_vitals = {"teacher/changed": changed / max(total, 1), "teacher/ignored": ignored / max(total, 1),
                                "teacher/lesion": lesion / max(total, 1), "teacher/high": float(high),
                                "teacher/low": float(low)}
        self.print_to_log_file(f"Teacher updated {changed} pseudo-mask pixels ({100 * changed / max(total, 1):.2f}% of "
                               f"the body), {100 * ignored / max(total, 1):.2f}% now ignored (uncertain): lesion at "
                               f"probability >= {high:.3f}, background <= {low:.3f} (teacher_confidence "
                               f"{self.teacher_confidence}, teacher_keep_fraction {self.teacher_keep_fraction}, "
                               f"uncertain pixels: {self.teacher_uncertain})")

    def publish_pseudo_masks(self) -> None:
        """Write the pseudo-masks the data loader reads. Under DDP rank 0 writes and the other ranks, once it is done,
        take its masks: every rank computes them, but GPU kernels need not agree to the bit across ranks."""
        if self.local_rank == 0:
            self.pseudo_mask_folder.mkdir(parents=True, exist_ok=True)
            for case, mask in self.pseudo_masks.items():
                save_array(mask, self.pseudo_mask_folder / f"{case}.npy")
        self.wait_for_rank0()
        if self.local_rank != 0:
            self.pseudo_masks = {case: np.load(self.pseudo_mask_folder / f"{case}.npy") for case in self.pseudo_masks}

    @torch.no_grad()
    def update_teacher(self) -> None:
        student, teacher = unwrap(self.network), unwrap(self.aux_modules["teacher"])
        # fused over all tensors: 0.49 ms against the per-parameter loop's 0.76 ms on the weak2d bench U-Net (CPU,
        # bench/results/weak_cycle/refinement_step_breakdown.md)
        torch._foreach_lerp_(list(teacher.parameters()), [p.detach() for p in student.parameters()],
                             1 - self.ema_decay)
        teacher_buffers, student_buffers = list(teacher.buffers()), list(student.buffers())
        if teacher_buffers:
            torch._foreach_copy_(teacher_buffers, student_buffers)

    def consistency_samples(self, keys, batch_size: int) -> torch.Tensor | None:
        """Indices of the batch samples the consistency term covers (None: all of them); a batch without case keys
        (a custom loader) gets all."""
        if self.consistency_on_certain or keys is None:
            return None
        keys = list(keys)
        if len(keys) != batch_size:
            raise ValueError(f"{type(self).__name__}: the batch holds {batch_size} samples but {len(keys)} case keys")
        selected = [i for i, key in enumerate(keys) if key in self.pseudo_masks]
        return None if len(selected) == batch_size else torch.tensor(selected, dtype=torch.long, device=self.device)

    def train_step_refinement(self, batch: dict) -> dict:
        data, target, _ = self.batch_to_device(batch)
        strong, weak = split_views(data, self.num_input_channels)
        index = self.consistency_samples(batch.get("keys"), data.shape[0])
        teacher_logits = None
        if index is None or len(index):
            teacher = self.aux_modules["teacher"]
            teacher.eval()
            with torch.no_grad(), self.autocast():
                teacher_out = teacher(weak if index is None else weak[index])
            teacher_logits = teacher_out[0] if isinstance(teacher_out, list | tuple) else teacher_out
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            output = self.network(strong)
            loss = self.loss(output, target)
            if teacher_logits is not None:
                student_logits = output[0] if isinstance(output, list | tuple) else output
                if index is not None:
                    # a mean over the covered samples, scaled to their share: each keeps the weight it had in a
                    # mean over the whole batch
                    student_logits = student_logits[index]
                share = teacher_logits.shape[0] / data.shape[0]
                loss = loss + self.current_phase.phase.loss_weight("consistency") * share * \
                    teacher_consistency(student_logits, teacher_logits)
        self.optimizer_step(loss, self.optimizer, self.network.parameters())
        self.update_teacher()
        return {"loss": loss.detach().cpu().numpy()}

    # ------------------------------------------------------------------ vital signs
    def _vital_cases(self) -> dict:
        """Up to VITAL_CASES disease and normal training cases and fully labelled validation cases, loaded once."""
        if self._vital_data is None:
            dataset_tr, dataset_val = super().get_tr_and_val_datasets()
            self._vital_data = {"validation": self.validation_cases(dataset_val)[:VITAL_CASES]}
            for kind in ("disease", "normal"):
                self._vital_data[kind] = []
                for case in getattr(self.weak_cases, kind)[:VITAL_CASES]:
                    data, seg = load_case_arrays(dataset_tr, case)
                    self._vital_data[kind].append((data, body_mask(seg, data)))
        return self._vital_data

    def epoch_vital_signs(self) -> dict[str, float]:
        """Translation: attention coverage (share of the body in the pseudo-mask it would give now), mean raw
        attention inside and outside the body and inside the body of normal cases (where nothing needs changing),
        G_AB's CAM accuracy over the epoch's steps, and on the fully labelled validation cases the pseudo-mask Dice of
        attention and CAM and the attention's lesion contrast. Refinement: the share of the body's pseudo-labels the
        teacher's update changed, left ignored and made lesion, and its two thresholds (epochs with an update)."""
        if self.current_phase is None:
            return {}
        if self.current_phase.name == REFINEMENT:
            return dict(self._teacher_vitals)
        generator = self.aux_modules["gen_ab"]
        cases = self._vital_cases()
        threshold = self.global_threshold()
        inside, outside, coverage = [], [], []
        for data, body in cases["disease"]:
            attention = self.generator_maps(generator, data)["attention"]
            inside.append(float(attention[body].mean()))
            if (~body).any():
                outside.append(float(attention[~body].mean()))
            coverage.append(self.binarise(attention * body, body, threshold)[0].sum() / max(int(body.sum()), 1))
        normal = [float(attention[body].mean()) for data, body in cases["normal"] if body.any()
                  for attention in [self.generator_maps(generator, data)["attention"]]]
        values = {"attention/coverage": float(np.mean(coverage)), "attention/inside_body": float(np.mean(inside)),
                  "attention/outside_body": float(np.mean(outside)) if outside else math.nan,
                  "attention/normal_body": float(np.mean(normal)) if normal else math.nan,
                  "cam/accuracy": self._cam_hits / self._cam_total if self._cam_total else math.nan,
                  "translation/nonfinite_share":
                      self._nonfinite_steps / self._translation_steps if self._translation_steps else math.nan}
        scores = {"attention": [], "cam": []}
        contrast = []
        for data, body, reference in cases["validation"]:
            maps = self.generator_maps(generator, data)
            for key in scores:
                scores[key].append(dice(reference, self.binarise(maps[key] * body, body, threshold)[0]))
            contrast.append(lesion_contrast(maps["attention"], body, reference))
        if cases["validation"]:
            values.update({VALIDATION_DICE[source]: float(np.mean(dices)) for source, dices in scores.items()})
            values["attention/lesion_contrast"] = float(np.nanmean(contrast)) if np.isfinite(contrast).any() \
                else math.nan
        return values

    def selection_key(self) -> str:
        """The vital sign that selects G_AB: the validation pseudo-mask Dice of the map the pseudo-masks come from."""
        self.check_settings("pseudo_source")
        return VALIDATION_DICE[self.pseudo_source]

    def after_vital_signs(self, values: dict[str, float]) -> None:
        """Keep G_AB of the translation epoch with the best validation pseudo-mask Dice (the first of equals)."""
        score = values.get(self.selection_key())
        if self.current_phase is None or self.current_phase.name != TRANSLATION or score is None or math.isnan(score):
            return
        self.selected_generator = self.keep_better_generator(self.selected_generator, score)

    def keep_better_generator(self, record: dict | None, score: float) -> dict | None:
        """`record` ({epoch, dice, state}), or a snapshot of G_AB now when `score` beats it (the first of equals)."""
        if record is not None and score <= record["dice"]:
            return record
        state = {k: v.detach().cpu().clone() for k, v in unwrap(self.aux_modules["gen_ab"]).state_dict().items()}
        return {"epoch": self.current_epoch, "dice": float(score), "state": state}

    def use_selected_generator(self) -> None:
        """At the phase switch: G_AB as `generator_selection` says, logged with the last epoch's score beside it."""
        self.check_settings("generator_selection")
        chosen = self.selected_generator
        last = next((row for row in reversed(self.vital_history) if self.selection_key() in row), None)
        if self.generator_selection == "last" or chosen is None or last is None:
            reason = "generator_selection = 'last'" if self.generator_selection == "last" else \
                "no fully labelled validation case to choose on"
            self.print_to_log_file(f"Phase-1 pseudo-masks from the last translation epoch's G_AB ({reason})")
            return
        unwrap(self.aux_modules["gen_ab"]).load_state_dict(chosen["state"])
        self.print_to_log_file(
            f"Phase-1 pseudo-masks from G_AB of translation epoch {chosen['epoch']}: validation pseudo-mask Dice "
            f"{chosen['dice']:.3f} ({self.pseudo_source}; the last epoch, {last['epoch']}: "
            f"{last[self.selection_key()]:.3f})")
        warning = self.other_source_at_switch(chosen)
        if warning:
            self.print_to_log_file(f"WARNING: {warning}")

    def _other_source(self) -> tuple[str, str, str]:
        """The map the pseudo-masks do not come from, its validation vital sign, and the advice that ends both of
        its warnings (the trainer that uses it)."""
        self.check_settings("pseudo_source")
        other = "cam" if self.pseudo_source == "attention" else "attention"
        trainer = (WeakCycleTrainer_CAM if other == "cam" else WeakCycleTrainer).__name__
        advice = f"on this data set pseudo_source = '{other}' ({trainer}) is the better choice"
        return other, VALIDATION_DICE[other], advice

    def other_source_warning(self, translation: list[dict]) -> str | None:
        """After WARN_AFTER_EPOCHS translation epochs, a warning when the other map's pseudo-masks (CAM for the
        attention, attention for the CAM) beat the chosen map's on the validation cases by OTHER_SOURCE_MARGIN over
        the last RECENT_EPOCHS epochs: a choice the user can make on validation, as this is."""
        other, other_key, advice = self._other_source()
        key = self.selection_key()
        recent = [row for row in translation[-RECENT_EPOCHS:] if key in row and other_key in row]
        if len(translation) < WARN_AFTER_EPOCHS or len(recent) < RECENT_EPOCHS:
            return None
        mine, theirs = (float(np.mean([row[k] for row in recent])) for k in (key, other_key))
        if theirs - mine <= OTHER_SOURCE_MARGIN:
            return None
        return (f"on the validation cases the {other} pseudo-masks score {theirs:.3f} against the "
                f"{self.pseudo_source}'s {mine:.3f} (mean of the last {RECENT_EPOCHS} epochs): {advice}")

    def other_source_at_switch(self, chosen: dict) -> str | None:
        """At the phase switch: a warning when the other map's best translation epoch scored more than
        OTHER_SOURCE_MARGIN above the selected G_AB on the validation cases."""
        other, other_key, advice = self._other_source()
        rows = [row for row in self.vital_history if other_key in row and not math.isnan(row[other_key])]
        best = max(rows, key=lambda row: row[other_key], default=None)
        if best is None or best[other_key] - chosen["dice"] <= OTHER_SOURCE_MARGIN:
            return None
        return (f"the {other} map's best translation epoch ({best['epoch']}) scored {best[other_key]:.3f} on the "
                f"validation cases against {chosen['dice']:.3f} for the {self.pseudo_source} of the selected G_AB: "
                f"{advice}")

    def vital_sign_warnings(self, history: list[dict]) -> list[str]:
        last = history[-1] if history else {}
        warnings = []
        nonfinite = last.get("translation/nonfinite_share")
        if nonfinite is not None and nonfinite > 0:
            warnings.append(f"the translation loss was not finite (NaN or inf) in {100 * nonfinite:.0f}% of the "
                            f"epoch's steps: those updates were skipped or broke the weights, and where it is every "
                            f"step the generators do not learn at all (translation_amp {self.translation_amp})")
        coverage = last.get("attention/coverage")
        if coverage is not None and not 0.005 <= coverage <= 0.8:
            warnings.append(f"the attention pseudo-mask covers {100 * coverage:.1f}% of the body: it does not "
                            f"single out lesions")
        inside, outside = last.get("attention/inside_body"), last.get("attention/outside_body")
        if inside is not None and outside is not None and not math.isnan(outside) and inside <= outside:
            warnings.append(f"mean attention inside the body ({inside:.3f}) is not above outside it ({outside:.3f})")
        translation = [row for row in history if "cam/accuracy" in row and not math.isnan(row["cam/accuracy"])]
        contrast = last.get("attention/lesion_contrast")
        if len(translation) >= WARN_AFTER_EPOCHS and contrast is not None and not math.isnan(contrast) \
                and contrast <= 0:
            warnings.append(f"the attention on the validation cases' lesions is not above the rest of their body "
                            f"(lesion contrast {contrast:.2f}): it does not single out lesions")
        # the translation's own warnings while it trains; refinement epochs would repeat its last state
        translating = bool(translation) and translation[-1] is last
        other = self.other_source_warning(translation) if translating else None
        if other:
            warnings.append(other)
        if translating and len(translation) >= WARN_AFTER_EPOCHS and \
                max(row["cam/accuracy"] for row in translation[-RECENT_EPOCHS:]) <= 0.6:
            warnings.append(f"G_AB's CAM classifier is at chance after {len(translation)} epochs "
                            f"(accuracy {translation[-1]['cam/accuracy']:.2f}): no class signal for the attention")
        ignored = last.get("teacher/ignored")
        if ignored is not None and ignored > 0.5:
            warnings.append(f"the teacher left {100 * ignored:.0f}% of the disease cases' body ignored: few "
                            f"confident pixels (teacher_confidence {self.teacher_confidence})")
        lesion = last.get("teacher/lesion")
        if lesion is not None and lesion < 1e-3:
            warnings.append(f"the teacher's update left {100 * lesion:.2f}% of the disease cases' body lesion: the "
                            f"student has collapsed to background and learns no lesion from here on")
        updates = [row["teacher/lesion"] for row in history if "teacher/lesion" in row]
        if lesion is not None and len(updates) >= 3 and 1e-3 <= lesion < updates[0] * SHRINK_WARNING:
            # on the distractor phantom 15 updates took the lesion share from 14.5 % to 3.0 % of the body (about
            # 7.5 % is lesion) and the student's sensitivity to 6 %: self-training erodes the lesions update by update
            warnings.append(f"the pseudo-labels are shrinking: the teacher's updates took the lesion share of the "
                            f"disease cases' body from {100 * updates[0]:.1f}% to {100 * lesion:.1f}% in "
                            f"{len(updates)} updates (pseudo_update_every {self.pseudo_update_every})")
        return warnings


class WeakCycleTrainer_CAM(WeakCycleTrainer):
    """CAM-only baseline: the same run, pseudo-masks from G_AB's class activation map (normalised to [0, 1] per
    image) instead of its attention mask."""

    pseudo_source = "cam"


class WeakCycleTrainer_ISIC(WeakCycleTrainer):
    """The original's ISIC loss weights (cycle 5, identity 50, CAM 1400)."""

    cycle_loss_weights = ISIC_LOSS_WEIGHTS


class WeakCycleTrainer_noComposite(WeakCycleTrainer):
    """Ablation: without the adversarial term on the composited image, the one loss that reaches the attention
    directly (the attention then learns only through the stream blend)."""

    cycle_loss_weights = {**CYCLE_LOSS_WEIGHTS, "adversarial_composite": 0.0}


WeakCycleTrainer_debug = short_variant(WeakCycleTrainer, "WeakCycleTrainer_debug", **DEBUG_BUDGET)
WeakCycleTrainer_demo = short_variant(WeakCycleTrainer, "WeakCycleTrainer_demo", **DEMO_BUDGET)
WeakCycleTrainer_CAM_debug = short_variant(WeakCycleTrainer_CAM, "WeakCycleTrainer_CAM_debug", **DEBUG_BUDGET)
WeakCycleTrainer_CAM_demo = short_variant(WeakCycleTrainer_CAM, "WeakCycleTrainer_CAM_demo", **DEMO_BUDGET)
