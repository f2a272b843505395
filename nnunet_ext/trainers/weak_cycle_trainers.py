"""Lesion segmentation from image-level labels (Du et al. 2024, consistency label transfer) as nnU-Net trainers.

    nnUNetv2_train 741 2d 0 -tr WeakCycleTrainer -device cpu
    nnUNetv2_predict -i IN -o OUT -d 741 -c 2d -f 0 -tr WeakCycleTrainer -device cpu

The data set follows the weak-label convention (docs/conversion.md, "Weak labels"): disease cases all ignore label,
normal cases all 0, optionally fully labelled validation cases (fold 0 of splits_final.json). One training run has
two phases:
1. "translation": light U-GAT-IT generators disease->normal (G_AB) and normal->disease (G_BA) with global and local
   discriminators, on nnU-Net's augmented patches (disease and normal cases sampled equally). At its end the
   attention mask of G_AB on every disease training case, restricted to the non-zero image region and thresholded
   (threshold with the best mean Dice on fully labelled validation cases when there are any, else Otsu), becomes
   the case's pseudo-mask.
2. "refinement": the plans' nnU-Net network (the student, the one nnU-Net saves and predicts with) trains on the
   pseudo-masks (disease) and all-background maps (normal) from strongly augmented inputs (nnU-Net's augmentation
   plus intensity noise/contrast/brightness), plus a consistency term towards an EMA teacher that sees the weakly
   augmented batch; every `pseudo_update_every` epochs confident teacher predictions rewrite the pseudo-masks.
Generators, discriminators, teacher, their optimizers and the pseudo-masks are in the checkpoint: `--c` resumes in
either phase. Selection (threshold, nnU-Net's best checkpoint) uses validation cases only, never the test set.

`WeakCycleTrainer_CAM` is the CAM-only baseline: pseudo-masks from G_AB's class activation map instead of its
attention mask. Environment variable nnUNet_ext_weak_export=ID exports the phase-1 pseudo-masks as a labelled raw
data set DatasetID_<name>Pseudo (any trainer can then train on it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from nnunetv2.paths import nnUNet_raw
from scipy import ndimage
from torch import nn

from nnunet_ext.methods.weak_cycle.data import (
    PseudoLabelDataset,
    WeakCases,
    WeakLabelError,
    balanced_identifiers,
    best_threshold,
    case_kind,
    classify_cases,
    export_pseudo_dataset,
    foreground_mask,
    load_image,
    load_seg,
    otsu_threshold,
    save_array,
)
from nnunet_ext.methods.weak_cycle.loss import (
    CYCLE_LOSS_WEIGHTS,
    cycle_generator_losses,
    discriminator_loss,
    teacher_consistency,
    weighted_sum,
)
from nnunet_ext.methods.weak_cycle.network import (
    WeakCycleDiscriminator,
    WeakCycleGenerator,
    discriminator_depths,
    generator_downsamplings,
    pad_to_multiple,
)
from nnunet_ext.training.base import env_int, nnUNetExtTrainer, unwrap
from nnunet_ext.training.phases import NETWORK, Phase, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["WeakCycleTrainer", "WeakCycleTrainer_CAM", "WeakCycleTrainer_debug", "WeakCycleTrainer_demo",
           "WeakCycleTrainer_CAM_debug", "WeakCycleTrainer_CAM_demo"]

EXPORT_ENV = "nnUNet_ext_weak_export"
GENERATORS = ("gen_ab", "gen_ba")
DISCRIMINATORS = ("disc_global_a", "disc_local_a", "disc_global_b", "disc_local_b")
TRANSLATION, REFINEMENT = "translation", "refinement"


class WeakCycleTrainer(nnUNetExtTrainer):
    # `nnunet_ext demo --trainer WeakCycleTrainer`: the weak-label phantom; no Dice floor set (docs/weak_cycle.md)
    demo_phantom = "weak2d"
    demo_dice_floor = None
    # where the pseudo-masks come from: "attention" (the method) or "cam" (the CAM-only baseline)
    pseudo_source = "attention"
    translation_fraction = 0.5  # share of the epochs spent on phase 1
    generator_features = 32
    generator_blocks = 4
    discriminator_features = 32
    translation_lr = 1e-4  # Adam, betas (0.5, 0.999), as the original
    cycle_loss_weights = CYCLE_LOSS_WEIGHTS
    ema_decay = 0.99
    consistency_weight = 1.0
    teacher_confidence = 0.9  # a teacher probability beyond this (or below 1 - this) rewrites a pseudo-mask pixel
    pseudo_update_every = 5  # epochs of refinement between pseudo-mask updates; 0: never
    strong_noise_std = 0.1
    strong_contrast = 0.25
    strong_brightness = 0.2

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

    def build_phase_schedule(self) -> PhaseSchedule:
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
        n_down = generator_downsamplings(patch)
        global_depth, local_depth = discriminator_depths(patch)
        modules = {name: WeakCycleGenerator(channels, dim, self.generator_features, n_down, self.generator_blocks)
                   for name in GENERATORS}
        for domain in ("a", "b"):
            modules[f"disc_global_{domain}"] = WeakCycleDiscriminator(channels, dim, self.discriminator_features,
                                                                      global_depth)
            modules[f"disc_local_{domain}"] = WeakCycleDiscriminator(channels, dim, self.discriminator_features,
                                                                     local_depth)
        teacher = self.build_network_architecture(self.plans_manager, self.configuration_manager, channels,
                                                  self.label_manager.num_segmentation_heads,
                                                  self.enable_deep_supervision)
        teacher.load_state_dict(unwrap(self.network).state_dict())
        modules["teacher"] = teacher
        return modules

    def configure_aux_optimizers(self):
        return {name: (torch.optim.Adam(self.aux_modules[name].parameters(), lr=self.translation_lr,
                                        betas=(0.5, 0.999), weight_decay=1e-4), None)
                for name in GENERATORS + DISCRIMINATORS}

    def extra_checkpoint_state(self) -> dict:
        return {"pseudo_masks": self.pseudo_masks, "threshold": self.pseudo_threshold,
                "teacher_ready": self.teacher_ready}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        self.pseudo_masks = dict(state["pseudo_masks"])
        self.pseudo_threshold = state["threshold"]
        self.teacher_ready = state["teacher_ready"]

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
            disease.append(batch["data"][is_disease])
            normal.append(batch["data"][is_normal])
            n = min(sum(len(d) for d in disease), sum(len(x) for x in normal))
            if n >= max(1, self.batch_size // 2):
                break
        if n == 0:
            raise RuntimeError(f"{self.__class__.__name__}: 50 batches held no disease/normal pair; check the weak "
                               f"labels of {self.plans_manager.dataset_name}")
        return torch.cat(disease)[:n].to(self.device), torch.cat(normal)[:n].to(self.device)

    # ------------------------------------------------------------------ phase 1: cycle translation
    def train_step_translation(self, batch: dict) -> dict:
        disease, normal = self._translation_batch(batch)
        m = self.aux_modules
        d_a, d_b = (m["disc_global_a"], m["disc_local_a"]), (m["disc_global_b"], m["disc_local_b"])
        with self.autocast():
            losses, translations = cycle_generator_losses(m["gen_ab"], m["gen_ba"], d_a, d_b, disease, normal)
            generator_loss = weighted_sum(losses, self.current_phase.phase.losses)
        for name in GENERATORS:
            self.aux_optimizers[name].zero_grad(set_to_none=True)
        self.optimizer_step(generator_loss, [self.aux_optimizers[n] for n in GENERATORS],
                            [p for n in GENERATORS for p in m[n].parameters()])

        ab, ba = translations["ab"], translations["ba"]
        with self.autocast():
            disc_loss = discriminator_loss(d_a, disease, (ba["translated"], ba["composite"])) + \
                discriminator_loss(d_b, normal, (ab["translated"], ab["composite"]))
        for name in DISCRIMINATORS:  # also drops what the generator step left in their grads
            self.aux_optimizers[name].zero_grad(set_to_none=True)
        self.optimizer_step(disc_loss, [self.aux_optimizers[n] for n in DISCRIMINATORS],
                            [p for n in DISCRIMINATORS for p in m[n].parameters()])
        return {"loss": (generator_loss + disc_loss).detach().cpu().numpy()}

    @torch.no_grad()
    def lesion_probability(self, generator: nn.Module, data: np.ndarray) -> np.ndarray:
        """G_AB's attention (or normalised CAM) on one preprocessed case (C x spatial), zero outside the foreground;
        2D configurations run slice by slice."""
        generator = unwrap(generator)  # under DDP a wrapper, which lacks the module's attributes (n_down)
        generator.eval()
        x = torch.from_numpy(data).to(self.device)
        x = x.permute(1, 0, 2, 3) if self.spatial_dims == 2 else x[None]  # 2D: slices as the batch
        multiple = (2 ** generator.n_down,) * self.spatial_dims
        maps = []
        for start in range(0, x.shape[0], 8):
            padded, crop = pad_to_multiple(x[start:start + 8], multiple)
            out = generator(padded)
            if self.pseudo_source == "attention":
                maps.append(out["mask"][crop])
            elif self.pseudo_source == "cam":
                cam = torch.relu(out["cam_map"][crop])
                maps.append(cam / cam.flatten(1).amax(1).clamp_min(1e-8).view(-1, *(1,) * (cam.ndim - 1)))
            else:
                raise ValueError(f"{self.__class__.__name__}.pseudo_source must be 'attention' or 'cam', got "
                                 f"{self.pseudo_source!r}")
        probability = torch.cat(maps)
        probability = probability.permute(1, 0, 2, 3) if self.spatial_dims == 2 else probability[0]
        return probability.float().cpu().numpy()[0] * foreground_mask(data)

    def choose_threshold(self, disease_probabilities: list[np.ndarray], dataset_val) -> dict:
        """Best mean Dice on fully labelled validation cases, else Otsu on the disease cases' foreground."""
        generator = self.aux_modules["gen_ab"]
        probabilities, references = [], []
        for case in dataset_val.identifiers:
            seg = load_seg(dataset_val, case)
            if case_kind(seg, self.label_manager.ignore_label) != "full":
                continue
            data = load_image(dataset_val, case)
            probabilities.append(self.lesion_probability(generator, data))
            references.append(seg[0] == self.lesion_label)
        if probabilities:
            threshold, score = best_threshold(probabilities, references)
            return {"threshold": threshold, "source": f"validation ({len(probabilities)} fully labelled cases)",
                    "validation_dice": score}
        values = np.concatenate([p[p > 0] for p in disease_probabilities])
        return {"threshold": otsu_threshold(values), "source": "Otsu (no fully labelled validation case)"}

    def make_pseudo_masks(self) -> None:
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        generator = self.aux_modules["gen_ab"]
        probabilities = {case: self.lesion_probability(generator, load_image(dataset_tr, case))
                         for case in self.weak_cases.disease}
        self.pseudo_threshold = self.choose_threshold(list(probabilities.values()), dataset_val)
        t = self.pseudo_threshold["threshold"]
        self.pseudo_masks = {case: (p >= t).astype(np.int8)[None] for case, p in probabilities.items()}
        fraction = np.mean([m.mean() for m in self.pseudo_masks.values()])
        self.print_to_log_file(f"Phase-1 pseudo-masks ({self.pseudo_source}) of {len(self.pseudo_masks)} disease "
                               f"cases: threshold {t:.2f} from {self.pseudo_threshold['source']}; mean lesion "
                               f"fraction {fraction:.3f}")
        self.write_phase1_masks(dataset_tr)

    def raw_geometry(self, mask: np.ndarray, properties: dict) -> np.ndarray:
        """A preprocessed-space mask (1 x spatial) back onto the raw image grid (uncropped, resampled nearest)."""
        seg = mask[0]
        shape = tuple(properties["shape_after_cropping_and_before_resampling"])
        if seg.shape != shape:
            seg = ndimage.zoom(seg, [a / b for a, b in zip(shape, seg.shape, strict=True)], order=0)
        full = np.zeros(properties["shape_before_cropping"], np.uint8)
        full[tuple(slice(a, b) for a, b in properties["bbox_used_for_cropping"])] = seg
        return full

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
            self.make_pseudo_masks()
        self.publish_pseudo_masks()
        if not self.teacher_ready:
            # the teacher starts where the student starts
            unwrap(self.aux_modules["teacher"]).load_state_dict(unwrap(self.network).state_dict())
            self.teacher_ready = True

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        phase = self.current_phase
        since = self.current_epoch - phase.start
        if phase.name == REFINEMENT and self.pseudo_update_every and since > 0 and \
                since % self.pseudo_update_every == 0:
            self.update_pseudo_masks_from_teacher()

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
        dataset_tr, _ = super().get_tr_and_val_datasets()
        high, low = self.teacher_confidence, 1 - self.teacher_confidence
        changed = total = 0
        for case, mask in self.pseudo_masks.items():
            data = load_image(dataset_tr, case)
            probability = self.teacher_probability(data) * foreground_mask(data)
            new = mask[0].copy()
            new[probability >= high] = 1
            new[probability <= low] = 0
            changed += int((new != mask[0]).sum())
            total += new.size
            self.pseudo_masks[case] = new[None]
        self.publish_pseudo_masks()
        self.print_to_log_file(f"Teacher updated {changed} pseudo-mask pixels ({100 * changed / max(total, 1):.2f}%)"
                               f" at confidence {self.teacher_confidence}")

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

    def strong_augment(self, data: torch.Tensor) -> torch.Tensor:
        """Intensity perturbations on top of nnU-Net's augmentation: geometry unchanged, so the weakly augmented
        batch, its targets and the teacher's view stay aligned."""
        shape = (data.shape[0],) + (1,) * (data.ndim - 1)
        dims = tuple(range(1, data.ndim))
        mean = data.mean(dims, keepdim=True)
        contrast = 1 + (torch.rand(shape, device=data.device) * 2 - 1) * self.strong_contrast
        brightness = (torch.rand(shape, device=data.device) * 2 - 1) * self.strong_brightness
        noise = torch.randn_like(data) * torch.rand(shape, device=data.device) * self.strong_noise_std
        return (data - mean) * contrast + mean + brightness + noise

    @torch.no_grad()
    def update_teacher(self) -> None:
        student, teacher = unwrap(self.network), unwrap(self.aux_modules["teacher"])
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(self.ema_decay).add_(s.detach(), alpha=1 - self.ema_decay)
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    def train_step_refinement(self, batch: dict) -> dict:
        data, target, _ = self.batch_to_device(batch)
        teacher = self.aux_modules["teacher"]
        teacher.eval()
        with torch.no_grad(), self.autocast():
            teacher_out = teacher(data)
        teacher_logits = teacher_out[0] if isinstance(teacher_out, list | tuple) else teacher_out
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            output = self.network(self.strong_augment(data))
            student_logits = output[0] if isinstance(output, list | tuple) else output
            loss = self.loss(output, target) + self.current_phase.phase.loss_weight("consistency") * \
                teacher_consistency(student_logits, teacher_logits)
        self.optimizer_step(loss, self.optimizer, self.network.parameters())
        self.update_teacher()
        return {"loss": loss.detach().cpu().numpy()}


class WeakCycleTrainer_CAM(WeakCycleTrainer):
    """CAM-only baseline: the same run, pseudo-masks from G_AB's class activation map (normalised to [0, 1] per
    image) instead of its attention mask."""

    pseudo_source = "cam"


WeakCycleTrainer_debug = short_variant(WeakCycleTrainer, "WeakCycleTrainer_debug", **DEBUG_BUDGET)
WeakCycleTrainer_demo = short_variant(WeakCycleTrainer, "WeakCycleTrainer_demo", **DEMO_BUDGET)
WeakCycleTrainer_CAM_debug = short_variant(WeakCycleTrainer_CAM, "WeakCycleTrainer_CAM_debug", **DEBUG_BUDGET)
WeakCycleTrainer_CAM_demo = short_variant(WeakCycleTrainer_CAM, "WeakCycleTrainer_CAM_demo", **DEMO_BUDGET)
