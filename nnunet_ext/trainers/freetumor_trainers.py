"""FreeTumor (Wu et al., Nat. Commun. 2025): tumour synthesis with quality control inside nnU-Net training.

    nnUNetv2_train 754 3d_fullres 0 -tr FreeTumorTrainer
    nnUNetv2_train 754 3d_fullres 0 -tr FreeTumorSynthesisTrainer          # optional: learn the tumour appearance
    nnUNet_ext_freetumor_generator=.../checkpoint_final.pth nnUNetv2_train 754 3d_fullres 0 -tr FreeTumorTrainer

FreeTumorTrainer: in the train step, after nnU-Net's augmentation, each patch that holds an organ but no real tumour
gets one synthetic tumour with probability synthesis_probability (shape in mm from the plans' spacing, texture,
appearance from the training set's measured tumour-vs-organ statistics or from a generator). A baseline segmentor
checks each synthetic tumour: it is kept only when more than qc_threshold (70%) of its voxels are predicted as that
tumour, else the original patch trains. Deep-supervision targets are rebuilt from the modified label with nnU-Net's
own downsampling. The baseline is, in this order: the checkpoint in nnUNet_ext_freetumor_baseline (any nnU-Net
model of the same data set), the frozen segmentor of the generator checkpoint, else an EMA of the network being
trained (after qc_warmup epochs; before that synthetic tumours are kept unchecked).

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
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from torch import nn

from nnunet_ext.methods.freetumor.appearance import OrganStats, compose, measure_stats
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
from nnunet_ext.methods.freetumor.synthesize import TumourSynthesizer
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
    stats_max_cases = 50  # training cases read to measure the tumour-vs-organ intensity statistics

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pairs = organ_tumour_pairs(dataset_json, self.organ_tumour_labels, self.plans_manager.dataset_name)
        self.organs = sorted(self.pairs)  # generator channel k belongs to organ self.organs[k]
        self.baseline_checkpoint = _env_path(BASELINE_ENV)
        self.intensity_stats: dict[int, OrganStats] | None = None
        self.synthesizer: TumourSynthesizer | None = None
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

    def on_train_start(self):
        super().on_train_start()
        self.prepare_synthesis()

    def prepare_synthesis(self) -> None:
        """Measure the statistics (unless a checkpoint brought them) and build the synthesizer."""
        if self.intensity_stats is None:
            self.intensity_stats = self.measure_intensity_stats()
        for organ in self.organs:
            s = self.intensity_stats.get(organ)
            what = "not in the training cases" if s is None else (
                f"organ mean {np.round(s.organ_mean, 3).tolist()} std {np.round(s.organ_std, 3).tolist()}, "
                + (f"{s.n_tumour} real tumour voxels, difference {np.round(s.difference(), 3).tolist()}"
                   if s.measured else f"default difference {np.round(s.difference(), 3).tolist()} "
                                      f"(too few real tumour voxels: {s.n_tumour})"))
            self.print_to_log_file(f"FreeTumor intensity statistics, label {organ}: {what}")
        self.synthesizer = TumourSynthesizer(self.pairs, self.configuration_manager.spacing, self.intensity_stats,
                                             self.size_probabilities, self.texture_amplitude)
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


class FreeTumorTrainer(_FreeTumorBase):
    # `nnunet_ext demo --trainer FreeTumorTrainer` runs FreeTumorTrainer_demo on the abdomen3d phantom; no Dice floor:
    # the demo budget learns the organs but misses the tumours (measured, docs/freetumor.md)
    demo_phantom = "abdomen3d"
    demo_dice_floor = None
    synthesis_probability = 0.5  # chance that an eligible patch (organ, no real tumour) gets a synthetic tumour
    qc_threshold = QC_THRESHOLD  # share of a synthetic tumour's voxels the baseline must call tumour to keep it
    # EMA quality control starts after this many epochs (a float: fraction of num_epochs); before, synthetic
    # tumours are kept unchecked, because a fresh EMA sees no tumour at all and would reject every one
    qc_warmup: int | float = 0.25
    ema_decay = 0.99

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.generator_checkpoint = _env_path(GENERATOR_ENV)
        # the generator checkpoint's frozen segmentor is a baseline of the same data set
        self.qc_source = "checkpoint" if (self.baseline_checkpoint or self.generator_checkpoint) else "ema"
        self.baseline: nn.Module | None = None
        self.generator: TumourGenerator | None = None
        self.difference_scale: float | None = None
        self.synthesis_counts: Counter = Counter()
        self.synthesis_history: list[dict] = []

    def build_aux_modules(self) -> dict[str, nn.Module]:
        return {"ema": ema_copy(unwrap(self.network))} if self.qc_source == "ema" else {}

    def initialize(self):
        super().initialize()
        if self.generator_checkpoint:
            self.generator, self.difference_scale, organs = load_generator(
                self.generator_checkpoint, self.dataset_json, self.device, f"{GENERATOR_ENV}")
            if organs != self.organs:
                raise ValueError(f"{GENERATOR_ENV}={self.generator_checkpoint}: the generator's channels belong to "
                                 f"organs {organs}, this trainer's organs are {self.organs}")
        baseline = self.baseline_checkpoint or self.generator_checkpoint
        if baseline:
            setting = BASELINE_ENV if self.baseline_checkpoint else GENERATOR_ENV
            self.baseline = load_baseline(baseline, self.dataset_json, self.device, setting)
        judge = baseline or f"EMA (decay {self.ema_decay}) after {self.qc_warmup_epochs()} epochs"
        self.print_to_log_file(
            f"FreeTumor: synthesis probability {self.synthesis_probability}, appearance from "
            f"{'generator ' + self.generator_checkpoint if self.generator else 'intensity statistics'}, quality "
            f"control by {judge}, threshold {self.qc_threshold}")

    def qc_warmup_epochs(self) -> int:
        if isinstance(self.qc_warmup, float):
            return int(round(self.qc_warmup * self.num_epochs))
        return int(self.qc_warmup)

    def quality_baseline(self) -> nn.Module | None:
        """The network that judges synthetic tumours now; None: keep them unchecked (EMA still warming up)."""
        if self.baseline is not None:
            return self.baseline
        if self.current_epoch >= self.qc_warmup_epochs():
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

    def synthesise_batch(self, batch: dict) -> dict:
        """The batch with accepted synthetic tumours in place (image, label, deep-supervision targets)."""
        if self.synthesis_probability <= 0:
            return batch
        data, target = batch["data"], batch["target"]
        full = target[0] if isinstance(target, list) else target
        drawn = self.draw_tumours(data, full, self.synthesis_probability)
        if not drawn:
            return batch
        index = [d["index"] for d in drawn]
        images = data[index].to(self.device)
        soft, texture = self._stack(drawn, "soft"), self._stack(drawn, "texture")
        new = compose(images, soft, self.differences(images, drawn, soft), texture)
        masks = self._stack(drawn, "mask", torch.bool)[:, 0]
        self.synthesis_counts["synthesised"] += len(drawn)

        judge = self.quality_baseline()
        if judge is None:
            keep = np.ones(len(drawn), bool)
            self.synthesis_counts["unchecked"] += len(drawn)
        else:
            fractions = tumour_fractions(judge, new, masks, [d["tumour"] for d in drawn])
            keep = accept(fractions, self.qc_threshold)
            self.synthesis_counts["accepted"] += int(keep.sum())
            self.synthesis_counts["rejected"] += int((~keep).sum())
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

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(self.synthesise_batch(batch))
        if "ema" in self.aux_modules:
            update_ema(self.aux_modules["ema"], unwrap(self.network), self.ema_decay)
        return result

    # ------------------------------------------------------------------ logging and checkpoints
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.synthesis_counts = Counter()

    def on_epoch_end(self):
        c = self.synthesis_counts = self.sum_over_ranks(self.synthesis_counts)
        checked = c["accepted"] + c["rejected"]
        rate = f"{c['accepted'] / checked:.2f}" if checked else "n/a"
        self.print_to_log_file(
            f"FreeTumor synthesis: {c['synthesised']} tumours in {c['eligible']} eligible patches; quality control "
            f"accepted {c['accepted']}, rejected {c['rejected']} (acceptance rate {rate}), unchecked {c['unchecked']}")
        self.synthesis_history.append({"epoch": self.current_epoch, **{k: int(v) for k, v in c.items()}})
        super().on_epoch_end()

    def synthesis_totals(self) -> dict[str, int]:
        total = Counter()
        for h in self.synthesis_history:
            total.update({k: v for k, v in h.items() if k != "epoch"})
        return dict(total)

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "synthesis_history": list(self.synthesis_history),
                "synthesis_totals": self.synthesis_totals()}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        super().load_extra_checkpoint_state(state)
        self.synthesis_history = list(state.get("synthesis_history", []))


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
            largest = max((float(np.abs(s.difference()).max()) for s in self.intensity_stats.values()), default=1.0)
            self.difference_scale = 2.0 * largest

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
