"""WeakCycle runs that score their pseudo-masks at translation checkpoints, beside four controls scored the same way,
for bench_weak_cycle_checkpoints.py.

At the start of every translation epoch whose iteration count is in the checkpoint list (and at the phase switch),
the trainer makes pseudo-masks of every weak training case from G_AB's attention (the method) and from its CAM (the
CAM-only baseline), exactly as at the phase switch (body mask, per-image normalisation, per-image Otsu, opening), and
scores them in the raw images' geometry against the true masks in the folder named by the environment variable
nnUNet_ext_bench_reference (never seen by training). The controls go through the same thresholding: the attention
of the untrained generator (checkpoint 0), the image intensity itself (its polarity, bright or dark lesions, chosen
by Dice on the fully labelled validation cases) and keep-all (the whole body). Results: fold_0/weak_cycle/
checkpoints.json. With generator_selection "validation" (the default) a last row, marked "selected", scores the
G_AB the trainer chose on the validation cases (its attention) and the one the CAM-only baseline would choose on its
own validation Dice (its CAM).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_ext.methods.weak_cycle.data import body_mask, dice
from nnunet_ext.methods.weak_cycle.loss import CYCLE_LOSS_WEIGHTS, ISIC_LOSS_WEIGHTS
from nnunet_ext.trainers.weak_cycle_trainers import WeakCycleTrainer, load_case_arrays
from nnunet_ext.training.variants import short_variant

REFERENCE_ENV = "nnUNet_ext_bench_reference"
CHECKPOINTS = (0, 250, 500, 1000, 2000, 4000, 6000, 8000, 12000, 16000)


class WeakCycleTrainer_checkpoints(WeakCycleTrainer):
    generator_features = 8
    generator_blocks = 1
    discriminator_features = 8
    translation_fraction = 0.8

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_scores: list[dict] = []
        self.selected_generator_cam: dict | None = None

    def _reference(self, case: str) -> np.ndarray:
        return np.asarray(Image.open(Path(os.environ[REFERENCE_ENV]) / f"{case}.png")) == 1

    def _score_raw(self, mask_by_case: dict[str, np.ndarray], dataset) -> float:
        scores = []
        for case, mask in mask_by_case.items():
            _, _, _, properties = dataset.load_case(case)
            scores.append(dice(self._reference(case), self.raw_geometry(mask, properties) == 1))
        return float(np.mean(scores))

    def _source_masks(self, dataset, cases, source: str) -> dict[str, np.ndarray]:
        masks = {}
        for case in cases:
            data, seg = load_case_arrays(dataset, case)
            body = body_mask(seg, data)
            if source == "keep_all":
                mask = body
            elif source.startswith("intensity"):
                image = data.mean(0) * (1 if source == "intensity_bright" else -1)
                mask = self.binarise(image * body, body)[0]
            else:
                maps = self.generator_maps(self.aux_modules["gen_ab"], data)
                mask = self.binarise(maps[source] * body, body)[0]
            masks[case] = self.pseudo_label(mask, body)
        return masks

    def _score_source(self, row: dict, source: str) -> None:
        dataset_tr, dataset_val = super(WeakCycleTrainer, self).get_tr_and_val_datasets()
        row[source] = self._score_raw(self._source_masks(dataset_tr, self.weak_cases.disease, source), dataset_tr)
        row[f"{source}_validation"] = float(np.mean([
            dice(r, self.binarise(self.generator_maps(self.aux_modules["gen_ab"], d)[source] * b, b)[0])
            for d, b, r in self.validation_cases(dataset_val)]))

    def after_vital_signs(self, values: dict[str, float]) -> None:
        """Also keep the G_AB that the CAM-only baseline would select (its own validation Dice), so that the CAM
        control gets the same selection as the method."""
        super().after_vital_signs(values)
        score = values.get("pseudo_mask/validation_dice_cam")
        if self.current_phase.name == "translation" and score is not None and not np.isnan(score):
            self.selected_generator_cam = self.keep_better_generator(self.selected_generator_cam, score)

    def score_selected(self) -> None:
        """After the phase switch: the attention of the G_AB the trainer selected, the CAM of the one the CAM-only
        baseline would select (a row marked "selected", with the epochs they come from)."""
        chosen, chosen_cam = self.selected_generator, self.selected_generator_cam
        if self.generator_selection != "validation" or chosen is None or chosen_cam is None:
            return
        generator = self.aux_modules["gen_ab"]
        row = {"selected": True, "iterations": (chosen["epoch"] + 1) * self.num_iterations_per_epoch,
               "epoch": chosen["epoch"], "cam_iterations": (chosen_cam["epoch"] + 1) * self.num_iterations_per_epoch,
               "time_s": time.time()}
        self._score_source(row, "attention")
        current = {k: v.clone() for k, v in generator.state_dict().items()}
        generator.load_state_dict(chosen_cam["state"])
        self._score_source(row, "cam")
        generator.load_state_dict(current)
        self.checkpoint_scores.append(row)
        self.print_to_log_file(f"Checkpoint scores (selected on validation): {json.dumps(row)}")
        if self.local_rank == 0:
            (self.weak_folder / "checkpoints.json").write_text(json.dumps(self.checkpoint_scores, indent=1))

    def score_checkpoint(self, iterations: int) -> None:
        dataset_tr, dataset_val = super(WeakCycleTrainer, self).get_tr_and_val_datasets()
        row = {"iterations": iterations, "epoch": self.current_epoch, "time_s": time.time()}
        for source in ("attention", "cam"):
            self._score_source(row, source)
        if not self.checkpoint_scores:
            # controls that do not depend on training, once
            validation = self.validation_cases(dataset_val)
            polarity = {}
            for source in ("intensity_bright", "intensity_dark"):
                sign = 1 if source == "intensity_bright" else -1
                polarity[source] = float(np.mean([dice(r, self.binarise(sign * d.mean(0) * b, b)[0])
                                                  for d, b, r in validation]))
            chosen = max(polarity, key=polarity.get)
            row["intensity_polarity"] = chosen
            row["intensity_validation"] = polarity
            row["intensity"] = self._score_raw(self._source_masks(dataset_tr, self.weak_cases.disease, chosen),
                                               dataset_tr)
            row["keep_all"] = self._score_raw(self._source_masks(dataset_tr, self.weak_cases.disease, "keep_all"),
                                              dataset_tr)
            row["untrained_attention"] = row["attention"]
        self.checkpoint_scores.append(row)
        self.print_to_log_file(f"Checkpoint scores: {json.dumps(row)}")
        if self.local_rank == 0:
            self.weak_folder.mkdir(parents=True, exist_ok=True)
            (self.weak_folder / "checkpoints.json").write_text(json.dumps(self.checkpoint_scores, indent=1))

    def on_train_epoch_start(self):
        phase = self.phase_schedule.phase_at(self.current_epoch, self.num_epochs)
        iterations = (self.current_epoch - phase.start) * self.num_iterations_per_epoch
        if phase.name == "translation" and iterations in CHECKPOINTS:
            self.score_checkpoint(iterations)
        elif phase.name == "refinement" and self.current_epoch == phase.start:
            translated = phase.start * self.num_iterations_per_epoch  # translation is the first phase
            if not self.checkpoint_scores or self.checkpoint_scores[-1]["iterations"] != translated:
                self.score_checkpoint(translated)  # the last generator
            super().on_train_epoch_start()  # the phase switch: the trainer's selected generator makes the masks
            self.score_selected()
            return
        super().on_train_epoch_start()


# phantom: 50 iterations per epoch, 40 translation epochs (2000 iterations), 10 refinement epochs (500 iterations)
PHANTOM_BUDGET = {"epochs": 50, "iterations": 50, "val_iterations": 2}
WeakCycleTrainer_ckpt_phantom = short_variant(WeakCycleTrainer_checkpoints, "WeakCycleTrainer_ckpt_phantom",
                                              **PHANTOM_BUDGET)


def _phantom_variant(suffix: str, budget: dict = PHANTOM_BUDGET, **settings) -> type:
    """A phantom budget (WeakCycleTrainer_ckpt_phantom's by default) with other trainer settings."""
    base = type(f"_Phantom_{suffix}", (WeakCycleTrainer_checkpoints,), settings)
    return short_variant(base, f"WeakCycleTrainer_ckpt_phantom_{suffix}", **budget)


# ablation: no teacher update, the student keeps the phase-1 pseudo-masks (EMA teacher consistency only)
WeakCycleTrainer_ckpt_phantom_noupdate = _phantom_variant("noupdate", pseudo_update_every=0)
# the teacher's rule, for bench_weak_cycle_teacher_rule.py: class-balanced thresholds keeping 50 % / 100 % of each
# class's pixels, and the absolute confidence alone (the default, 80 %, is WeakCycleTrainer_ckpt_phantom)
WeakCycleTrainer_ckpt_phantom_keep50 = _phantom_variant("keep50", teacher_keep_fraction=0.5)
WeakCycleTrainer_ckpt_phantom_keep100 = _phantom_variant("keep100", teacher_keep_fraction=1.0)
WeakCycleTrainer_ckpt_phantom_keepnone = _phantom_variant("keepnone", teacher_keep_fraction=None)

# WeakCycleTrainer's own widths (what a user trains), not the bench's quarter-width networks
FULL_WIDTHS = {"generator_features": WeakCycleTrainer.generator_features,
               "generator_blocks": WeakCycleTrainer.generator_blocks,
               "discriminator_features": WeakCycleTrainer.discriminator_features}

# the same phantom for 6000 translation iterations (120 epochs) and 1500 refinement iterations (30 epochs)
LONG_BUDGET = {"epochs": 150, "iterations": 50, "val_iterations": 2}
WeakCycleTrainer_ckpt_phantom_long = _phantom_variant("long", LONG_BUDGET)
# the same budget with the trainer's own widths
WeakCycleTrainer_ckpt_phantom_long_full = _phantom_variant("long_full", LONG_BUDGET, **FULL_WIDTHS)
# 16000 translation iterations (320 epochs) and 4000 refinement iterations (80 epochs)
WeakCycleTrainer_ckpt_phantom_xlong = _phantom_variant("xlong", {**LONG_BUDGET, "epochs": 400})
# ablation: no adversarial term on the composite
WeakCycleTrainer_ckpt_phantom_long_nocomposite = _phantom_variant(
    "long_nocomposite", LONG_BUDGET, cycle_loss_weights={**CYCLE_LOSS_WEIGHTS, "adversarial_composite": 0.0})
# candidate, not the original: the identity passes' attention (G_AB fed a normal image, G_BA a disease one, which
# must change nothing) pushed towards 0 with the identity loss's weight, so that the attention would stay off what
# normal images also hold
# weights 10 (the identity loss's; trainer suffix _idattn) and 1 (_idattn1)
IDENTITY_ATTENTION_WEIGHTS = {10.0: "", 1.0: "1"}
for _weight, _suffix in IDENTITY_ATTENTION_WEIGHTS.items():
    for _width, _widths in (("", {}), ("_full", FULL_WIDTHS)):
        _name = f"long_idattn{_suffix}{_width}"
        globals()[f"WeakCycleTrainer_ckpt_phantom_{_name}"] = _phantom_variant(
            _name, LONG_BUDGET, cycle_loss_weights={**CYCLE_LOSS_WEIGHTS, "identity_attention": _weight}, **_widths)
# the teacher rule before 2026-12-01: pixels the teacher is unsure about become ignore (the default keeps their label;
# the run that chose it used the then-candidate WeakCycleTrainer_ckpt_phantom_long_keep, the default trainer now)
WeakCycleTrainer_ckpt_phantom_long_ignore = _phantom_variant("long_ignore", LONG_BUDGET, teacher_uncertain="ignore")
WeakCycleTrainer_ckpt_phantom_xlong_ignore = _phantom_variant("xlong_ignore", {**LONG_BUDGET, "epochs": 400},
                                                              teacher_uncertain="ignore")


# real samples (160x160 / 256x256 patches): 50 iterations per epoch, 20 translation epochs (1000 iterations), 5
# refinement epochs (250 iterations)
REAL_BUDGET = {"epochs": 25, "iterations": 50, "val_iterations": 2}
WeakCycleTrainer_ckpt_real = short_variant(WeakCycleTrainer_checkpoints, "WeakCycleTrainer_ckpt_real", **REAL_BUDGET)


def _real_variant(suffix: str, budget: dict = REAL_BUDGET, **settings) -> type:
    """A real-sample budget (WeakCycleTrainer_ckpt_real's by default) with other trainer settings."""
    base = type(f"_Real_{suffix}", (WeakCycleTrainer_checkpoints,), settings)
    return short_variant(base, f"WeakCycleTrainer_ckpt_real_{suffix}", **budget)


WeakCycleTrainer_ckpt_real_full = _real_variant("full", **FULL_WIDTHS)
# the original's ISIC loss weights
WeakCycleTrainer_ckpt_real_isic = _real_variant("isic", cycle_loss_weights=ISIC_LOSS_WEIGHTS)
# the same at the trainer's own widths, on half the iterations (25 per epoch: 500 translation and 125 refinement
# iterations, the same checkpoints up to 500): a full-width iteration on 256x256 patches costs 8.6 s on 2 CPU cores,
# so the whole real-sample budget would take 2.4 hours a seed; at these widths the BraTS run found the tumour within
# 100-250 iterations
WeakCycleTrainer_ckpt_real_isic_full = _real_variant("isic_full", {**REAL_BUDGET, "iterations": 25},
                                                     cycle_loss_weights=ISIC_LOSS_WEIGHTS, **FULL_WIDTHS)
# ablation: no adversarial term on the composite, which ruined ISIC where it lifted BraTS
WeakCycleTrainer_ckpt_real_isic_nocomposite = _real_variant(
    "isic_nocomposite", cycle_loss_weights={**ISIC_LOSS_WEIGHTS, "adversarial_composite": 0.0})
