"""FreeTumor (Wu et al., Nat. Commun. 2025): tumour synthesis with quality control inside nnU-Net training.

    nnUNetv2_train 754 3d_fullres 0 -tr FreeTumorTrainer
    nnUNetv2_train 754 3d_fullres 0 -tr FreeTumorSynthesisTrainer          # optional: learn the tumour appearance
    nnUNet_ext_freetumor_generator=.../checkpoint_final.pth nnUNetv2_train 754 3d_fullres 0 -tr FreeTumorTrainer

FreeTumorTrainer: each patch that holds an organ but no real tumour gets one synthetic tumour with probability
synthesis_probability (shape in mm from the plans' spacing, capped at half the organ; texture; a contrast measured
from the training set's real tumours, else 40-150 HU through the plans' CT normalisation, or a generator's map).
Where it runs: in the augmentation workers, before the intensity augmentations, when nothing needs a network; in the
train step, on the batch, when quality control or a generator does. Quality control (FreeTumor's): a frozen
baseline segmentor must label more than qc_threshold (70%) of a synthetic tumour's voxels as tumour (any tumour
class), else the original patch trains. The judge is the checkpoint in nnUNet_ext_freetumor_baseline (or the
generator checkpoint's segmentor); else, when enough training cases hold real tumours, this network frozen after a
first phase trained on the real tumours only; else QC is off, and the log says why (a judge that has never seen a
tumour rejects every synthetic one, measured). Every epoch logs and plots (freetumor_progress.png) the vital signs:
eligible patches, synthesised tumours, QC acceptance, kept tumours by size, inserted contrast, and the share and
contrast of tumours in the batches the network actually sees.

FreeTumorSynthesisTrainer: first trains the segmentation network on the real data (the baseline; skipped when
nnUNet_ext_freetumor_baseline gives one), then freezes it and trains the generator (a small U-Net, one difference
channel per organ) against a 3-class discriminator (healthy / real tumour / synthetic tumour) and the frozen
segmentor, with FreeTumor's losses. Its checkpoint is what nnUNet_ext_freetumor_generator points at.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join, load_pickle
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ext.methods.freetumor.appearance import OrganStats, channel_frames, compose, measure_stats
from nnunet_ext.methods.freetumor.labels import describe_pairs, organ_tumour_pairs
from nnunet_ext.methods.freetumor.loss import discriminator_loss, generator_loss
from nnunet_ext.methods.freetumor.network import TumourDiscriminator, TumourGenerator, load_generator, network_config
from nnunet_ext.methods.freetumor.quality import (
    QC_THRESHOLD,
    accept,
    ema_copy,
    load_baseline,
    logits_of,
    tumour_fractions,
    update_ema,
)
from nnunet_ext.methods.freetumor.shape import SIZE_CLASSES_MM
from nnunet_ext.methods.freetumor.synthesize import MAX_ORGAN_SHARE, TumourSynthesizer
from nnunet_ext.methods.freetumor.transform import TumourSynthesisTransform
from nnunet_ext.training.base import nnUNetExtTrainer, unwrap
from nnunet_ext.training.phases import Phase, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["FreeTumorTrainer", "FreeTumorTrainer_debug", "FreeTumorTrainer_demo", "FreeTumorSynthesisTrainer",
           "FreeTumorSynthesisTrainer_debug", "FreeTumorSynthesisTrainer_demo", "BASELINE_ENV", "GENERATOR_ENV"]

BASELINE_ENV = "nnUNet_ext_freetumor_baseline"
GENERATOR_ENV = "nnUNet_ext_freetumor_generator"


def _env_path(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


class _FreeTumorBase(nnUNetExtTrainer):
    """Label pairs, intensity statistics, the synthesizer and its random stream, shared by both trainers."""

    # {organ label: tumour label}; None: the abdomen scheme (1->2, 3->4, 5->6), the chest scheme (1->2), else each
    # odd label's tumour is the next label. Checked against dataset.json when the trainer is built.
    organ_tumour_labels: dict[int, int] | None = None
    size_probabilities: dict[str, float] | None = None  # tumour size classes; None: shape.DEFAULT_SIZE_PROBABILITIES
    texture_amplitude = 0.3  # relative amplitude of the tumour's smooth texture
    # organ minus tumour in HU where no real tumour was measured (drawn per tumour; negative: hyperdense tumours),
    # converted with the plans' CT normalisation; FreeTumor's procedural range
    procedural_contrast_hu: tuple[float, float] = (40.0, 150.0)
    max_organ_share = MAX_ORGAN_SHARE  # the largest share of the organ's voxels in a patch one tumour may take
    stats_max_cases = 50  # training cases read to measure the tumour-vs-organ intensity statistics

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pairs = organ_tumour_pairs(dataset_json, self.organ_tumour_labels, self.plans_manager.dataset_name)
        self.organs = sorted(self.pairs)  # generator channel k belongs to organ self.organs[k]
        self.baseline_checkpoint = _env_path(BASELINE_ENV)
        self.intensity_stats: dict[int, OrganStats] | None = None
        self.synthesizer: TumourSynthesizer | None = None
        self.frames = None
        self.synthesis_rng: np.random.Generator | None = None
        self._rng_to_restore: dict | None = None

    @classmethod
    def check_dataset(cls, plans_manager, configuration_manager, label_manager, dataset_json: dict,
                      configuration: str) -> None:
        dataset = plans_manager.dataset_name
        if label_manager.has_regions:
            raise ValueError(f"{dataset} uses region-based labels; {cls.__name__} needs class labels (organ and "
                             f"tumour as separate values)")
        organ_tumour_pairs(dataset_json, cls.organ_tumour_labels, dataset)  # no organ to synthesise in: refused

    def initialize(self):
        # again from the setting as training starts (it may have been set on the instance after __init__); the
        # generator's channels follow self.organs
        self.pairs = organ_tumour_pairs(self.dataset_json, self.organ_tumour_labels, self.plans_manager.dataset_name)
        self.organs = sorted(self.pairs)
        super().initialize()
        seed = None if self.seed is None else [self.seed, self.local_rank, 9]
        self.synthesis_rng = np.random.default_rng(seed)
        self.print_to_log_file(f"FreeTumor organ -> tumour labels: {describe_pairs(self.pairs, self.dataset_json)}")

    def measure_intensity_stats(self) -> dict[int, OrganStats]:
        """Tumour-vs-organ statistics over (up to stats_max_cases of) the training cases, normalised intensities."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(tr_keys)[:self.stats_max_cases],
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)

        def cases():
            for key in dataset.identifiers:
                data, seg = dataset.load_case(key)[:2]
                yield np.asarray(data), np.asarray(seg)

        return measure_stats(cases(), self.pairs)

    def get_dataloaders(self):
        # nnU-Net's on_train_start builds the loaders: the synthesizer is ready from there on, and the augmentation
        # workers may get it
        self.prepare_synthesis()
        return super().get_dataloaders()

    def prepare_synthesis(self) -> None:
        """Measure the statistics (unless a checkpoint brought them) and build the synthesizer (once)."""
        if self.synthesizer is not None:
            return
        if self.intensity_stats is None:
            self.intensity_stats = self.measure_intensity_stats()
        self.frames = channel_frames(self.plans_manager.plans, self.configuration_manager.normalization_schemes)
        low, high = self.procedural_contrast_hu
        for organ in self.organs:
            s = self.intensity_stats.get(organ)
            default = ", ".join(f"{low / f.std:.3g}-{high / f.std:.3g} (HU {low:g}-{high:g} / {f.std:.3g})" if f.ct
                                else "organ std x 1.5-6" for f in self.frames)
            what = "not in the training cases" if s is None else (
                f"organ mean {np.round(s.organ_mean, 3).tolist()} std {np.round(s.organ_std, 3).tolist()}, "
                + (f"{s.n_tumour} real tumour voxels, measured difference {np.round(s.difference(), 3).tolist()}"
                   if s.measured else f"too few real tumour voxels ({s.n_tumour})"))
            source = "measured" if s is not None and s.measured else f"default {default}"
            self.print_to_log_file(f"FreeTumor intensity statistics, label {organ}: {what}; tumour contrast: {source}")
        self.synthesizer = TumourSynthesizer(self.pairs, self.configuration_manager.spacing, self.intensity_stats,
                                             self.size_probabilities, self.texture_amplitude, frames=self.frames,
                                             contrast_hu=tuple(self.procedural_contrast_hu),
                                             max_organ_share=self.max_organ_share)
        if self._rng_to_restore is not None:
            self.synthesis_rng.bit_generator.state = self._rng_to_restore
            self._rng_to_restore = None

    def extra_checkpoint_state(self) -> dict:
        return {"intensity_stats": None if self.intensity_stats is None else
                {int(k): v.to_dict() for k, v in self.intensity_stats.items()},
                "synthesis_rng": None if self.synthesis_rng is None else self.synthesis_rng.bit_generator.state}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        if state.get("intensity_stats") is not None:
            self.intensity_stats = {int(k): OrganStats.from_dict(v) for k, v in state["intensity_stats"].items()}
        self._rng_to_restore = state.get("synthesis_rng")

    # ------------------------------------------------------------------ synthesis on a batch
    def draw_tumours(self, data: torch.Tensor, full_target: torch.Tensor, probability: float) -> list[dict]:
        """Per chosen sample: index, organ, tumour label, shape and texture (numpy). Patches with organ and no real
        tumour are chosen with the given probability."""
        seg = full_target[:, 0].detach().cpu().numpy()
        images = data.detach().cpu().numpy()
        drawn = []
        for b in range(seg.shape[0]):
            organs = self.synthesizer.eligible_organs(seg[b])
            if not organs:
                continue
            self.synthesis_counts["eligible"] += 1
            if self.synthesis_rng.random() >= probability:
                continue
            organ = organs[int(self.synthesis_rng.integers(len(organs)))]
            sampled = self.synthesizer.sample(seg[b], organ, self.synthesis_rng)
            if sampled is None:
                continue
            shape, tex = sampled
            mask, soft = shape.paste(seg[b].shape)
            full_tex = np.ones(seg[b].shape, np.float32)
            full_tex[shape.box] = tex
            drawn.append({"index": b, "organ": organ, "tumour": self.pairs[organ], "mask": mask, "soft": soft,
                          "texture": full_tex, "size_class": shape.size_class,
                          "difference": self.synthesizer.difference(organ, images[b], seg[b], self.synthesis_rng)})
        return drawn

    def sum_over_ranks(self, counts: Counter) -> Counter:
        """Counts (or sums) of every rank's patches, for the log and the checkpoint's history that rank 0 writes."""
        if not self.is_ddp:
            return counts
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, dict(counts))
        total = Counter()
        for g in gathered:
            total.update(g)  # update, unlike +, keeps negative sums
        return total

    def _stack(self, drawn: list[dict], key: str, dtype=torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.stack([d[key] for d in drawn]))[:, None].to(self.device, dtype)


