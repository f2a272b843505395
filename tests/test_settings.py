"""Every documented trainer setting takes effect, through both ways of setting it.

The settings of a trainer are the public data attributes in the class bodies of its nnunet_ext classes (demo metadata
aside). They are found automatically, and each must have a probe in PROBES, else the test fails: a new setting cannot
be added without a test that it does something. A probe overrides the setting and checks a value the trainer really
consumes (phase lengths, a loss weight, an optimizer's learning rate, a module's width, a loss computed on a fixed
synthetic batch, the organs FocusNet selects, ...) against a default run:

- Structural settings shape the network, which nnUNetv2_predict builds from the class without an instance
  (classmethod build_network_architecture), or are checked before the instance exists (check_dataset): class
  attributes only, probed through a subclass (STRUCTURAL lists them with the reason).
- Every other setting is read when training starts or per step, so both a subclass that sets it and nnU-Net's own
  pattern (an attribute set on the instance after __init__, as nnUNetTrainer_250epochs does) must work:
  - Init: read by initialize() (or FreeTumor's prepare_synthesis, what on_train_start runs). One trainer whose class
    overrides all of them, one whose instance does (set before initialize), one default; each setting's observable
    is isolated from the others' overrides.
  - Plan: FocusNet's organ and ROI planning (plan_focus, which initialize runs first). These settings interact (an
    organ override replaces the rule that fraction and max_small_organs steer, the box follows the organs), so each
    is probed alone on fresh trainers, planning only.
  - Step: read in a train step or at an epoch start. Probed one at a time on the initialized default trainer: its
    class switched to a one-setting subclass (attribute lookup exactly as in an instance of that subclass), then the
    attribute set on the instance; both must change the observable, identically. The all-override trainers above
    also carry these settings, which must survive initialize().

Networks are narrow (unet_base_features = 4, small auxiliary networks) wherever the probe is not about width.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from conftest import build_trainer
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

import nnunet_ext.trainers
from nnunet_ext.methods.ftsegnet.network import TransformerBlock
from nnunet_ext.methods.weak_cycle.data import load_image
from nnunet_ext.methods.weak_cycle.loss import CYCLE_LOSS_WEIGHTS
from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer, AVFusionTrainer_GAN
from nnunet_ext.trainers.focusnet_trainers import FocusNetV2Trainer
from nnunet_ext.trainers.freetumor_trainers import FreeTumorSynthesisTrainer, FreeTumorTrainer, _FreeTumorBase
from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer, FTSegNetTrainer_DiceFocal
from nnunet_ext.trainers.weak_cycle_trainers import WeakCycleTrainer
from nnunet_ext.training.base import nnUNetExtTrainer, unwrap
from nnunet_ext.training.mirroring import LateralMirroringMixin

# `nnunet_ext demo` metadata and the bench harness's batch source, not training behaviour
NOT_SETTINGS = {"demo_phantom", "demo_dice_floor", "benchmark_own_batches", "setting_choices"}
# string settings that name something (a file) rather than pick one of a few behaviours: no setting_choices entry
FREE_FORM = {"progress_plot"}

TRAINERS = (nnUNetExtTrainer, AVFusionTrainer, AVFusionTrainer_GAN, FTSegNetTrainer, FTSegNetTrainer_DiceFocal,
            FocusNetV2Trainer, WeakCycleTrainer, FreeTumorTrainer, FreeTumorSynthesisTrainer)

STRUCTURAL = {
    "unet_base_features": "caps the widths of every U-Net built from the plans, in build_network_architecture",
    "fusion_mode": "the fusion head's inputs, in build_network_architecture",
    "detach_branches": "built into the fusion network's forward, in build_network_architecture",
    "allow_3d": "read by the classmethod check_dataset, which refuses a data set before the instance exists",
    "use_cpb": "whether the network holds the prior, in build_network_architecture",
    "cpb_spatial_prior": "whether the CPB holds its spatial term, in build_network_architecture",
    "transformer_stages": "transformer blocks of the network, in build_network_architecture",
    "transformer_depth": "transformer blocks of the network, in build_network_architecture",
    "reduction_ratio": "attention reduction convolutions of the network, in build_network_architecture",
    "sos_features": "SOS-Net widths, fixed in the network built by build_network_architecture",
    "peak_threshold": "the network's SOS pasting rule at prediction, in build_network_architecture",
}


def settings_of(cls: type) -> dict[str, type]:
    """{setting: the nnunet_ext class that introduces it} over cls's MRO (nnU-Net's own attributes excluded)."""
    found: dict[str, type] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("nnunet_ext."):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in NOT_SETTINGS or name in found:
                continue
            if inspect.isroutine(value) or isinstance(value, property | classmethod | staticmethod):
                continue
            found[name] = klass
    return found


def trainer_classes() -> set[type]:
    """Trainer classes of the nnunet_ext.trainers modules that introduce a setting of their own (variants such as
    AVFusionTrainer_mean or the _debug budgets only re-set inherited ones; their probes are the introducer's)."""
    out = set()
    for info in pkgutil.iter_modules(nnunet_ext.trainers.__path__):
        module = importlib.import_module(f"nnunet_ext.trainers.{info.name}")
        for obj in vars(module).values():
            # a private base (_FreeTumorBase) is no trainer: its settings are probed through those that inherit them
            if inspect.isclass(obj) and issubclass(obj, nnUNetExtTrainer) and not obj.__name__.startswith("_") \
                    and any(owner is obj for owner in settings_of(obj).values()):
                out.add(obj)
    return out


# ---------------------------------------------------------------------------------------------- probe kinds
@dataclass(frozen=True)
class Structural:
    value: Any
    observe: Callable[[type, Any], Any]  # (trainer class, initialized default trainer) -> observable


@dataclass(frozen=True)
class Init:
    value: Any
    observe: Callable[[Any], Any]  # initialized (and prepared) trainer -> observable
    exact: bool = False  # the observable must be the value itself (where other overrides could also change it)


@dataclass(frozen=True)
class Plan:
    value: Any
    observe: Callable[[Any], Any]  # trainer after plan_focus() -> observable


@dataclass(frozen=True)
class Step:
    value: Any
    observe: Callable[[Any], Any]  # initialized trainer -> observable (seeds its own randomness)


# ---------------------------------------------------------------------------------------------- helpers
def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def network(cls: type, t, deep_supervision: bool | None = None) -> nn.Module:
    """The network nnUNetv2_predict (deep_supervision False) or training builds for class cls."""
    return cls.build_network_architecture(
        t.plans_manager, t.configuration_manager, t.num_input_channels, t.label_manager.num_segmentation_heads,
        t.enable_deep_supervision if deep_supervision is None else deep_supervision)


def phases(t) -> dict[str, tuple[int, int]]:
    return {r.name: (r.start, r.end) for r in t.phase_schedule.resolve(t.num_epochs)}


def phase(t, name: str):
    return next(r.phase for r in t.phase_schedule.resolve(t.num_epochs) if r.name == name)


def loss_weight(phase_name: str, loss: str) -> Callable:
    return lambda t: phase(t, phase_name).loss_weight(loss)


def aux_lr(*names: str) -> Callable:
    return lambda t: tuple(t.aux_optimizers[n].param_groups[0]["lr"] for n in names)


def digest(x: torch.Tensor) -> tuple[float, float]:
    x = x.detach().double()
    return round(float(x.sum()), 4), round(float(x.abs().sum()), 4)


def patch(t) -> tuple[int, ...]:
    return tuple(int(p) for p in t.configuration_manager.patch_size)


def ds_batch(t, seg: torch.Tensor, data: torch.Tensor | None = None) -> dict:
    """A batch as nnU-Net's loader hands it over: data and the target at every deep-supervision scale (nnU-Net's own
    downsampling)."""
    if data is None:
        data = torch.randn((seg.shape[0], t.num_input_channels, *seg.shape[2:]),
                           generator=torch.Generator().manual_seed(1))
    scales = t._get_deep_supervision_scales()
    target: Any = seg
    if scales is not None:
        per_item = [DownsampleSegForDSTransform(scales)._apply_to_segmentation(s) for s in seg]
        target = [torch.stack([levels[i] for levels in per_item]) for i in range(len(scales))]
    return {"data": data, "target": target, "keys": [f"synthetic_{i}" for i in range(seg.shape[0])]}


def random_labels(t, batch: int = 2) -> torch.Tensor:
    classes = t.label_manager.num_segmentation_heads
    return torch.randint(0, classes, (batch, 1, *patch(t)), generator=torch.Generator().manual_seed(2)).float()


def blob(t, label: int, radius: tuple[float, ...], batch: int = 2) -> torch.Tensor:
    """(batch, 1, *patch) label maps with an ellipsoid of `label` in the middle (radius in voxels)."""
    shape = patch(t)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - n / 2) / r) ** 2 for g, n, r in zip(grids, shape, radius, strict=True)) < 1
    seg = np.where(inside, label, 0).astype(np.float32)
    return torch.from_numpy(np.stack([seg[None]] * batch))


