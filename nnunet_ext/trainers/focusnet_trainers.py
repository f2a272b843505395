"""FocusNetV2 (Gao et al., MedIA 2021): small-organ localisation, ROI pooling and segmentation with an adversarial
shape prior, as one nnU-Net run.

    nnUNetv2_train DATASET 3d_fullres 0 -tr FocusNetV2Trainer
    nnUNetv2_predict -i IN -o OUT -d DATASET -c 3d_fullres -f 0 -tr FocusNetV2Trainer

Phases of the epoch budget (nnunet_ext.training.phases; each resumes with --c):
  snet         S-Net (the plans' U-Net, Dice+CE with deep supervision, nnU-Net's SGD with its poly schedule spread
               over this phase) + SOL-Net heatmaps (penalty-reduced focal loss, weight 2, own Adam as the original)
  shape        the shape autoencoder on ground-truth small-organ crops (reconstruction)
  sos          one SOS-Net per small organ on ROI crops (binary focal + Tversky-Dice); S-Net frozen. Crops sit at the
               predicted heatmap peak (organ inside or not: SOS learns "nothing here") or, for a share
               1 - sos_predicted_crop_fraction, at the jittered reference centroid; crops without the organ at most
               sos_absent_crop_ratio per crop with it (in 2d most patches miss a small organ)
  adversarial  SOS-Nets with their loss + 5 latent MSE + intermediate-feature MSE + MSE(sigmoid, reference), the
               shape terms on the crops that hold the organ, and the autoencoder updated on those to reconstruct true
               shapes and to separate predicted from true shapes in latent space; the SOS-Nets' Adam anneals (poly)
               over sos and adversarial

Budget: S-Net trains in the snet phase only (phase_fractions[0] of the epochs) and anneals there; the later phases
train the small networks with S-Net frozen. A run whose S-Net should get a stock run's E epochs therefore needs
E / phase_fractions[0] epochs in all (bench/focusnet/ reports both ways of counting).

Vital signs every epoch (log and focusnet_progress.png): per small organ on the validation patches that show it, the
heatmap peak height, the peak-to-centroid distance in mm, the share of peaks inside half the ROI box and the paste
rate (peak above peak_threshold), and once the sos phase has begun the SOS-Net's Dice in the box around the
reference centroid (oracle box); a WARNING when no organ would be pasted even at the lowest peak threshold candidate
once the snet phase is over, and one when an SOS-Net marks nothing in any oracle box (collapsed to "never the organ":
pasting it erases the organ).

When training ends, the peak threshold above which SOS is pasted is chosen among peak_threshold_candidates on the
fold's validation cases (predicted as nnUNetv2_predict would), logged, written to focusnet_peak_threshold.json and
saved with the final weights.

The small organs and the ROI box are derived from the preprocessed training labels of the fold when training starts
(nnunet_ext.methods.focusnet.organs), logged and written to focusnet_small_organs.json in the fold folder. Override the
choice with the class attribute `small_organs` or the environment variable nnUNet_ext_focusnet_small_organs (names or
label values, comma-separated).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nnunet_ext.methods.focusnet import loss as fl
from nnunet_ext.methods.focusnet.network import FocusNetV2Network, ShapeAutoencoder
from nnunet_ext.methods.focusnet.organs import case_stats, parse_override, roi_box, select_small_organs
from nnunet_ext.methods.focusnet.roi import centroid, crop, gaussian_heatmap, peak, place_box
from nnunet_ext.methods.focusnet.threshold import choose_threshold, organ_dice
from nnunet_ext.training.base import nnUNetExtTrainer, unwrap
from nnunet_ext.training.mirroring import LateralMirroringMixin
from nnunet_ext.training.phases import NETWORK, Phase, PhasePolyLRScheduler, PhaseSchedule
from nnunet_ext.training.variants import DEBUG_BUDGET, DEMO_BUDGET, short_variant

__all__ = ["FocusNetV2Trainer", "FocusNetV2Trainer_debug", "FocusNetV2Trainer_demo"]

SMALL_ORGANS_ENV = "nnUNet_ext_focusnet_small_organs"
SELECTION_FILE = "focusnet_small_organs.json"
THRESHOLD_FILE = "focusnet_peak_threshold.json"
HEATMAP_LOSSES = {"focal": fl.heatmap_focal_loss, "mse": fl.heatmap_loss}
SOL_INPUTS = ("context", "last")


def write_json_atomic(target: str, obj: dict) -> None:
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, target)


class FocusNetV2Trainer(LateralMirroringMixin, nnUNetExtTrainer):
    # network structure: class attributes, read by build_network_architecture at training and prediction time
    sos_features = 16  # SOS-Net base features (x1, x2, x4 over its three stages)
    peak_threshold = 0.6  # SOS replaces S-Net in a box only when the heatmap maximum exceeds this (spec)
    # after training the threshold is chosen among these on nnU-Net's validation cases of the fold, predicted as
    # nnUNetv2_predict does (sliding window, mirroring), and saved with the final weights; None: keep peak_threshold.
    # 0.1 and 0.2 since 2026-12-01: every bench run had chosen 0.3, the lowest candidate then, on validation
    peak_threshold_candidates: tuple[float, ...] | None = (0.1, 0.2, 0.3, 0.45, 0.6, 0.75)
    # small organs and ROI (nnunet_ext.methods.focusnet.organs)
    small_organs: tuple[str | int, ...] | None = None  # override; env nnUNet_ext_focusnet_small_organs wins
    small_organ_fraction = 0.01  # median voxels per case below this fraction of the median foreground
    max_small_organs = 3
    roi_margin_mm = 3.0
    roi_percentile = 95.0
    roi_jitter = 0.25  # reference-centred training crops: centroid shifted by up to this fraction of the box per axis
    # share of SOS training crops placed at the predicted heatmap peak (what inference does), the rest at the jittered
    # reference centroid; patches without the organ always get a predicted-peak crop, which must come out empty
    sos_predicted_crop_fraction = 0.5
    # crops of patches without the organ kept per organ and batch: at most this many per crop that shows it (at least
    # one; None: all). In 2d a small organ shows in ~1 slice in 24, so keeping all made SOS see ~18 empty crops per
    # organ crop and half the bench's SOS-Nets collapsed to "never the organ" (oracle-box Dice 0, docs/focusnet.md)
    sos_absent_crop_ratio: float | None = 1.0
    # epochs in a row an SOS-Net may mark no voxel in any validation oracle box before the log warns that it has
    # collapsed (its first steps, from random weights, can sit below 0.5 everywhere)
    sos_collapse_epochs = 5
    # SOL-Net targets: Gaussian with this sigma in voxels along the finest axis (coarser axes scaled by spacing)
    heatmap_sigma = 5.0  # the original's; 3 before 2026-12-01 (bench/results/focusnet/*_sigma.md)
    # losses and optimizers
    heatmap_loss = "focal"  # "focal": penalty-reduced focal (localises); "mse": the original's (collapses, ablation)
    heatmap_weight = 2.0
    sol_lr = 4e-4  # the SOL head's own Adam (the original's), poly-annealed over the snet phase
    # SOL reads S-Net's decoder features without back-propagating into them: with the heatmap gradient flowing into
    # S-Net, the large organs lost up to 0.22 Dice at the bench budget, even at heatmap_weight 0.2 (docs/focusnet.md)
    sol_detach_features = True
    # "context": SOL reads every decoder stage (coarse ones interpolated to full resolution); "last": the last stage
    # only (the spec's head; on detached features it did not localise, docs/focusnet.md)
    sol_input = "context"
    # the SOL head's width (None: S-Net's last decoder stage's); a narrow S-Net's 8 channels were too few for a
    # detached head to localise (docs/focusnet.md)
    sol_features = 32
    # the decoder stage whose grid the SOL head's body works on, counted from the full-resolution one (0); its logits
    # are interpolated back to full resolution. At 1 the head costs a fraction of S-Net instead of as much as a
    # narrow S-Net's whole pass (docs/focusnet.md)
    sol_stage = 1
    # phases in which the SOL head trains ("snet" always): in "sos" and "adversarial" S-Net is frozen and the head
    # keeps fitting its features, as the original's heatmap-only stage; its poly schedule runs from the snet phase to
    # the end of the last one named. Adding "adversarial" did not raise the validation peaks (docs/focusnet.md)
    sol_phases = ("snet", "sos")
    setting_choices = {"heatmap_loss": tuple(HEATMAP_LOSSES), "sol_input": SOL_INPUTS}
    latent_weight = 5.0
    feature_weight = 1.0
    mse_weight = 1.0
    sos_lr = 1e-3
    shape_lr = 1e-3
    shape_features = 8
    # phase lengths as fractions of num_epochs: snet, shape, sos; adversarial takes the rest
    phase_fractions = (0.5, 0.1, 0.25)
    demo_phantom = "hn3d"
    demo_dice_floor = None
    progress_plot = "focusnet_progress.png"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.selection = None
        self.box: tuple[int, ...] | None = None
        self.case_labels: dict[str, set[int]] = {}
        self.sigma: tuple[float, ...] | None = None
        self.sos_optimizer: torch.optim.Optimizer | None = None
        self.sol_optimizer: torch.optim.Optimizer | None = None
        self.sol_scheduler: PhasePolyLRScheduler | None = None
        self.sos_scheduler: PhasePolyLRScheduler | None = None
        self._localisation: dict[int, list[tuple[float, float, bool, bool, bool]]] = {}
        self._sos: dict[int, list[tuple[float, float]]] = {}

    def build_phase_schedule(self) -> PhaseSchedule:
        snet, shape, sos = self.phase_fractions
        return PhaseSchedule([
            Phase("snet", snet, train=(NETWORK,), losses={"segmentation": 1.0, "heatmap": self.heatmap_weight}),
            Phase("shape", shape, train=("shape_ae",), losses={"reconstruction": 1.0}),
            Phase("sos", sos, train=(NETWORK,), losses={"sos": 1.0}),
            Phase("adversarial", None, train=(NETWORK, "shape_ae"),
                  losses={"sos": 1.0, "latent": self.latent_weight, "feature": self.feature_weight,
                          "mse": self.mse_weight}),
        ])

    @classmethod
    def check_dataset(cls, plans_manager, configuration_manager, label_manager, dataset_json: dict,
                      configuration: str) -> None:
        if label_manager.has_regions:
            raise ValueError(f"{plans_manager.dataset_name} uses region-based labels; {cls.__name__} needs one "
                             f"class per organ")
        if len(label_manager.foreground_labels) < 2:
            raise ValueError(f"{plans_manager.dataset_name} has {len(label_manager.foreground_labels)} foreground "
                             f"class(es); {cls.__name__} needs several organs, some of them small")
        # a misspelt override would otherwise only fail in initialize, after nnU-Net has created the fold folder
        cls.small_organ_override(plans_manager.dataset_name, dataset_json, cls.small_organs)

    @classmethod
    def small_organ_override(cls, dataset_name: str, dataset_json: dict,
                             small_organs: tuple[str | int, ...] | None) -> tuple[int, ...] | None:
        """The label values the environment variable (which wins) or the setting `small_organs` (the class's when the
        data set is checked, the instance's when training starts) names; None: pick them from the data. A name that
        is no class of the data set raises, naming the setting."""
        env_value = os.environ.get(SMALL_ORGANS_ENV)
        from_env = env_value not in (None, "")
        try:
            return parse_override(env_value if from_env else small_organs,
                                  {k: int(v) for k, v in dataset_json["labels"].items()})
        except ValueError as e:
            setting = f"{SMALL_ORGANS_ENV}={env_value}" if from_env else f"{cls.__name__}.small_organs"
            raise ValueError(f"{dataset_name}: {setting}: {e}") from None

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        snet = cls.plans_unet(configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)
        # SOL head and SOS-Nets are added by configure() (training) or load_state_dict (prediction)
        return FocusNetV2Network(snet, num_input_channels, cls.sos_features, cls.peak_threshold)

    # ------------------------------------------------------------------ set-up
    def plan_focus(self) -> None:
        """Small organs, ROI box and per-case organ presence from the preprocessed labels of this fold."""
        tr_keys, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(tr_keys) + list(val_keys))
        labels = [int(v) for v in self.label_manager.foreground_labels]
        stats = {}
        for key in list(tr_keys) + list(val_keys):
            seg = dataset.load_case(key)[1]
            stats[key] = case_stats(np.asarray(seg[:]), labels, len(self.configuration_manager.patch_size))
        self.case_labels = {k: set(s.counts) for k, s in stats.items()}
        names = {k: int(v) for k, v in self.dataset_json["labels"].items()}
        override = self.small_organ_override(self.plans_manager.dataset_name, self.dataset_json, self.small_organs)
        train_stats = [stats[k] for k in tr_keys]
        self.selection = select_small_organs(train_stats, names, self.small_organ_fraction, self.max_small_organs,
                                             override)
        extents = [e for s in train_stats for lab in self.selection.labels for e in s.extents.get(lab, [])]
        spacing = [float(s) for s in self.configuration_manager.spacing]
        self.box = roi_box(extents, self.configuration_manager.patch_size, spacing, self.roi_margin_mm,
                           self.roi_percentile)
        finest = min(spacing)
        self.sigma = tuple(self.heatmap_sigma * finest / s for s in spacing)

    def initialize(self):
        self.check_settings()  # before planning the organs, which takes a pass over the training cases
        if not self.was_initialized:
            self.plan_focus()
        super().initialize()
        self.print_to_log_file(f"FocusNetV2: {self.selection.describe()}; ROI box {list(self.box)} voxels; heatmap "
                               f"sigma {[round(s, 2) for s in self.sigma]} voxels")
        if self.local_rank == 0:
            os.makedirs(self.output_folder, exist_ok=True)
            write_json_atomic(os.path.join(self.output_folder, SELECTION_FILE),
                              {**self.selection.to_json(), "roi_box_voxels": list(self.box),
                               "spacing": [float(s) for s in self.configuration_manager.spacing],
                               "heatmap_sigma_voxels": list(self.sigma), "peak_threshold": self.peak_threshold})

    @property
    def focus_network(self) -> FocusNetV2Network:
        return unwrap(self.network)

    def configure_optimizers(self):
        net = self.focus_network  # heatmap_loss and sol_input: checked by initialize (setting_choices)
        if not 0 <= int(self.sol_stage) < len(net.stage_channels):
            raise ValueError(f"{self.__class__.__name__}.sol_stage must be a decoder stage of S-Net, 0 (full "
                             f"resolution) to {len(net.stage_channels) - 1}, got {self.sol_stage!r}")
        # the heads draw their initial weights from a copy of the random stream, so that S-Net then trains on the
        # draws (augmentation, sampling) a stock run with the same seed makes: with the heads detached, its phase is
        # stock's training, and a comparison with stock is paired rather than two independent seeds
        with torch.random.fork_rng(devices=[]):
            net.configure(self.selection.labels, self.box, sol_context=self.sol_input == "context",
                          sol_features=self.sol_features, sol_stage=int(self.sol_stage))
        net.sol_detached = bool(self.sol_detach_features)
        snet = self.phase_schedule.resolved("snet", self.num_epochs)
        # S-Net keeps nnU-Net's SGD; its poly schedule spans the epochs it trains, so it anneals as a stock run would
        optimizer = torch.optim.SGD(net.snet.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        # the heatmap head gets its own Adam (the original's): under S-Net's SGD it collapsed to all-zero maps
        order = ("snet", "sos", "adversarial")  # the shape phase runs no S-Net, so no features for the head
        unknown = set(self.sol_phases) - set(order)
        if "snet" not in self.sol_phases or unknown:
            raise ValueError(f"{self.__class__.__name__}.sol_phases must hold 'snet' and may add 'sos' and "
                             f"'adversarial', got {self.sol_phases!r}")
        last = self.phase_schedule.resolved([p for p in order if p in self.sol_phases][-1], self.num_epochs)
        self.sol_optimizer = torch.optim.Adam(net.sol.parameters(), lr=self.sol_lr)
        self.sol_scheduler = PhasePolyLRScheduler(self.sol_optimizer, self.sol_lr, snet.start, last.end)
        self.sos_optimizer = torch.optim.Adam(net.sos.parameters(), lr=self.sos_lr)
        # the SOS-Nets anneal over the phases they train in (sos, adversarial), as S-Net over its own
        sos = self.phase_schedule.resolved("sos", self.num_epochs)
        self.sos_scheduler = PhasePolyLRScheduler(self.sos_optimizer, self.sos_lr, sos.start, self.num_epochs)
        return optimizer, PhasePolyLRScheduler(optimizer, self.initial_lr, snet.start, snet.end)

    def build_aux_modules(self) -> dict[str, nn.Module]:
        with torch.random.fork_rng(devices=[]):  # stock's random stream left as it is (configure_optimizers)
            return {"shape_ae": ShapeAutoencoder(self.box, len(self.selection.labels), self.shape_features)}

    def configure_aux_optimizers(self):
        return {"shape_ae": (torch.optim.Adam(self.aux_modules["shape_ae"].parameters(), lr=self.shape_lr), None)}

    def extra_checkpoint_state(self) -> dict:
        return {"small_organs": list(self.selection.labels), "roi_box": list(self.box),
                "sos_optimizer": self.sos_optimizer.state_dict(), "sol_optimizer": self.sol_optimizer.state_dict()}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        if state["small_organs"] != list(self.selection.labels) or state["roi_box"] != list(self.box):
            raise RuntimeError(f"the checkpoint was trained for small organs {state['small_organs']} with ROI box "
                               f"{state['roi_box']}, this run selected {list(self.selection.labels)} and "
                               f"{list(self.box)}: keep {SMALL_ORGANS_ENV} / small_organs as in the first run")
        self.sos_optimizer.load_state_dict(state["sos_optimizer"])
        self.sol_optimizer.load_state_dict(state["sol_optimizer"])

    def on_phase_start(self, phase) -> None:
        if phase.name in ("sos", "adversarial"):
            self.focus_network.sos_ready.fill_(True)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.sol_scheduler.step(self.current_epoch)
        self.sos_scheduler.step(self.current_epoch)

    # ------------------------------------------------------------------ targets
    def heatmap_targets(self, seg: torch.Tensor, keys) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian centroid maps [B, K, *spatial] and valid[B, K]: False where the case lacks the organ (no target,
        no loss); an organ present in the case but outside the patch gets an all-zero target."""
        labels = self.selection.labels
        spatial = tuple(seg.shape[2:])
        targets = torch.zeros((seg.shape[0], len(labels), *spatial), device=seg.device)
        valid = torch.zeros((seg.shape[0], len(labels)), dtype=torch.bool, device=seg.device)
        for b in range(seg.shape[0]):
            present = self.case_labels.get(str(keys[b]), set(labels)) if keys is not None else set(labels)
            for k, lab in enumerate(labels):
                if lab not in present:
                    continue
                valid[b, k] = True
                c = centroid(seg[b, 0] == lab)
                if c is not None:
                    targets[b, k] = gaussian_heatmap(spatial, c, self.sigma, device=seg.device)
        return targets, valid

    def heatmap_loss_value(self, heat_logits: torch.Tensor, seg: torch.Tensor, keys) -> torch.Tensor:
        targets, valid = self.heatmap_targets(seg, keys)
        return HEATMAP_LOSSES[self.heatmap_loss](heat_logits, targets, valid)

    def organ_present(self, keys, b: int, label: int) -> bool:
        """Whether case keys[b] has `label` annotated (PDDCA-like data lack some optic structures: no target there)."""
        return keys is None or label in self.case_labels.get(str(keys[b]), {label})

    def organ_crops(self, seg: torch.Tensor, k: int, jitter: bool = True) -> list[tuple[int, tuple[int, ...]]]:
        """(batch item, box start) around organ k's centroid for every item that shows the organ."""
        lab = self.selection.labels[k]
        out = []
        for b in range(seg.shape[0]):
            c = centroid(seg[b, 0] == lab)
            if c is None:
                continue
            if jitter:
                c = tuple(ci + np.random.uniform(-1, 1) * self.roi_jitter * n
                          for ci, n in zip(c, self.box, strict=True))
            out.append((b, place_box(c, self.box, tuple(seg.shape[2:]))))
        return out

    def sos_crops(self, seg: torch.Tensor, heat: torch.Tensor, k: int, keys) -> list[tuple[int, tuple[int, ...]]]:
        """(batch item, box start) of organ k's SOS training crops: at the predicted heatmap peak (what inference
        pastes, with its localisation error) for a share sos_predicted_crop_fraction of the items that show the
        organ and for the items whose patch misses it (the crop then holds no organ: SOS learns to say so; at most
        sos_absent_crop_ratio of them per item that shows it, at least one, drawn at random); at the jittered reference
        centroid for the others. Items of cases without the organ annotated get no crop."""
        lab = self.selection.labels[k]
        reference = dict(self.organ_crops(seg, k))
        spatial = tuple(seg.shape[2:])
        absent = [b for b in range(seg.shape[0]) if b not in reference and self.organ_present(keys, b, lab)]
        if self.sos_absent_crop_ratio is not None:
            keep = max(1, math.ceil(self.sos_absent_crop_ratio * len(reference)))
            if len(absent) > keep:
                absent = sorted(np.random.choice(absent, keep, replace=False).tolist())
        out = []
        for b in range(seg.shape[0]):
            if b in reference and np.random.uniform() >= self.sos_predicted_crop_fraction:
                out.append((b, reference[b]))
            elif b in reference or b in absent:
                out.append((b, place_box(peak(heat[b, k])[0], self.box, spatial)))
        return out

    # ------------------------------------------------------------------ training
    def _batch(self, batch: dict):
        return (*self.batch_to_device(batch), batch.get("keys"))

    def _step(self, loss: torch.Tensor | None, optimizer, parameters) -> None:
        # the steps call S-Net, SOL head, SOS-Nets and the autoencoder's per-organ parts directly, not through a DDP
        # forward, so the gradients are averaged over the ranks in the step
        self.optimizer_step(loss, optimizer, parameters, sync=True)

    def train_step_snet(self, batch: dict) -> dict:
        data, target, full, keys = self._batch(batch)
        net, phase = self.focus_network, self.current_phase.phase
        self.optimizer.zero_grad(set_to_none=True)
        self.sol_optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = net.snet_forward(data)
            output = [out.logits, *out.side] if net.snet.decoder.deep_supervision else out.logits
            seg = self.loss(output, target)
            heat = self.heatmap_loss_value(out.heat_logits, full, keys)
            loss = phase.loss_weight("segmentation") * seg + phase.loss_weight("heatmap") * heat
        # clipped apart: with one joint norm the head's gradient would shrink S-Net's update, and S-Net would learn
        # less than stock's although no heatmap gradient reaches it
        self._step(loss, [self.optimizer, self.sol_optimizer],
                   [list(net.snet.parameters()), list(net.sol.parameters())])
        return {"loss": loss.detach().cpu().numpy()}

    def train_step_shape(self, batch: dict) -> dict:
        _, _, full, _ = self._batch(batch)
        # the plain module: one organ's encoder and decoder per call, which a DDP wrapper would take for unused
        # parameters; _step averages the gradients instead
        ae, opt = unwrap(self.aux_modules["shape_ae"]), self.aux_optimizers["shape_ae"]
        opt.zero_grad(set_to_none=True)
        losses = []
        for k, lab in enumerate(self.selection.labels):
            crops = self.organ_crops(full, k)
            if crops:
                shapes = torch.cat([crop((full[b:b + 1] == lab).float(), s, self.box) for b, s in crops])
                losses.append(fl.reconstruction_loss(ae(k, shapes)[2], shapes))
        loss = torch.stack(losses).mean() if losses else None
        if self.any_rank(loss is not None):
            self._step(loss, opt, ae.parameters())
        return {"loss": np.array(0.0) if loss is None else loss.detach().cpu().numpy()}

    def _sos_predictions(self, data: torch.Tensor, full: torch.Tensor, keys, train_sol: bool = False):
        """(organ index, SOS logits, reference crops) per organ over its sos_crops; S-Net runs without grad. With
        train_sol the SOL head's heatmap loss on S-Net's (frozen) features is stepped here too."""
        net = self.focus_network
        with torch.no_grad():
            out = net.snet_forward(data, with_heat=not train_sol)
        if train_sol:
            # one SOL pass serves both: its loss steps the head, its (pre-step) values place the crops
            self.sol_optimizer.zero_grad(set_to_none=True)
            heat_logits = net.sol(out.stages)
            self._step(self.heatmap_loss_value(heat_logits, full, keys), self.sol_optimizer, net.sol.parameters())
            out.heat_logits = heat_logits.detach()
        results = []
        for k, lab in enumerate(self.selection.labels):
            crops = self.sos_crops(full, out.heat_logits, k, keys)
            if not crops:
                continue  # not annotated in any item's case: no SOS loss for this organ
            inputs = torch.cat([net.sos_input(data, out, k, b, s) for b, s in crops])
            ref = torch.cat([crop((full[b:b + 1] == lab).float(), s, self.box) for b, s in crops])
            results.append((k, net.sos[k](inputs), ref))
        return results

    def train_step_sos(self, batch: dict) -> dict:
        data, _, full, keys = self._batch(batch)
        self.sos_optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            results = self._sos_predictions(data, full, keys, train_sol="sos" in self.sol_phases)
            loss = torch.stack([fl.sos_loss(logits, ref) for _, logits, ref in results]).mean() if results else None
        if self.any_rank(loss is not None):
            self._step(loss, self.sos_optimizer, self.focus_network.sos.parameters())
        return {"loss": np.array(0.0) if loss is None else loss.detach().cpu().numpy()}

    def train_step_adversarial(self, batch: dict) -> dict:
        data, _, full, keys = self._batch(batch)
        phase = self.current_phase.phase
        ae, ae_opt = unwrap(self.aux_modules["shape_ae"]), self.aux_optimizers["shape_ae"]
        # SOS-Nets: segmentation loss on every crop plus the shape-prior terms on the crops that hold the organ, the
        # autoencoder fixed (its grads dropped below). An empty crop has no shape to constrain, and the autoencoder,
        # which learnt organ shapes only, codes it arbitrarily: with the terms on empty crops the SOS-Nets' validation
        # Dice fell from ~0.8 to 0-0.4 during this phase on the bench (docs/focusnet.md)
        self.sos_optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            results = self._sos_predictions(data, full, keys, train_sol="adversarial" in self.sol_phases)
            shaped = [(k, logits[has], ref[has]) for k, logits, ref in results
                      if (has := ref.flatten(1).any(1)).any()]
            total = [phase.loss_weight("sos") * fl.sos_loss(logits, ref) for _, logits, ref in results]
            for k, logits, ref in shaped:
                terms = fl.shape_prior_terms(ae, k, torch.sigmoid(logits.float()), ref)
                total.append(sum(phase.loss_weight(name) * value for name, value in terms.items()))
            loss = torch.stack(total).sum() / len(results) if results else None
        if not self.any_rank(loss is not None):
            return {"loss": np.array(0.0)}
        self._step(loss, self.sos_optimizer, self.focus_network.sos.parameters())
        # autoencoder: true shapes reconstructed, predicted shapes pushed away in latent space
        ae_opt.zero_grad(set_to_none=True)
        with self.autocast():
            ae_loss = torch.stack([fl.autoencoder_adversarial_loss(ae, k, torch.sigmoid(logits.detach().float()), ref)
                                   for k, logits, ref in shaped]).mean() if shaped else None
        if self.any_rank(ae_loss is not None):
            self._step(ae_loss, ae_opt, ae.parameters())
        return {"loss": np.array(0.0) if loss is None else loss.detach().cpu().numpy()}

    # ------------------------------------------------------------------ threshold on validation
    def on_train_end(self):
        self.calibrate_peak_threshold()
        super().on_train_end()  # writes checkpoint_final with the chosen threshold in the network's buffer

    def calibrate_peak_threshold(self) -> None:
        """Set the network's peak threshold to the candidate with the best small-organ Dice on the fold's validation
        cases (rank 0 predicts, the others receive the value), log the sweep and write it to THRESHOLD_FILE."""
        net = self.focus_network
        candidates = self.peak_threshold_candidates
        if not candidates or net.sol is None or not bool(net.sos_ready):
            reason = "no candidates" if not candidates else "SOS has not trained (the run ended before its phase)"
            self.print_to_log_file(f"FocusNetV2: peak threshold {net.peak_threshold} kept ({reason})")
            return
        chosen = torch.tensor(float(self.peak_threshold), dtype=torch.float64)
        if self.local_rank == 0:
            _, val_keys = self.do_split()
            if not val_keys or self.is_cascaded:
                reason = "no validation cases" if not val_keys else "cascade stage (not supported)"
                self.print_to_log_file(f"FocusNetV2: peak threshold {self.peak_threshold} kept ({reason})")
            else:
                scores = self.threshold_sweep(sorted(val_keys), [float(t) for t in candidates])
                best, means = choose_threshold(scores, self.peak_threshold)
                chosen.fill_(best)
                shown = ", ".join(f"{t}: {m:.3f}" for t, m in means.items()) or "no small organ in them"
                self.print_to_log_file(f"FocusNetV2: peak threshold {best} chosen on {len(val_keys)} validation "
                                       f"cases (mean small-organ Dice per threshold: {shown})")
                write_json_atomic(os.path.join(self.output_folder, THRESHOLD_FILE),
                                  {"chosen": best, "default": float(self.peak_threshold), "validation_cases":
                                   sorted(val_keys), "mean_small_organ_dice": {str(t): m for t, m in means.items()},
                                   "pairs": {str(t): len(v) for t, v in scores.items()}})
        if self.is_ddp:
            chosen = chosen.to(self.device)
            dist.broadcast(chosen, 0)
        net.peak_threshold = float(chosen)

    @torch.no_grad()
    def threshold_sweep(self, keys: list[str], candidates: list[float]) -> dict[float, list[float]]:
        """Dice of every small organ on every validation case (preprocessed space) for each candidate threshold."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        net = self.focus_network
        was_training, previous = net.training, net.peak_threshold
        self.set_deep_supervision_enabled(False)
        net.eval()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(net, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        scores: dict[float, list[float]] = {t: [] for t in candidates}
        try:
            for key in keys:
                data, seg = dataset.load_case(key)[:2]
                data = torch.from_numpy(np.asarray(data[:], dtype=np.float32))
                reference = np.asarray(seg[:])[0]
                for t in candidates:
                    net.peak_threshold = t
                    logits = predictor.predict_sliding_window_return_logits(data)
                    scores[t] += organ_dice(logits.argmax(0).cpu().numpy(), reference, self.selection.labels)
        finally:
            net.peak_threshold = previous
            self.set_deep_supervision_enabled(True)
            net.train(was_training)
        return scores

    # ------------------------------------------------------------------ vital signs
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._localisation = {lab: [] for lab in self.selection.labels}
        self._sos = {lab: [] for lab in self.selection.labels}

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's validation pass, with the S-Net output it computes kept for the heatmap's vital signs
        net = self.focus_network
        net.keep_last_output = True
        try:
            result = super().validation_step(batch)
        finally:
            net.keep_last_output = False
        out, net.last_output = net.last_output, None
        if out is not None and out.heat_logits is not None:
            target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
            self.record_localisation(torch.sigmoid(out.heat_logits.float()).cpu(), target.cpu(), batch.get("keys"))
            if bool(net.sos_ready):
                self.record_sos(batch["data"].to(self.device, non_blocking=True), out, target.to(self.device),
                                batch.get("keys"))
        return result

    @torch.no_grad()
    def record_sos(self, data: torch.Tensor, out, seg: torch.Tensor, keys) -> None:
        """Per item and small organ shown in the patch: the SOS-Net's Dice in the box at the reference centroid (what
        it would paste were the peak exact) and whether it marks any voxel there."""
        net = self.focus_network
        for k, lab in enumerate(self.selection.labels):
            for b, start in self.organ_crops(seg, k, jitter=False):
                if not self.organ_present(keys, b, lab):
                    continue
                pred = net.sos[k](net.sos_input(data, out, k, b, start))[0, 0] > 0
                ref = crop(seg[b:b + 1] == lab, start, self.box)[0, 0]
                dice = 2 * float((pred & ref).sum()) / max(1.0, float(pred.sum() + ref.sum()))
                self._sos.setdefault(lab, []).append((dice, float(pred.any())))

    def record_localisation(self, heat: torch.Tensor, seg: torch.Tensor, keys) -> None:
        """Per item and small organ shown in the patch: (peak height, peak-to-centroid distance in mm, peak within
        half the box on every axis, peak above peak_threshold, peak above the lowest threshold the end of training may
        choose)."""
        spacing = np.asarray(self.configuration_manager.spacing, float)
        half = np.asarray(self.box, float) / 2
        for b in range(seg.shape[0]):
            for k, lab in enumerate(self.selection.labels):
                c = centroid(seg[b, 0] == lab)
                if c is None or not self.organ_present(keys, b, lab):
                    continue
                index, value = peak(heat[b, k])
                offset = np.abs(np.asarray(index, float) - np.asarray(c))
                self._localisation.setdefault(lab, []).append(
                    (value, float(np.linalg.norm(offset * spacing)), bool((offset < half).all()),
                     value > self.peak_threshold, value > self.paste_floor))

    def epoch_vital_signs(self) -> dict[str, float]:
        names = dict(zip(self.selection.labels, self.selection.names, strict=True))
        vitals = {}
        for lab, rows in self._localisation.items():
            # None, not NaN, where no validation patch showed the organ: checkpoints of a resumed run compare equal
            means = np.asarray(rows, float).mean(0).tolist() if rows else [None] * 5
            for group, value in zip(("peak", "error_mm", "in_half_box", "paste_rate", "pasteable"), means,
                                    strict=True):
                vitals[f"{group}/{names[lab]}"] = value
        for lab, rows in self._sos.items():
            # None before the sos phase (SOS untrained, never pasted) and where no validation patch showed the organ
            means = np.asarray(rows, float).mean(0).tolist() if rows else [None] * 2
            for group, value in zip(("sos_dice", "sos_marks"), means, strict=True):
                vitals[f"{group}/{names[lab]}"] = value
        return vitals

    def vital_sign_warnings(self, history: list[dict]) -> list[str]:
        return self.paste_warnings(history) + self.sos_warnings(history)

    @property
    def paste_floor(self) -> float:
        """The lowest peak threshold prediction can end up with: the end of training picks among the candidates."""
        return min(self.peak_threshold_candidates) if self.peak_threshold_candidates else self.peak_threshold

    def paste_warnings(self, history: list[dict]) -> list[str]:
        """After the snet phase: no validation peak of any small organ above even the lowest threshold the end of
        training may choose (judged at peak_threshold alone, the warning fired in runs that then chose 0.1-0.3 and
        pasted)."""
        snet = self.phase_schedule.resolved("snet", self.num_epochs)
        last = history[-1]
        rates = {k: v for k, v in last.items() if k.startswith("pasteable/") and v is not None}
        if last["epoch"] < snet.end - 1 or not rates or any(v > 0 for v in rates.values()):
            return []
        peaks = {k.split("/", 1)[1]: round(v, 3) for k, v in last.items() if k.startswith("peak/") and v is not None}
        return [f"FocusNetV2: no small organ's heatmap peak exceeds {self.paste_floor}, the lowest peak threshold "
                f"the end of training may choose, on the validation patches (mean peaks {peaks}): SOS would never be "
                "pasted and the predictions would be S-Net's alone"]

    def sos_warnings(self, history: list[dict]) -> list[str]:
        """An SOS-Net that has marked no voxel in any validation oracle box for sos_collapse_epochs epochs in a row."""
        recent = [row for row in history if any(k.startswith("sos_marks/") and v is not None for k, v in row.items())]
        recent = recent[-self.sos_collapse_epochs:]
        if len(recent) < self.sos_collapse_epochs or recent[-1] is not history[-1]:
            return []
        organs = [k.split("/", 1)[1] for k, v in recent[-1].items() if k.startswith("sos_marks/") and v is not None]
        dead = [o for o in organs if all(row.get(f"sos_marks/{o}") == 0 for row in recent)]
        return [f"FocusNetV2: the SOS-Net of {organ} has marked no voxel in any validation box around the organ for "
                f"{self.sos_collapse_epochs} epochs: it has collapsed to 'never the organ', and where its heatmap "
                "peak is pasted the organ is erased" for organ in dead]


FocusNetV2Trainer_debug = short_variant(FocusNetV2Trainer, "FocusNetV2Trainer_debug", **{**DEBUG_BUDGET, "epochs": 5})
FocusNetV2Trainer_demo = short_variant(FocusNetV2Trainer, "FocusNetV2Trainer_demo", **DEMO_BUDGET)