QC_MODES = ("auto", "checkpoint", "baseline", "ema", "off")
# vital-sign warnings: judge acceptance under WARN_ACCEPTANCE, or tumour contrast-to-noise against the organ under
# WARN_CNR, or no tumour in any training patch, for WARN_EPOCHS epochs in a row
WARN_ACCEPTANCE, WARN_CNR, WARN_EPOCHS = 0.05, 1.0, 3
LOCATIONS = ("auto", "step", "workers")


class FreeTumorTrainer(_FreeTumorBase):
    # `nnunet_ext demo --trainer FreeTumorTrainer` runs FreeTumorTrainer_demo on the abdomen3d phantom; no Dice floor:
    # the demo budget learns the organs but misses the tumours (measured, docs/freetumor.md)
    demo_phantom = "abdomen3d"
    demo_dice_floor = None
    progress_plot = "freetumor_progress.png"
    synthesis_probability = 0.5  # chance that an eligible patch (organ, no real tumour) gets a synthetic tumour
    # "workers": a transform in nnU-Net's augmentation workers, before the intensity augmentations; "step": on the
    # batch in the train step (what quality control and a generator need); "auto": workers unless one of those needs
    # the step
    synthesis_location = "auto"
    # who judges synthetic tumours: "checkpoint" (nnUNet_ext_freetumor_baseline, or the generator checkpoint's
    # segmentor), "baseline" (this network, frozen after qc_baseline_fraction of the epochs trained on the real
    # tumours without synthesis), "ema" (a moving average of this network, after qc_warmup), "off"; "auto": the
    # checkpoint when one is given, else "baseline" when at least qc_min_tumour_cases training cases hold a real
    # tumour, else "off" (a judge that has seen almost no tumour rejects every synthetic one: measured)
    quality_control = "auto"
    setting_choices = {"synthesis_location": LOCATIONS, "quality_control": QC_MODES}
    qc_threshold = QC_THRESHOLD  # share of a synthetic tumour's voxels the judge must call tumour to keep it
    qc_min_tumour_cases = 10
    qc_baseline_fraction: int | float = 0.25  # "baseline": epochs (float: share of num_epochs) before the freeze
    # a tumour the judge rejects still trains with this probability: a judge that rejects everything (a weak
    # baseline, an early EMA) must not silently turn the run into stock nnU-Net; the warning says when it happens
    qc_acceptance_floor = 0.05
    # "ema" only: judging starts after this many epochs (a float: fraction of num_epochs), before that synthetic
    # tumours are kept unchecked
    qc_warmup: int | float = 0.25
    ema_decay = 0.99

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.generator_checkpoint = _env_path(GENERATOR_ENV)
        self.qc_mode: str | None = None
        self.qc_reason = ""
        self.location: str | None = None
        self.judge_frozen_at: int | None = None
        self.baseline: nn.Module | None = None
        self.generator: TumourGenerator | None = None
        self.difference_scale: float | None = None
        self.synthesis_counts: Counter = Counter()
        self.synthesis_history: list[dict] = []

    # ------------------------------------------------------------------ set-up
    def count_tumour_cases(self) -> int:
        """Training cases (of this fold) holding a real tumour, from nnU-Net's per-case class locations."""
        tr_keys, _ = self.do_split()
        tumours = set(self.pairs.values())
        n = 0
        for key in tr_keys:
            locations = load_pickle(join(self.preprocessed_dataset_folder, f"{key}.pkl")).get("class_locations", {})
            n += any(len(locations.get(t, ())) > 0 for t in tumours)
        return n

    def resolve_quality_control(self) -> tuple[str, str]:
        mode = self.quality_control
        checkpoint = self.baseline_checkpoint or self.generator_checkpoint
        if mode in ("auto", "checkpoint") and checkpoint:
            return "checkpoint", f"judge {BASELINE_ENV if self.baseline_checkpoint else GENERATOR_ENV}={checkpoint}"
        if mode == "checkpoint":
            raise ValueError(f"{self.__class__.__name__}.quality_control = 'checkpoint' needs {BASELINE_ENV} (or "
                             f"{GENERATOR_ENV}) set to a checkpoint of a model trained on this data set")
        if mode in ("auto", "baseline"):
            n = self.count_tumour_cases()
            if mode == "baseline" and n == 0:
                raise ValueError(f"{self.__class__.__name__}.quality_control = 'baseline': no training case of "
                                 f"{self.plans_manager.dataset_name} fold {self.fold} holds a real tumour to train the "
                                 f"baseline on; use 'off' or a baseline checkpoint ({BASELINE_ENV})")
            if mode == "baseline" or n >= self.qc_min_tumour_cases:
                return "baseline", (f"judge: this network frozen after the first {self.qc_baseline_fraction} epochs "
                                    f"(trained on the {n} training cases with real tumours)")
            return "off", (f"off: only {n} training cases hold a real tumour (qc_min_tumour_cases "
                           f"{self.qc_min_tumour_cases}), too few for a baseline that can see a tumour, and no "
                           f"{BASELINE_ENV} is set; every synthetic tumour trains")
        if mode == "ema":
            return "ema", f"judge: EMA of this network (decay {self.ema_decay}) from epoch {self.qc_warmup_epochs()}"
        return "off", "off (quality_control = 'off')"

    def resolve_location(self) -> str:
        location = self.synthesis_location
        needs_step = self.qc_mode != "off" or self.generator_checkpoint is not None
        if location == "workers" and needs_step:
            raise ValueError(f"{self.__class__.__name__}.synthesis_location = 'workers' cannot run "
                             f"{'quality control' if self.qc_mode != 'off' else 'a generator'} (a network, in the "
                             f"train step); set quality_control = 'off' or synthesis_location = 'step'")
        if location == "auto":
            return "step" if needs_step else "workers"
        return location

    def initialize(self):
        # the base checks too, but the resolutions below read quality_control and synthesis_location first, and rely
        # on them being among their choices
        self.check_settings()
        # before the base builds the phase schedule and the auxiliary modules, which follow the judge
        self.pairs = organ_tumour_pairs(self.dataset_json, self.organ_tumour_labels, self.plans_manager.dataset_name)
        self.qc_mode, self.qc_reason = self.resolve_quality_control()
        self.location = self.resolve_location()
        super().initialize()
        if self.generator_checkpoint:
            self.generator, self.difference_scale, organs = load_generator(
                self.generator_checkpoint, self.dataset_json, self.device, f"{GENERATOR_ENV}")
            if organs != self.organs:
                raise ValueError(f"{GENERATOR_ENV}={self.generator_checkpoint}: the generator's channels belong to "
                                 f"organs {organs}, this trainer's organs are {self.organs}")
        if self.qc_mode == "checkpoint":
            baseline = self.baseline_checkpoint or self.generator_checkpoint
            setting = BASELINE_ENV if self.baseline_checkpoint else GENERATOR_ENV
            self.baseline = load_baseline(baseline, self.dataset_json, self.device, setting)
        self.print_to_log_file(
            f"FreeTumor: synthesis probability {self.synthesis_probability} in the "
            f"{'augmentation workers' if self.location == 'workers' else 'train step'}, appearance from "
            f"{'generator ' + self.generator_checkpoint if self.generator else 'intensity statistics'}; quality "
            f"control {self.qc_reason}; threshold {self.qc_threshold}, acceptance floor {self.qc_acceptance_floor}")

    def build_phase_schedule(self) -> PhaseSchedule | None:
        if self.qc_mode != "baseline":
            return None
        return PhaseSchedule([Phase("baseline", self.qc_baseline_fraction), Phase("synthesis", None)])

    def build_aux_modules(self) -> dict[str, nn.Module]:
        if self.qc_mode == "ema":
            return {"ema": ema_copy(unwrap(self.network))}
        if self.qc_mode == "baseline":
            return {"judge": ema_copy(unwrap(self.network))}
        return {}

    def on_phase_start(self, phase) -> None:
        # a resumed run keeps the judge its checkpoint froze
        if phase.phase.name == "synthesis" and self.judge_frozen_at is None:
            unwrap(self.aux_modules["judge"]).load_state_dict(unwrap(self.network).state_dict())
            self.judge_frozen_at = self.current_epoch
            self.print_to_log_file(f"FreeTumor: baseline frozen at epoch {self.current_epoch}; it judges synthetic "
                                   f"tumours from now on")

    def get_training_transforms(self, *args, **kwargs):
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        if self.location != "workers" or self.synthesis_probability <= 0:
            return transforms
        chain = transforms.transforms
        at = next(i for i, t in enumerate(chain) if isinstance(t, SpatialTransform)) + 1
        if at < len(chain) and isinstance(chain[at], Convert2DTo3DTransform):
            at += 1
        chain.insert(at, TumourSynthesisTransform(self.synthesizer, self.synthesis_probability))
        return transforms

    def qc_warmup_epochs(self) -> int:
        if isinstance(self.qc_warmup, float):
            return int(round(self.qc_warmup * self.num_epochs))
        return int(self.qc_warmup)

    def synthesis_active(self) -> bool:
        """Whether the train step synthesises now (not in the workers, not while the baseline trains)."""
        if self.location != "step" or self.synthesis_probability <= 0:
            return False
        return self.current_phase is None or self.current_phase.name != "baseline"

    def quality_baseline(self) -> nn.Module | None:
        """The network that judges synthetic tumours now; None: keep them unchecked."""
        if self.qc_mode == "checkpoint":
            return self.baseline
        if self.qc_mode == "baseline":
            return self.aux_modules["judge"] if self.judge_frozen_at is not None else None
        if self.qc_mode == "ema" and self.current_epoch >= self.qc_warmup_epochs():
            return self.aux_modules["ema"]
        return None

    @torch.no_grad()
    def differences(self, data: torch.Tensor, drawn: list[dict], soft: torch.Tensor) -> torch.Tensor:
        """(n, C or 1, ...) difference per chosen sample: the generator's map of the tumour's own organ, or the
        procedural per-channel difference drawn with the tumour."""
        if self.generator is not None:
            index = torch.as_tensor([self.organs.index(d["organ"]) for d in drawn], device=self.device)
            return TumourGenerator.select(self.generator(data, soft), index) * self.difference_scale
        shape = (len(drawn), data.shape[1]) + (1,) * (data.ndim - 2)
        values = np.stack([d["difference"] for d in drawn])
        return torch.as_tensor(values, dtype=torch.float32, device=self.device).view(shape)

    def clip_synthetic(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self.synthesizer.clip_bounds(images.shape[1])
        shape = (1, -1) + (1,) * (images.ndim - 2)
        low = torch.as_tensor(low, dtype=images.dtype, device=images.device).view(shape)
        high = torch.as_tensor(high, dtype=images.dtype, device=images.device).view(shape)
        return torch.minimum(torch.maximum(images, low), high)

    # ------------------------------------------------------------------ synthesis on a batch
    def synthesise_batch(self, batch: dict) -> dict:
        """The batch with accepted synthetic tumours in place (image, label, deep-supervision targets)."""
        if not self.synthesis_active():
            return batch
        data, target = batch["data"], batch["target"]
        full = target[0] if isinstance(target, list) else target
        drawn = self.draw_tumours(data, full, self.synthesis_probability)
        if not drawn:
            return batch
        index = [d["index"] for d in drawn]
        images = data[index].to(self.device)
        soft, texture = self._stack(drawn, "soft"), self._stack(drawn, "texture")
        new = self.clip_synthetic(compose(images, soft, self.differences(images, drawn, soft), texture))
        masks = self._stack(drawn, "mask", torch.bool)[:, 0]
        self.synthesis_counts["synthesised"] += len(drawn)
        if self.generator is None:
            self.synthesis_counts["inserted_difference_sum"] += float(sum(d["difference"][0] for d in drawn))

        judge = self.quality_baseline()
        if judge is None:
            keep = np.ones(len(drawn), bool)
            self.synthesis_counts["unchecked"] += len(drawn)
        else:
            # any tumour class counts, as in the original: a liver tumour seen as a kidney tumour is still visible
            fractions = tumour_fractions(judge, new, masks, list(self.pairs.values()))
            keep = accept(fractions, self.qc_threshold)
            self.synthesis_counts["accepted"] += int(keep.sum())
            self.synthesis_counts["rejected"] += int((~keep).sum())
            for k in np.flatnonzero(~keep):
                if self.synthesis_rng.random() < self.qc_acceptance_floor:
                    keep[k] = True
                    self.synthesis_counts["floor_kept"] += 1
        if not keep.any():
            return batch

        data = data.clone()
        full = full.clone()
        new = new.to(data.device, data.dtype)
        for k in np.flatnonzero(keep):
            d = drawn[k]
            b = d["index"]
            data[b] = new[k]
            full[b, 0][torch.from_numpy(d["mask"]).to(full.device)] = d["tumour"]
            self.synthesis_counts["kept"] += 1
            self.synthesis_counts[f"kept_{d['size_class']}"] += 1
        if isinstance(target, list):
            # nnU-Net's own downsampling, so the side outputs see the tumour exactly as a real one
            downsample = DownsampleSegForDSTransform(self._get_deep_supervision_scales())
            target = [t.clone() for t in target]
            for b in {drawn[k]["index"] for k in np.flatnonzero(keep)}:
                for level, t in enumerate(downsample._apply_to_segmentation(full[b])):
                    target[level][b] = t
        else:
            target = full
        return {**batch, "data": data, "target": target}

    @torch.no_grad()
    def record_batch(self, batch: dict) -> None:
        """What the network is trained on: patches with a tumour label, and each tumour's contrast against its own
        organ in the same patch (first channel; HU where the channel is CT-normalised) and its contrast-to-noise."""
        target = batch["target"]
        seg = (target[0] if isinstance(target, list) else target)[:, 0].detach().cpu()
        image = batch["data"][:, 0].detach().cpu().float()
        c = self.synthesis_counts
        for b in range(seg.shape[0]):
            c["patches"] += 1
            has_tumour = False
            for organ, tumour in self.pairs.items():
                t_mask = seg[b] == tumour
                if not t_mask.any():
                    continue
                has_tumour = True
                o_mask = seg[b] == organ
                if o_mask.sum() < 8:
                    continue
                organ_values = image[b][o_mask]
                difference = float(organ_values.mean() - image[b][t_mask].mean())
                c["contrast_n"] += 1
                c["contrast_sum"] += difference
                c["cnr_sum"] += difference / max(float(organ_values.std()), 1e-6)
            c["tumour_patches"] += has_tumour

    def train_step(self, batch: dict) -> dict:
        batch = self.synthesise_batch(batch)
        self.record_batch(batch)
        result = super().train_step(batch)
        if "ema" in self.aux_modules:
            update_ema(self.aux_modules["ema"], unwrap(self.network), self.ema_decay)
        return result

    # ------------------------------------------------------------------ vital signs, logging and checkpoints
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.synthesis_counts = Counter()

    def _hu(self, value: float) -> float:
        frame = self.frames[0] if self.frames else None
        return value * frame.std if frame is not None and frame.ct else value

    def epoch_vital_signs(self) -> dict[str, float]:
        c = self.synthesis_counts  # summed over the ranks in on_epoch_end
        nan = float("nan")
        unit = "HU" if self.frames and self.frames[0].ct else "norm"
        checked = c["accepted"] + c["rejected"]
        values = {
            "batch/tumour patches": c["tumour_patches"] / c["patches"] if c["patches"] else nan,
            f"contrast/in batch ({unit})": self._hu(c["contrast_sum"] / c["contrast_n"]) if c["contrast_n"] else nan,
            "contrast/in batch (CNR)": c["cnr_sum"] / c["contrast_n"] if c["contrast_n"] else nan,
        }
        if self.location == "step":
            values.update({
                "synthesis/per eligible patch": c["synthesised"] / c["eligible"] if c["eligible"] else nan,
                "synthesis/kept per synthesised": c["kept"] / c["synthesised"] if c["synthesised"] else nan,
                "quality control/acceptance": c["accepted"] / checked if checked else nan,
                f"contrast/inserted ({unit})": (self._hu(c["inserted_difference_sum"] / c["synthesised"])
                                                if c["synthesised"] and self.generator is None else nan),
            })
            values.update({f"kept by size/{s}": float(c[f"kept_{s}"]) for s in SIZE_CLASSES_MM})
        # nothing to measure this epoch (no synthesis while the baseline trains, no QC when it is off): no entry, as
        # NaN is not equal to itself and a resumed run's history must equal the uninterrupted one's
        return {k: v for k, v in values.items() if not np.isnan(v)}

    def vital_sign_warnings(self, history: list[dict]) -> list[str]:
        recent = history[-WARN_EPOCHS:]
        if len(recent) < WARN_EPOCHS:
            return []
        warnings = []

        def all_below(key, limit):
            return all(row.get(key) is not None and not np.isnan(row[key]) and row[key] < limit for row in recent)

        if all_below("quality control/acceptance", WARN_ACCEPTANCE):
            warnings.append(f"FreeTumor quality control accepted under {WARN_ACCEPTANCE:.0%} of the synthetic "
                            f"tumours for {WARN_EPOCHS} epochs: only the acceptance floor "
                            f"({self.qc_acceptance_floor}) lets them train; the judge cannot see them")
        if self.synthesis_probability > 0 and self.current_phase_name() != "baseline" and all_below(
                "batch/tumour patches", 1e-9):
            warnings.append(f"FreeTumor: no tumour in any training patch for {WARN_EPOCHS} epochs: this run "
                            f"trains as stock nnU-Net")
        if all_below("contrast/in batch (CNR)", WARN_CNR):
            warnings.append(f"FreeTumor: tumours in the training patches have a contrast-to-noise under "
                            f"{WARN_CNR} against their organ for {WARN_EPOCHS} epochs: they are faint")
        return warnings

    def current_phase_name(self) -> str | None:
        return None if self.current_phase is None else self.current_phase.name

    def on_epoch_end(self):
        c = self.synthesis_counts = self.sum_over_ranks(self.synthesis_counts)
        checked = c["accepted"] + c["rejected"]
        rate = f"{c['accepted'] / checked:.2f}" if checked else "n/a"
        if self.location == "step":
            self.print_to_log_file(
                f"FreeTumor synthesis: {c['synthesised']} tumours in {c['eligible']} eligible patches; quality "
                f"control accepted {c['accepted']}, rejected {c['rejected']} (acceptance rate {rate}), kept by the "
                f"floor {c['floor_kept']}, unchecked {c['unchecked']}")
        self.synthesis_history.append({"epoch": self.current_epoch, **{k: float(v) for k, v in c.items()}})
        super().on_epoch_end()

    def synthesis_totals(self) -> dict[str, float]:
        total = Counter()
        for h in self.synthesis_history:
            total.update({k: v for k, v in h.items() if k != "epoch"})
        return dict(total)

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "synthesis_history": list(self.synthesis_history),
                "synthesis_totals": self.synthesis_totals(), "judge_frozen_at": self.judge_frozen_at}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        super().load_extra_checkpoint_state(state)
        self.synthesis_history = list(state.get("synthesis_history", []))
        self.judge_frozen_at = state.get("judge_frozen_at")