def measured_decay(average: nn.Module, model: nn.Module, update: Callable[[], None]) -> float:
    """The decay an EMA update applied: after avg <- d * avg + (1 - d) * model, avg - model = d * (avg0 - model)."""
    before = torch.cat([p.detach().flatten().clone() for p in average.parameters()])
    update()
    after = torch.cat([p.detach().flatten() for p in average.parameters()])
    current = torch.cat([p.detach().flatten() for p in model.parameters()])
    return round(float((after - current).norm() / (before - current).norm()), 4)


def vitals_plot(t) -> list[str]:
    """Files the end of an epoch writes into the fold folder when the trainer reports a vital sign (nnU-Net's own
    epoch-end bookkeeping, which needs a real epoch's logs and writes checkpoints, is skipped for the call)."""
    before = set(os.listdir(t.output_folder))
    t.epoch_vital_signs = lambda: {"probe/value": 1.0}
    t.vital_sign_warnings = lambda history: []
    stock_epoch_end = nnUNetTrainer.on_epoch_end
    nnUNetTrainer.on_epoch_end = lambda self: None
    try:
        t.on_epoch_end()
    finally:
        nnUNetTrainer.on_epoch_end = stock_epoch_end
        del t.epoch_vital_signs, t.vital_sign_warnings
    written = sorted(set(os.listdir(t.output_folder)) - before)
    for name in written:
        os.remove(os.path.join(t.output_folder, name))
    return written


# ---------------------------------------------------------------------------------------------- AV fusion
def av_collapse_warnings(t) -> int:
    """Warnings after three epochs in which the artery branch marked none of its validation pixels."""
    return len(t.vital_sign_warnings([{"epoch": e, "branches/artery dice": 0.0} for e in range(3)]))


@torch.no_grad()
def av_fused_reaches_branches(cls, t) -> bool:
    torch.manual_seed(0)
    net = network(cls, t, deep_supervision=False)
    with torch.enable_grad():
        net(torch.randn(1, t.num_input_channels, *patch(t))).sum().backward()
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.artery.parameters())


def av_refuses_3d(cls, t) -> bool:
    config_3d = SimpleNamespace(patch_size=[8, *patch(t)])
    try:
        cls.check_dataset(t.plans_manager, config_3d, t.label_manager, t.dataset_json, "3d_fullres")
    except ValueError as e:
        assert "2D method" in str(e), e
        return True
    return False


@torch.no_grad()
def av_segmentation_loss(t) -> float:
    data, target, full = t.batch_to_device(ds_batch(t, random_labels(t)))
    return round(float(t.segmentation_losses(data, target, full)[1]), 5)


# ---------------------------------------------------------------------------------------------- FTSegNet
def transformer_blocks(cls, t) -> tuple[int, ...]:
    stages = network(cls, t).transformers
    return tuple(sum(isinstance(m, TransformerBlock) for m in stage.modules()) for stage in stages)


def attention_reductions(cls, t) -> tuple:
    return tuple(None if m.attention.reduce is None else tuple(m.attention.reduce.kernel_size)
                 for m in network(cls, t).modules() if isinstance(m, TransformerBlock))


@torch.no_grad()
def segmentation_loss_value(t) -> float:
    batch = ds_batch(t, random_labels(t))
    g = torch.Generator().manual_seed(3)
    heads = t.label_manager.num_segmentation_heads
    outputs = [torch.randn((x.shape[0], heads, *x.shape[2:]), generator=g) for x in batch["target"]]
    return round(float(t.loss(outputs, batch["target"])), 5)


def ftsegnet_gate_calibration(t) -> int:
    """Patches the CPB gates are calibrated on (0: not calibrated), through the prior's training loader."""
    loaders = t.prior_dataloaders()
    try:
        return t.calibrate_gates(loaders[0])
    finally:
        for loader in loaders:
            loader._finish() if hasattr(loader, "_finish") else None


# ---------------------------------------------------------------------------------------------- FocusNet
def organ_seg(t) -> torch.Tensor:
    """One item with a 3-voxel cube of every selected small organ, spread along the last axis."""
    shape = patch(t)
    seg = torch.zeros((1, 1, *shape))
    for k, lab in enumerate(t.selection.labels):
        centre = [n // 2 for n in shape]
        centre[-1] = (k + 1) * shape[-1] // (len(t.selection.labels) + 1)
        seg[(0, 0, *[slice(c - 1, c + 2) for c in centre])] = lab
    return seg


def heatmap_mass(t) -> float:
    return round(float(t.heatmap_targets(organ_seg(t), None)[0].sum()), 3)


def roi_crop_starts(t) -> list:
    np.random.seed(0)
    return t.organ_crops(organ_seg(t), 0)


def heatmap_loss_at_zero(t) -> float:
    seg = organ_seg(t)
    logits = torch.zeros((1, len(t.selection.labels), *seg.shape[2:]))
    return round(float(t.heatmap_loss_value(logits, seg, None)), 5)


def sos_crop_starts(t) -> list:
    """SOS crops when the heatmap peaks in a corner, far from every organ."""
    seg = organ_seg(t)
    heat = torch.zeros((1, len(t.selection.labels), *seg.shape[2:]))
    heat[(0, slice(None), *[0] * (seg.ndim - 2))] = 1.0
    np.random.seed(0)
    return t.sos_crops(seg, heat, 0, None)


def sos_crop_items(t) -> list:
    """Batch items that get an SOS crop when one item of six shows the organs and five do not."""
    seg = torch.cat([organ_seg(t), torch.zeros((5, 1, *patch(t)))])
    heat = torch.zeros((6, len(t.selection.labels), *seg.shape[2:]))
    np.random.seed(0)
    return [b for b, _ in t.sos_crops(seg, heat, 0, None)]


def sos_collapse_warnings(t) -> int:
    """Warnings after three epochs in which organ 0's SOS-Net marked nothing in any validation box."""
    organ = t.selection.names[0]
    return len(t.sos_warnings([{"epoch": e, f"sos_marks/{organ}": 0.0} for e in range(3)]))


def sos_params(cls, t) -> int:
    net = network(cls, t)
    net.configure(t.selection.labels, t.box)
    return n_params(net.sos)


@torch.no_grad()
def sos_pasted(cls, t) -> bool:
    """Whether prediction pastes SOS results when every heatmap peaks at sigmoid(10) = 0.99995."""
    torch.manual_seed(0)
    net = network(cls, t, deep_supervision=False)
    net.configure(t.selection.labels, t.box)
    net.sol.body[-1].bias.fill_(10.0)
    net.sos_ready.fill_(True)
    net.eval()
    x = torch.randn(1, t.num_input_channels, *patch(t))
    out = net.snet_forward(x)
    return not torch.equal(net.paste_sos(x, out), out.logits)


def swept_thresholds(t) -> list:
    """The peak thresholds the end-of-training calibration predicts the validation cases with."""
    net = t.focus_network
    net.sos_ready.fill_(True)
    t.calibrate_peak_threshold()
    chosen = json.loads((Path(t.output_folder) / "focusnet_peak_threshold.json").read_text())
    assert net.peak_threshold == chosen["chosen"]
    return sorted(chosen["pairs"])


# ---------------------------------------------------------------------------------------------- WeakCycle
@torch.no_grad()
def weak_lesion_map(t) -> tuple:
    data = torch.randn((t.num_input_channels, 1, *patch(t)), generator=torch.Generator().manual_seed(4)).numpy()
    return digest(torch.from_numpy(t.lesion_probability(t.aux_modules["gen_ab"], data)))


def weak_translation_precision(t) -> str:
    """The dtype a convolution computes in inside the translation step's precision context, with the trainer's own
    mixed precision switched on (bfloat16 on the CPU, as nnU-Net's float16 on CUDA)."""
    t.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    conv = nn.Conv2d(1, 1, 1)
    with t.translation_autocast():
        return str(conv(torch.ones(1, 1, 2, 2)).dtype)


def weak_binarised(t) -> tuple:
    """The pseudo-mask of a fixed map (background 0.1, a 0.6 region, a large and a 5x5 blob at 0.9) with a
    validation-chosen threshold of 0.8 on record: Otsu keeps the 0.6 region, 0.8 does not; an opening wider than
    the 5x5 blob removes it."""
    t.pseudo_threshold = {"threshold": 0.8}
    probability = np.full((1, 32, 32), 0.1, np.float32)
    probability[0, 2:14, 2:14] = 0.9
    probability[0, 20:25, 20:25] = 0.9
    probability[0, 2:12, 20:30] = 0.6
    body = np.ones(probability.shape, bool)
    return digest(torch.from_numpy(t.binarise(probability, body, t.global_threshold())[0].astype(np.uint8)))


def weak_teacher_decay(t) -> float:
    student, teacher = unwrap(t.network), unwrap(t.aux_modules["teacher"])
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in student.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return measured_decay(teacher, student, t.update_teacher)


def weak_training_case(t) -> tuple[str, np.ndarray]:
    case = sorted(t.do_split()[0])[0]
    dataset = t.dataset_class(t.preprocessed_dataset_folder, [case])
    return case, load_image(dataset, case)


def weak_teacher_rewrites(t) -> int:
    """Pixels of a checkerboard pseudo-mask that the teacher's update rewrites."""
    case, data = weak_training_case(t)
    board = (np.indices(data.shape[1:]).sum(0) % 2).astype(np.int8)[None]
    t.pseudo_masks = {case: board.copy()}
    t.update_pseudo_masks_from_teacher()
    return int((t.pseudo_masks[case] != board).sum())


def weak_selected_generator(t) -> float:
    """G_AB's weights after the phase switch's choice, with an all-zero snapshot of an earlier epoch on record that
    scored better on validation than the last epoch: "validation" loads it, "last" keeps the current weights."""
    generator = unwrap(t.aux_modules["gen_ab"])
    saved = {k: v.clone() for k, v in generator.state_dict().items()}
    history = t.vital_history
    t.selected_generator = {"epoch": 0, "dice": 0.5, "state": {k: torch.zeros_like(v) for k, v in saved.items()}}
    t.vital_history = [{"epoch": 1, t.selection_key(): 0.4}]
    try:
        t.use_selected_generator()
        return float(sum(p.detach().abs().sum() for p in generator.parameters()))
    finally:
        generator.load_state_dict(saved)
        t.selected_generator, t.vital_history = None, history


def weak_update_epochs(t) -> list[int]:
    """The refinement epochs whose start rewrites the pseudo-masks from the teacher."""
    case, data = weak_training_case(t)
    t.pseudo_masks = {case: np.zeros((1, *data.shape[1:]), np.int8)}
    t.teacher_ready = True
    calls: list[int] = []
    t.update_pseudo_masks_from_teacher = lambda: calls.append(t.current_epoch)
    try:
        start = phases(t)["refinement"][0]
        for epoch in range(start, start + 8):
            t.current_epoch = epoch
            t.on_train_epoch_start()
    finally:
        del t.update_pseudo_masks_from_teacher
    return calls


def weak_consistency_samples(t) -> list | None:
    """The samples of a (normal, disease) batch that the consistency term covers (None: all)."""
    case, data = weak_training_case(t)
    t.pseudo_masks = {case: np.zeros((1, *data.shape[1:]), np.int8)}
    index = t.consistency_samples(["a normal case", case], 2)
    return None if index is None else index.tolist()


def weak_strong_view(t) -> tuple:
    """The student's view of a fixed patch as the loader's workers make it (nnU-Net's intensity augmentations left
    out, so that only the extra contrast, brightness and noise act)."""
    np.random.seed(6)
    torch.manual_seed(6)
    image = torch.randn((t.num_input_channels, *patch(t)), generator=torch.Generator().manual_seed(7))
    views = t.strong_view_transform(ComposeTransforms([]))(image=image)["image"]
    return digest(views[:t.num_input_channels])


# ---------------------------------------------------------------------------------------------- FreeTumor
def organ_blob(t, batch: int = 2) -> torch.Tensor:
    """Label maps with a large liver (label 1) and no tumour: every patch is eligible for synthesis."""
    return blob(t, 1, tuple(0.4 * n for n in patch(t)), batch)


def tumour_size_classes(t) -> list:
    seg = organ_blob(t, 1)[0, 0].numpy().astype(np.int16)
    drawn = [t.synthesizer.sample(seg, 1, np.random.default_rng(seed)) for seed in range(8)]
    return [None if d is None else d[0].size_class for d in drawn]


def tumour_texture_amplitude(t) -> float:
    seg = organ_blob(t, 1)[0, 0].numpy().astype(np.int16)
    return round(float(t.synthesizer.sample(seg, 1, np.random.default_rng(0), "small")[1].std()), 3)


def _in_step(t, qc_mode: str | None = None):
    """Synthesis in the train step (the probes' default trainer runs it in the workers, without quality control)."""
    t.location = "step"
    if qc_mode is not None:
        t.qc_mode = qc_mode


def _restore(t, location: str, qc_mode: str) -> None:
    t.location, t.qc_mode = location, qc_mode


def synthesised(t) -> int:
    location, qc_mode = t.location, t.qc_mode
    _in_step(t)
    try:
        t.synthesis_rng = np.random.default_rng(0)
        t.synthesis_counts = Counter()
        t.current_epoch = 0
        t.synthesise_batch(ds_batch(t, organ_blob(t, 4)))
        return t.synthesis_counts["synthesised"]
    finally:
        _restore(t, location, qc_mode)


class _HalfJudge(nn.Module):
    """A quality-control baseline that labels every other voxel column liver tumour (2): about half of any
    synthetic liver tumour."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((x.shape[0], self.classes, *x.shape[2:]))
        logits[:, 2, ..., ::2] = 1.0
        logits[:, 0, ..., 1::2] = 1.0
        return logits


def qc_verdicts(t) -> tuple[int, int, int]:
    location, qc_mode = t.location, t.qc_mode
    _in_step(t, "checkpoint")
    t.baseline = _HalfJudge(t.label_manager.num_segmentation_heads)
    try:
        t.synthesis_rng = np.random.default_rng(0)
        t.synthesis_counts = Counter()
        for _ in range(4):
            t.synthesise_batch(ds_batch(t, organ_blob(t, 4)))
    finally:
        t.baseline = None
        _restore(t, location, qc_mode)
    return t.synthesis_counts["accepted"], t.synthesis_counts["rejected"], t.synthesis_counts["floor_kept"]


def qc_judge_timing(t) -> int:
    return t.qc_warmup_epochs()


def qc_auto_mode(t) -> str:
    """What quality_control 'auto' chooses on the fixture (2 of fold 0's 6 training cases hold a real tumour, one of
    them a liver tumour)."""
    had = "quality_control" in t.__dict__
    old = t.__dict__.get("quality_control")
    t.quality_control = "auto"
    try:
        return t.resolve_quality_control()[0]
    finally:
        if had:
            t.quality_control = old
        else:
            del t.quality_control


def qc_baseline_phase(t) -> tuple:
    qc_mode = t.qc_mode
    t.qc_mode = "baseline"
    try:
        return tuple((p.phase.name, p.start, p.end) for p in t.build_phase_schedule().resolve(t.num_epochs))
    finally:
        t.qc_mode = qc_mode


def freetumor_ema_decay(t) -> float:
    from nnunet_ext.methods.freetumor.quality import ema_copy

    location, qc_mode = t.location, t.qc_mode
    _in_step(t, "ema")
    t.aux_modules["ema"] = ema_copy(unwrap(t.network))
    t.network.train()
    batch = ds_batch(t, organ_blob(t))
    t.synthesis_rng = np.random.default_rng(0)
    try:
        return measured_decay(t.aux_modules["ema"], unwrap(t.network), lambda: t.train_step(batch))
    finally:
        del t.aux_modules["ema"]
        _restore(t, location, qc_mode)


def synthesis_adversarial_weight(t) -> float:
    t.synthesis_rng = np.random.default_rng(0)
    losses = t.synthesis_losses(ds_batch(t, organ_blob(t)))
    return round((losses["generator"] - losses["segmentation"]) / losses["adversarial"], 4)


def encoder_widths(name: str) -> Callable:
    return lambda t: tuple(unwrap(t.aux_modules[name]).unet.encoder.output_channels)


# ---------------------------------------------------------------------------------------------- the probes
def _network_params(cls, t) -> int:
    return n_params(network(cls, t))


PROBES: dict[tuple[type, str], Structural | Init | Plan | Step] = {
    (nnUNetExtTrainer, "unet_base_features"): Structural(2, _network_params),
    (nnUNetExtTrainer, "progress_plot"): Step("vital_signs_probe.png", vitals_plot),
    # AV fusion
    (AVFusionTrainer, "fusion_mode"): Structural("mean", _network_params),
    (AVFusionTrainer, "detach_branches"): Structural(False, av_fused_reaches_branches),
    (AVFusionTrainer, "allow_3d"): Structural(True, av_refuses_3d),
    (AVFusionTrainer, "branch_loss_weight"): Step(0.25, av_segmentation_loss),
    (AVFusionTrainer, "vital_collapse_epochs"): Step(2, av_collapse_warnings),
    (AVFusionTrainer_GAN, "adversarial_weight"): Init(0.5, loss_weight("adversarial", "adversarial")),
    (AVFusionTrainer_GAN, "mse_weight"): Init(2.0, loss_weight("adversarial", "mse")),
    (AVFusionTrainer_GAN, "discriminator_lr"): Init(1e-3, aux_lr("discriminator")),
    # FTSegNet
    (FTSegNetTrainer, "use_cpb"): Structural(False, _network_params),
    (FTSegNetTrainer, "cpb_spatial_prior"): Structural(False, _network_params),
    (FTSegNetTrainer, "transformer_stages"): Structural(1, transformer_blocks),
    (FTSegNetTrainer, "transformer_depth"): Structural(2, transformer_blocks),
    (FTSegNetTrainer, "reduction_ratio"): Structural(1, attention_reductions),
    (FTSegNetTrainer, "prior_iterations"): Step(7, lambda t: t.prior_iterations_left()),
    (FTSegNetTrainer, "transformer_optimizer"): Init("sgd", lambda t: t.optimizer.param_groups[1]["rule"]),
    (FTSegNetTrainer, "transformer_lr"): Init(1e-4, lambda t: t.optimizer.param_groups[1]["initial_lr"]),
    (FTSegNetTrainer, "transformer_weight_decay"):
        Init(0.05, lambda t: t.optimizer.param_groups[1]["weight_decay"]),
    (FTSegNetTrainer, "transformer_warmup"): Init(10, lambda t: t.optimizer.param_groups[1]["warmup"]),
    (FTSegNetTrainer, "prior_lr"): Init(3e-4, aux_lr("prior")),
    (FTSegNetTrainer, "cpb_gate_standardised"): Step(False, ftsegnet_gate_calibration),
    (FTSegNetTrainer, "gate_calibration_batches"): Step(3, ftsegnet_gate_calibration),
    (FTSegNetTrainer_DiceFocal, "focal_gamma"): Init(0.5, segmentation_loss_value),
    # FocusNetV2
    (FocusNetV2Trainer, "sos_features"): Structural(8, sos_params),
    (FocusNetV2Trainer, "peak_threshold"): Structural(1.0, sos_pasted),
    (FocusNetV2Trainer, "peak_threshold_candidates"): Step((0.95,), swept_thresholds),
    (FocusNetV2Trainer, "small_organs"): Plan(("brainstem",), lambda t: t.selection.labels),
    (FocusNetV2Trainer, "small_organ_fraction"): Plan(0.02, lambda t: t.selection.threshold_voxels),
    (FocusNetV2Trainer, "max_small_organs"): Plan(1, lambda t: t.selection.labels),
    (FocusNetV2Trainer, "roi_margin_mm"): Plan(9.0, lambda t: t.box),
    (FocusNetV2Trainer, "roi_percentile"): Plan(0.0, lambda t: t.box),
    (FocusNetV2Trainer, "roi_jitter"): Step(0.0, roi_crop_starts),
    (FocusNetV2Trainer, "sos_predicted_crop_fraction"): Step(1.0, sos_crop_starts),
    (FocusNetV2Trainer, "sos_absent_crop_ratio"): Step(None, sos_crop_items),
    (FocusNetV2Trainer, "sos_collapse_epochs"): Step(2, sos_collapse_warnings),
    (FocusNetV2Trainer, "heatmap_loss"): Step("mse", heatmap_loss_at_zero),
    (FocusNetV2Trainer, "sol_lr"): Init(1e-3, lambda t: t.sol_optimizer.param_groups[0]["lr"]),
    (FocusNetV2Trainer, "sol_detach_features"): Init(False, lambda t: t.focus_network.sol_detached),
    (FocusNetV2Trainer, "sol_input"): Init("last", lambda t: t.focus_network.sol.context),
    (FocusNetV2Trainer, "sol_features"): Init(16, lambda t: t.focus_network.sol.body[0].out_channels),
    (FocusNetV2Trainer, "sol_stage"): Init(0, lambda t: t.focus_network.sol.stage),
    (LateralMirroringMixin, "lateral_axis"): Init(
        None, lambda t: t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3]),
    (FocusNetV2Trainer, "sol_phases"): Init(("snet", "sos", "adversarial"), lambda t: t.sol_scheduler.max_steps),
    (FocusNetV2Trainer, "heatmap_sigma"): Plan(1.0, heatmap_mass),
    (FocusNetV2Trainer, "heatmap_weight"): Init(0.5, loss_weight("snet", "heatmap")),
    (FocusNetV2Trainer, "latent_weight"): Init(2.5, loss_weight("adversarial", "latent")),
    (FocusNetV2Trainer, "feature_weight"): Init(0.5, loss_weight("adversarial", "feature")),
    (FocusNetV2Trainer, "mse_weight"): Init(3.0, loss_weight("adversarial", "mse")),
    (FocusNetV2Trainer, "sos_lr"): Init(3e-4, lambda t: t.sos_optimizer.param_groups[0]["lr"]),
    (FocusNetV2Trainer, "shape_lr"): Init(3e-4, aux_lr("shape_ae")),
    (FocusNetV2Trainer, "shape_features"): Init(6, lambda t: n_params(t.aux_modules["shape_ae"])),
    (FocusNetV2Trainer, "phase_fractions"): Init((0.25, 0.25, 0.25), phases),
    # WeakCycle
    (WeakCycleTrainer, "pseudo_source"): Step("cam", weak_lesion_map),
    (WeakCycleTrainer, "translation_fraction"): Init(0.25, phases),
    (WeakCycleTrainer, "generator_features"):
        Init(16, lambda t: unwrap(t.aux_modules["gen_ab"]).encoder[0].out_channels),
    (WeakCycleTrainer, "generator_blocks"): Init(2, lambda t: len(unwrap(t.aux_modules["gen_ab"]).blocks)),
    (WeakCycleTrainer, "attention_min_cells"): Init(0, lambda t: unwrap(t.aux_modules["gen_ab"]).n_down),
    (WeakCycleTrainer, "discriminator_features"):
        Init(16, lambda t: unwrap(t.aux_modules["disc_global_a"]).body[0].out_channels),
    (WeakCycleTrainer, "translation_lr"):
        Init(2e-4, aux_lr("gen_ab", "gen_ba", "disc_global_a", "disc_local_a", "disc_global_b", "disc_local_b")),
    (WeakCycleTrainer, "translation_amp"): Step(True, weak_translation_precision),
    (WeakCycleTrainer, "translation_weight_decay"):
        Init(1e-4, lambda t: t.aux_optimizers["gen_ab"].param_groups[0]["weight_decay"]),
    (WeakCycleTrainer, "threshold_mode"): Step("validation", weak_binarised),
    (WeakCycleTrainer, "opening_radius"): Step(3, weak_binarised),
    (WeakCycleTrainer, "cycle_loss_weights"):
        Init({k: 2 * v for k, v in CYCLE_LOSS_WEIGHTS.items()}, lambda t: dict(phase(t, "translation").losses)),
    (WeakCycleTrainer, "ema_decay"): Step(0.5, weak_teacher_decay),
    (WeakCycleTrainer, "consistency_weight"): Init(0.5, loss_weight("refinement", "consistency")),
    (WeakCycleTrainer, "consistency_on_certain"): Step(True, weak_consistency_samples),
    (WeakCycleTrainer, "teacher_confidence"): Step(0.5, weak_teacher_rewrites),
    (WeakCycleTrainer, "teacher_keep_fraction"): Step(None, weak_teacher_rewrites),
    (WeakCycleTrainer, "teacher_uncertain"): Step("ignore", weak_teacher_rewrites),
    (WeakCycleTrainer, "pseudo_update_every"): Step(2, weak_update_epochs),
    (WeakCycleTrainer, "generator_selection"): Step("last", weak_selected_generator),
    (WeakCycleTrainer, "strong_noise_std"): Step(0.5, weak_strong_view),
    (WeakCycleTrainer, "strong_contrast"): Step(0.5, weak_strong_view),
    (WeakCycleTrainer, "strong_brightness"): Step(0.5, weak_strong_view),
    # FreeTumor
    (_FreeTumorBase, "organ_tumour_labels"): Init({1: 2}, lambda t: t.synthesizer.pairs),
    (_FreeTumorBase, "size_probabilities"): Init({"tiny": 1.0}, tumour_size_classes),
    (_FreeTumorBase, "texture_amplitude"): Init(0.1, tumour_texture_amplitude),
    (_FreeTumorBase, "stats_max_cases"): Init(1, lambda t: t.intensity_stats[1].n_organ),
    (_FreeTumorBase, "procedural_contrast_hu"): Init((10.0, 20.0), lambda t: t.synthesizer.contrast_hu),
    (_FreeTumorBase, "max_organ_share"): Init(0.25, lambda t: t.synthesizer.max_organ_share),
    (FreeTumorTrainer, "synthesis_probability"): Step(1.0, synthesised),
    # the probes' base sets quality_control 'off', so 'auto' puts synthesis in the workers
    (FreeTumorTrainer, "synthesis_location"): Init("step", lambda t: t.location),
    (FreeTumorTrainer, "quality_control"): Init("ema", lambda t: (t.qc_mode, sorted(t.aux_modules))),
    # 1: with the organ_tumour_labels override ({1: 2}) one training case of the fixture holds a liver tumour
    (FreeTumorTrainer, "qc_min_tumour_cases"): Init(1, qc_auto_mode),
    (FreeTumorTrainer, "qc_baseline_fraction"): Init(0.5, qc_baseline_phase),
    (FreeTumorTrainer, "qc_acceptance_floor"): Step(1.0, qc_verdicts),
    (FreeTumorTrainer, "qc_threshold"): Step(0.3, qc_verdicts),
    (FreeTumorTrainer, "qc_warmup"): Step(3, qc_judge_timing),
    (FreeTumorTrainer, "ema_decay"): Step(0.5, freetumor_ema_decay),
    (FreeTumorSynthesisTrainer, "generator_features"): Init((8, 16), encoder_widths("generator")),
    (FreeTumorSynthesisTrainer, "discriminator_features"): Init((8, 16), encoder_widths("discriminator")),
    (FreeTumorSynthesisTrainer, "baseline_fraction"): Init(0.25, phases),
    (FreeTumorSynthesisTrainer, "generator_lr"): Init(3e-4, aux_lr("generator")),
    (FreeTumorSynthesisTrainer, "discriminator_lr"): Init(3e-4, aux_lr("discriminator")),
    (FreeTumorSynthesisTrainer, "adversarial_weight"): Step(0.5, synthesis_adversarial_weight),
    # None (the default) derives the scale from the measured statistics; the override must be the scale used
    (FreeTumorSynthesisTrainer, "difference_scale"):
        Init(0.5, lambda t: t.generator_state()["difference_scale"], exact=True),
}


@dataclass(frozen=True)
class Spec:
    fixture: str
    configuration: str
    base: dict  # class attributes of the test's base subclass: narrow networks
    num_epochs: int = 20
    env: tuple = ()
    prepare: Callable[[Any], None] = lambda t: None  # after initialize: what on_train_start adds


def _prepare_synthesis(t) -> None:
    t.prepare_synthesis()


NARROW = {"unet_base_features": 4}
FREETUMOR = Spec("abdomen_preprocessed", "3d_fullres", {**NARROW, "quality_control": "off"},
                 env=(("nnUNet_ext_seed", "0"),), prepare=_prepare_synthesis)
SPECS = {
    nnUNetExtTrainer: Spec("av_preprocessed", "2d", NARROW),
    AVFusionTrainer: Spec("av_preprocessed", "2d", NARROW),
    AVFusionTrainer_GAN: Spec("av_preprocessed", "2d", NARROW),
    FTSegNetTrainer: Spec("tumour_preprocessed", "2d", NARROW),
    FTSegNetTrainer_DiceFocal: Spec("tumour_preprocessed", "2d", NARROW),
    FocusNetV2Trainer: Spec("hn_preprocessed", "3d_fullres", {**NARROW, "sos_features": 4, "shape_features": 4}),
    # 100 epochs: the refinement phase starts at 50, room for the epoch-start probe's repeated epochs in the log
    WeakCycleTrainer: Spec("weak_preprocessed", "2d", {**NARROW, "generator_features": 8, "generator_blocks": 1,
                                                      "discriminator_features": 8}, num_epochs=100),
    FreeTumorTrainer: FREETUMOR,
    FreeTumorSynthesisTrainer: Spec(FREETUMOR.fixture, FREETUMOR.configuration,
                                    {**NARROW, "generator_features": (4, 8), "discriminator_features": (4, 8)},
                                    env=FREETUMOR.env, prepare=_prepare_synthesis),
}


def test_settings_all_have_probes():
    assert trainer_classes() == set(TRAINERS)
    missing = [f"setting {name} of {cls.__name__} has no probe" for cls in TRAINERS
               for name, owner in settings_of(cls).items() if (owner, name) not in PROBES]
    assert not missing, "\n".join(missing)
    for (owner, name), probe in PROBES.items():
        assert settings_of(owner).get(name) is owner, f"probe for {owner.__name__}.{name}, which it does not define"
        assert (name in STRUCTURAL) == isinstance(probe, Structural), f"{name}: STRUCTURAL and its probe disagree"
    assert set(SPECS) == set(TRAINERS)
    for cls in TRAINERS:
        for name, owner in settings_of(cls).items():
            default = SPECS[cls].base.get(name, getattr(cls, name))
            assert PROBES[(owner, name)].value != default, f"{cls.__name__}.{name}: the probe's value is the default"


def test_settings_choices_declared():
    """Every setting that picks a behaviour by name declares its allowed values (setting_choices), which hold its
    default and its probe's value: a new one cannot skip the start-up check below."""
    for cls in TRAINERS:
        choices = cls.declared_setting_choices()
        settings = settings_of(cls)
        assert set(choices) <= set(settings), f"{cls.__name__}: choices for non-settings {set(choices) - set(settings)}"
        for name, owner in settings.items():
            default = getattr(cls, name)
            if isinstance(default, str) and name not in FREE_FORM:
                assert name in choices, f"{cls.__name__}.{name} picks a behaviour by name but has no setting_choices"
            if name in choices:
                assert default in choices[name], f"{cls.__name__}.{name}: default {default!r} not allowed"
                assert PROBES[(owner, name)].value in choices[name], f"{cls.__name__}.{name}: probe value not allowed"


@pytest.mark.parametrize("trainer", [c for c in TRAINERS if c.declared_setting_choices()], ids=lambda c: c.__name__)
def test_settings_mistyped_choice_refused_at_start(trainer, request, tmp_path, monkeypatch):
    """A mistyped choice fails initialize() with the setting, the value and the allowed ones named, before the
    network is built: not at the phase that first reads it (WeakCycle's teacher rule: after the whole translation)."""
    spec = SPECS[trainer]
    pre = request.getfixturevalue(spec.fixture)
    base = type(f"{trainer.__name__}_choices", (trainer,), {"__module__": __name__, **spec.base})
    t = build_trainer(base, pre, tmp_path, monkeypatch, spec.configuration, **dict(spec.env))
    for name, allowed in trainer.declared_setting_choices().items():
        typo = f"{allowed[0]}_"
        setattr(t, name, typo)
        with pytest.raises(ValueError) as error:
            t.initialize()
        delattr(t, name)
        assert f"{name} must be one of {list(allowed)}, got {typo!r}" in str(error.value)
        assert t.network is None and not t.was_initialized
    # and in a subclass, as variants set them
    name, allowed = next(iter(trainer.declared_setting_choices().items()))
    variant = type(f"{base.__name__}_typo", (base,), {"__module__": __name__, name: allowed[0].upper()})
    with pytest.raises(ValueError, match=f"{variant.__name__}.{name} must be one of"):
        build_trainer(variant, pre, tmp_path / "variant", monkeypatch, spec.configuration,
                      **dict(spec.env)).initialize()


# ---------------------------------------------------------------------------------------------- the test
@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda c: c.__name__)
def test_settings_take_effect(trainer, request, tmp_path, monkeypatch):
    spec = SPECS[trainer]
    pre = request.getfixturevalue(spec.fixture)
    base = type(f"{trainer.__name__}_settings", (trainer,), {"__module__": __name__, **spec.base})
    probes = {name: PROBES[(owner, name)] for name, owner in settings_of(trainer).items()}
    failures: list[str] = []

    def build(cls, folder: str, before: Callable | None = None):
        t = build_trainer(cls, pre, tmp_path / folder, monkeypatch, spec.configuration, **dict(spec.env))
        t.num_epochs = spec.num_epochs
        if before is not None:
            before(t)
        return t

    def ready(cls, folder: str, before: Callable | None = None):
        t = build(cls, folder, before)
        torch.manual_seed(0)
        t.initialize()
        spec.prepare(t)
        return t

    def differs(name: str, how: str, default, changed) -> None:
        if changed == default:
            failures.append(f"{trainer.__name__}.{name} = {probes[name].value!r} {how} has no effect: the "
                            f"observable stays {default!r}")

    default = ready(base, "default")

    # class attribute or instance attribute, set before training starts: one trainer each, all settings at once
    overrides = {n: p.value for n, p in probes.items() if isinstance(p, Init | Step)}
    if overrides:
        by_class = ready(type(f"{base.__name__}_overridden", (base,), overrides), "by_class")

        def set_on_instance(t) -> None:
            for n, v in overrides.items():
                setattr(t, n, v)

        by_instance = ready(base, "by_instance", set_on_instance)
        for name, probe in probes.items():
            if isinstance(probe, Init):
                seen = probe.observe(default)
                differs(name, "in a subclass", seen, probe.observe(by_class))
                differs(name, "on the instance", seen, probe.observe(by_instance))
                if probe.observe(by_class) != probe.observe(by_instance):
                    failures.append(f"{trainer.__name__}.{name}: subclass and instance attribute disagree")
                if probe.exact and probe.observe(by_class) != probe.value:
                    failures.append(f"{trainer.__name__}.{name}: uses {probe.observe(by_class)!r}, not the value set")
            elif isinstance(probe, Step):
                for how, t in (("in a subclass", by_class), ("on the instance", by_instance)):
                    if getattr(t, name) != probe.value:
                        failures.append(f"{trainer.__name__}.{name} {how} did not survive initialize()")

    # per-step settings, one at a time on the initialized default trainer
    for name, probe in probes.items():
        if not isinstance(probe, Step):
            continue
        seen = probe.observe(default)
        default.__class__ = type(f"{base.__name__}_{name}", (base,), {name: probe.value})
        try:
            by_class = probe.observe(default)
        finally:
            default.__class__ = base
        setattr(default, name, probe.value)
        try:
            by_instance = probe.observe(default)
        finally:
            delattr(default, name)
        differs(name, "in a subclass", seen, by_class)
        differs(name, "on the instance", seen, by_instance)
        if by_class != by_instance:
            failures.append(f"{trainer.__name__}.{name}: subclass and instance attribute disagree")

    # FocusNet's planning settings, one at a time on fresh trainers (planning only)
    plan = {n: p for n, p in probes.items() if isinstance(p, Plan)}
    if plan:
        planned = build(base, "plan_default")
        planned.plan_focus()
        for name, probe in plan.items():
            by_class = build(type(f"{base.__name__}_{name}", (base,), {name: probe.value}), f"plan_{name}")
            by_class.plan_focus()
            by_instance = build(base, f"plan_{name}_instance", lambda t, n=name, v=probe.value: setattr(t, n, v))
            by_instance.plan_focus()
            seen = probe.observe(planned)
            differs(name, "in a subclass", seen, probe.observe(by_class))
            differs(name, "on the instance", seen, probe.observe(by_instance))
            if probe.observe(by_class) != probe.observe(by_instance):
                failures.append(f"{trainer.__name__}.{name}: subclass and instance attribute disagree")

    # structural settings: class attributes, through a subclass only
    for name, probe in probes.items():
        if isinstance(probe, Structural):
            sub = type(f"{base.__name__}_{name}", (base,), {name: probe.value})
            differs(name, "in a subclass", probe.observe(base, default), probe.observe(sub, default))

    assert not failures, "\n".join(failures)