class FreeTumorSynthesisTrainer(_FreeTumorBase):
    """Trains FreeTumor's generator; the segmentation network is the frozen baseline (trained here first, or taken
    from nnUNet_ext_freetumor_baseline). Stock prediction with this trainer predicts with that baseline."""

    generator_features = (16, 32, 64)
    discriminator_features = (16, 32, 64)
    # share of num_epochs training the baseline segmentor on the real data first
    baseline_fraction: int | float = 0.5
    generator_lr = 1e-4
    discriminator_lr = 1e-4
    adversarial_weight = 0.1
    difference_scale: float | None = None  # generator output scale; None: 2x the largest procedural difference

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.synthesis_counts: Counter = Counter()
        self.loss_sums: Counter = Counter()

    def build_phase_schedule(self) -> PhaseSchedule:
        phases = [Phase("synthesis", None, train=("generator", "discriminator"))]
        if not self.baseline_checkpoint:
            phases.insert(0, Phase("baseline", self.baseline_fraction, train=("network",)))
        return PhaseSchedule(phases)

    def _config(self, features) -> dict:
        return network_config(self.configuration_manager, len(features), features)

    def build_aux_modules(self) -> dict[str, nn.Module]:
        g, d = self._config(self.generator_features), self._config(self.discriminator_features)
        return {"generator": TumourGenerator(self.num_input_channels, len(self.organs), g["dim"], g["strides"],
                                             g["kernel_sizes"], g["features"]),
                "discriminator": TumourDiscriminator(self.num_input_channels, d["dim"], d["strides"],
                                                     d["kernel_sizes"], d["features"])}

    def configure_aux_optimizers(self):
        return {name: (torch.optim.Adam(self.aux_modules[name].parameters(), lr=lr, betas=(0.0, 0.999)), None)
                for name, lr in (("generator", self.generator_lr), ("discriminator", self.discriminator_lr))}

    def initialize(self):
        super().initialize()
        # a resumed run loads its own checkpoint over this afterwards
        if self.baseline_checkpoint:
            baseline = load_baseline(self.baseline_checkpoint, self.dataset_json, self.device, BASELINE_ENV)
            try:
                unwrap(self.network).load_state_dict(baseline.state_dict())
            except RuntimeError as e:
                raise ValueError(f"{BASELINE_ENV}={self.baseline_checkpoint}: its network does not match this "
                                 f"configuration's architecture ({e.__class__.__name__}); train the baseline with the "
                                 f"same plans and configuration") from None

    def prepare_synthesis(self) -> None:
        super().prepare_synthesis()
        if self.difference_scale is None:
            self.difference_scale = 2.0 * self.synthesizer.largest_difference(self.num_input_channels)

    def generator_state(self) -> dict:
        g = self._config(self.generator_features)
        return {**g, "in_channels": self.num_input_channels, "organs": self.organs,
                "difference_scale": self.difference_scale}

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "generator": self.generator_state()}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        super().load_extra_checkpoint_state(state)
        self.difference_scale = state.get("generator", {}).get("difference_scale", self.difference_scale)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.synthesis_counts = Counter()
        self.loss_sums = Counter()

    def on_epoch_end(self):
        self.loss_sums = self.sum_over_ranks(self.loss_sums)
        n = self.loss_sums["steps"]
        if n:
            self.print_to_log_file(f"FreeTumor generator loss {self.loss_sums['generator'] / n:.4f} (adversarial "
                                   f"{self.loss_sums['adversarial'] / n:.4f}, segmentation "
                                   f"{self.loss_sums['segmentation'] / n:.4f}), discriminator loss "
                                   f"{self.loss_sums['discriminator'] / n:.4f}")
        super().on_epoch_end()

    def synthesis_losses(self, batch: dict) -> dict:
        """One generator and one discriminator update on a batch; returns the losses (floats)."""
        data = batch["data"].to(self.device)
        target = batch["target"]
        full = (target[0] if isinstance(target, list) else target).to(self.device)
        drawn = self.draw_tumours(data, full, 1.0)
        # under DDP a rank whose patches got no tumour still joins the others' updates, with no gradient of its own
        if not self.any_rank(bool(drawn)):
            return {}
        # the plain modules (the network is frozen here): the discriminator runs twice per update and a rank may
        # have nothing to run, which DDP's forward hooks do not allow; sync_gradients averages over the ranks instead
        generator, discriminator = unwrap(self.aux_modules["generator"]), unwrap(self.aux_modules["discriminator"])
        g_opt, d_opt = self.aux_optimizers["generator"], self.aux_optimizers["discriminator"]
        losses = d_loss = None

        g_opt.zero_grad(set_to_none=True)
        g_loss = None
        if drawn:
            index = [d["index"] for d in drawn]
            images = data[index]
            soft, texture = self._stack(drawn, "soft"), self._stack(drawn, "texture")
            fake = self._stack(drawn, "mask", torch.bool)[:, 0]
            organ_index = torch.as_tensor([self.organs.index(d["organ"]) for d in drawn], device=self.device)
            tumour_labels = torch.as_tensor([d["tumour"] for d in drawn], device=self.device)
            difference = TumourGenerator.select(generator(images, soft), organ_index) * self.difference_scale
            synthetic = compose(images, soft, difference, texture)
            losses = generator_loss(discriminator(synthetic), logits_of(unwrap(self.network)(synthetic)), fake,
                                    tumour_labels, self.adversarial_weight)
            g_loss = losses["loss"]
        # float32 outside autocast: no GradScaler
        self.optimizer_step(g_loss, g_opt, generator.parameters(), sync=True, scaled=False)

        d_opt.zero_grad(set_to_none=True)
        if drawn:
            # real tumours come from the whole batch, not only from the patches that got a synthetic one
            real_all = torch.zeros_like(full[:, 0], dtype=torch.bool)
            for t in self.pairs.values():
                real_all |= full[:, 0] == t
            d_loss = discriminator_loss(discriminator(synthetic.detach()), fake, discriminator(data), real_all)
        self.optimizer_step(d_loss, d_opt, discriminator.parameters(), sync=True, scaled=False)
        if losses is None:
            return {}
        out = {"generator": losses["loss"].item(), "adversarial": losses["adversarial"].item(),
               "segmentation": losses["segmentation"].item(), "discriminator": d_loss.item()}
        self.loss_sums.update({**out, "steps": 1})
        return out

    def train_step_synthesis(self, batch: dict) -> dict:
        losses = self.synthesis_losses(batch)
        return {"loss": np.array(losses.get("generator", np.nan))}


FreeTumorTrainer_debug = short_variant(FreeTumorTrainer, "FreeTumorTrainer_debug", **DEBUG_BUDGET)
FreeTumorTrainer_demo = short_variant(FreeTumorTrainer, "FreeTumorTrainer_demo", **DEMO_BUDGET)
FreeTumorSynthesisTrainer_debug = short_variant(FreeTumorSynthesisTrainer, "FreeTumorSynthesisTrainer_debug",
                                                **DEBUG_BUDGET)
FreeTumorSynthesisTrainer_demo = short_variant(FreeTumorSynthesisTrainer, "FreeTumorSynthesisTrainer_demo",
                                               **DEMO_BUDGET)
