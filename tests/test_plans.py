"""Planner presets (nnunet_ext.plans, `nnunet_ext plan`): the cost count, the plans they write, bad input, and every
trainer of ours building its network from the cpu preset and from nnU-Net's ResEnc M preset.

Planning needs only a data set's fingerprint, dataset.json and file names: `_fake_dataset` writes a fingerprint
that says what the images are (shape, spacing), beside 8x8 placeholder PNGs, so that planning for a DRIVE-sized or
CT-sized data set takes a second and no fingerprint extraction."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncM,
)
from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from PIL import Image
from torch import nn

import nnunet_ext.trainers.av_fusion_trainers
import nnunet_ext.trainers.baseline_trainers
import nnunet_ext.trainers.focusnet_trainers
import nnunet_ext.trainers.freetumor_trainers
import nnunet_ext.trainers.ftsegnet_trainers
import nnunet_ext.trainers.weak_cycle_trainers
from nnunet_ext.cli import main
from nnunet_ext.phantoms import fundus2d
from nnunet_ext.plans import PRESETS, plain_unet_macs
from nnunet_ext.plans.presets import CPU_MACS_PER_ITERATION
from nnunet_ext.training.base import nnUNetExtTrainer

LABELS = {"background": 0, "a": 1, "b": 2, "c": 3}


def _fake_dataset(root: Path, dataset_id: int, shape, spacing, n: int, channels: int = 1) -> str:
    name = f"Dataset{dataset_id:03d}_Fake"
    raw = root / "raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    blank = Image.fromarray(np.zeros((8, 8), np.uint8))
    for i in range(n):
        for c in range(channels):
            blank.save(raw / "imagesTr" / f"c{i:02d}_{c:04d}.png")
        blank.save(raw / "labelsTr" / f"c{i:02d}.png")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"ch{c}" for c in range(channels)}, "labels": LABELS, "numTraining": n,
        "file_ending": ".png"}))
    pre = root / "pre" / name
    pre.mkdir(parents=True)
    intensities = {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0,
                   "percentile_99_5": 1.0, "std": 0.1}
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [list(spacing)] * n, "shapes_after_crop": [list(shape)] * n,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {str(c): intensities for c in range(channels)}}))
    return name


@pytest.fixture
def fake_root(tmp_path, monkeypatch) -> Path:
    for folder, var in (("raw", "nnUNet_raw"), ("pre", "nnUNet_preprocessed"), ("results", "nnUNet_results")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(var, str(tmp_path / folder))
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)  # ResEnc planning builds networks with it as threads
    return tmp_path


def test_plain_unet_macs_counted_by_hand_and_by_torch():
    kw = {"features_per_stage": [2, 4], "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]],
          "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [2]}
    # 8x8 patch, 1 input, 3 outputs. Encoder: 64 px x 9 x (1*2 + 2*2) = 3456; 16 px x 9 x (2*4 + 4*4) = 3456.
    # Decoder: transposed conv 64 px x 4 x 2 = 512; convs 64 x 9 x (4*2 + 2*2) = 6912; 1x1 segmentation 64 x 2 x 3 = 384
    assert plain_unet_macs([8, 8], 1, 3, kw) == 3456 + 3456 + 512 + 6912 + 384

    # the DRIVE-AV configuration measured on 2 cores (docs/cpu.md), counted from torch's own convolutions
    kw = {"features_per_stage": [16, 32, 64, 128, 256, 256], "kernel_sizes": [[3, 3]] * 6,
          "strides": [[1, 1]] + [[2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}
    net = PlainConvUNet(3, 6, kw["features_per_stage"], nn.Conv2d, kw["kernel_sizes"], kw["strides"],
                        kw["n_conv_per_stage"], 5, kw["n_conv_per_stage_decoder"], conv_bias=True,
                        deep_supervision=False)
    counted = []

    def count(module, inputs, output):
        if isinstance(module, nn.ConvTranspose2d):
            counted.append(inputs[0][0, 0].numel() * module.in_channels * module.out_channels *
                           int(np.prod(module.kernel_size)))
        elif isinstance(module, nn.Conv2d):
            counted.append(output.numel() * module.in_channels * int(np.prod(module.kernel_size)))

    for m in net.modules():
        m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros(1, 3, 256, 256))
    assert plain_unet_macs([256, 256], 3, 5, kw) == sum(counted)
    # the cpu budget is that batch of 2
    assert 2 * sum(counted) <= CPU_MACS_PER_ITERATION < 2.05 * sum(counted)


def test_cpu_preset_plans_a_drive_sized_and_a_ct_sized_data_set(fake_root):
    _fake_dataset(fake_root, 901, (1, 584, 565), (999, 1, 1), 20, channels=3)
    _fake_dataset(fake_root, 902, (120, 512, 512), (2.5, 0.8, 0.8), 40)
    drive, identifier = plan_experiment_dataset(901, PRESETS["cpu"].planner)
    folder = fake_root / "pre" / "Dataset901_Fake"
    assert identifier == "nnUNetPlans_cpu" and (folder / "nnUNetPlans_cpu.json").is_file()
    assert not (folder / "nnUNetPlans.json").exists()
    assert set(drive["configurations"]) == {"2d"}
    c = drive["configurations"]["2d"]
    arch = c["architecture"]["arch_kwargs"]
    # close to the 256x256 patch measured to learn on DRIVE-AV (128x128 did not), batch 2, features 16..256
    assert c["batch_size"] == 2 and all(224 <= s <= 256 for s in c["patch_size"])
    assert arch["features_per_stage"][0] == 16 and max(arch["features_per_stage"]) == 256
    assert c["batch_size"] * plain_unet_macs(c["patch_size"], 3, 4, arch) <= CPU_MACS_PER_ITERATION

    ct, _ = plan_experiment_dataset(902, PRESETS["cpu"].planner)
    assert set(ct["configurations"]) == {"2d", "3d_fullres"}  # no 3d_lowres stage on a CPU
    stock, _ = plan_experiment_dataset(902, ExperimentPlanner)  # nnU-Net's default, 8 GB
    for name, c in ct["configurations"].items():
        macs = c["batch_size"] * plain_unet_macs(c["patch_size"], 1, 4, c["architecture"]["arch_kwargs"])
        assert macs <= CPU_MACS_PER_ITERATION, name
        # the patch keeps the data's aspect (from the spacing) and is smaller than the GPU plans' in every axis
        gpu = stock["configurations"][name]["patch_size"]
        assert all(a <= b for a, b in zip(c["patch_size"], gpu, strict=True)), name
    low, _ = plan_experiment_dataset(902, PRESETS["lowmem"].planner)
    assert np.prod(low["configurations"]["3d_fullres"]["patch_size"]) < np.prod(
        stock["configurations"]["3d_fullres"]["patch_size"])



def test_cpu_context_preset_keeps_its_2d_patch_floor(fake_root):
    """cpu_context promises: 8-128 features, a 2d patch never below min_patch_2d a side (or the image, where smaller),
    batch 2 where that floor binds, pooling down to >= 8 px, and a quarter of the cpu budget where it does not."""
    planner = PRESETS["cpu_context"].planner
    floor, budget = planner.min_patch_2d, CPU_MACS_PER_ITERATION / 4

    class NoFloor(planner):
        min_patch_2d = 0

    # DRIVE-sized RGB images: the budget alone leaves a side under the floor, the preset lifts it
    _fake_dataset(fake_root, 905, (1, 584, 565), (999, 1, 1), 20, channels=3)
    free = plan_experiment_dataset(905, NoFloor)[0]["configurations"]["2d"]
    assert min(free["patch_size"]) < floor
    plans, identifier = plan_experiment_dataset(905, planner)
    assert identifier == "nnUNetPlans_cpu_context"
    c = plans["configurations"]["2d"]
    arch = c["architecture"]["arch_kwargs"]
    assert min(c["patch_size"]) >= floor and c["batch_size"] == 2
    assert arch["features_per_stage"][0] == 8 and max(arch["features_per_stage"]) == 128
    assert len(arch["features_per_stage"]) == len(arch["strides"]) == arch["n_stages"]
    bottom = np.array(c["patch_size"]) / np.prod(np.array(arch["strides"]), axis=0)
    assert np.array_equal(bottom, np.round(bottom)) and bottom.min() >= 8  # the poolings divide the patch
    net = PlainConvUNet(3, arch["n_stages"], arch["features_per_stage"], nn.Conv2d, arch["kernel_sizes"],
                        arch["strides"], arch["n_conv_per_stage"], 4, arch["n_conv_per_stage_decoder"],
                        deep_supervision=False)
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 3, *c["patch_size"])).shape) == (1, 4, *c["patch_size"])

    # images smaller than the floor: one patch holds the whole image, within the budget
    _fake_dataset(fake_root, 906, (1, 120, 200), (999, 1, 1), 20)
    c = plan_experiment_dataset(906, planner)[0]["configurations"]["2d"]
    assert c["patch_size"][0] >= 120 and c["patch_size"][1] >= 200
    assert c["batch_size"] * plain_unet_macs(c["patch_size"], 1, 4, c["architecture"]["arch_kwargs"]) <= budget

def _our_trainers() -> list[type]:
    found = []
    for module in (nnunet_ext.trainers.baseline_trainers, nnunet_ext.trainers.av_fusion_trainers,
                   nnunet_ext.trainers.ftsegnet_trainers, nnunet_ext.trainers.focusnet_trainers,
                   nnunet_ext.trainers.weak_cycle_trainers, nnunet_ext.trainers.freetumor_trainers):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            # short variants (_debug, _demo) build their base's network
            if (issubclass(cls, nnUNetExtTrainer) and cls.__module__ == module.__name__ and not name.startswith("_")
                    and not name.endswith(("_debug", "_demo"))):
                found.append(cls)
    return found


TRAINERS = _our_trainers()


@pytest.fixture(scope="module")
def preset_plans(tmp_path_factory) -> dict:
    """{(preset, configuration): plans dict} for a small 2D data set and a small CT-like volume."""
    import os

    root = tmp_path_factory.mktemp("preset_plans")
    keep = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_n_proc_DA")}
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"))
    os.environ.pop("nnUNet_n_proc_DA", None)
    try:
        _fake_dataset(root, 903, (1, 64, 64), (999, 1, 1), 10)
        _fake_dataset(root, 904, (24, 48, 48), (3, 1.5, 1.5), 10)
        out = {}
        for preset, planner in (("cpu", PRESETS["cpu"].planner), ("ResEncM", nnUNetPlannerResEncM)):
            out[preset, "2d"] = plan_experiment_dataset(903, planner)[0]
            out[preset, "3d_fullres"] = plan_experiment_dataset(904, planner)[0]
        return out
    finally:
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("trainer", TRAINERS, ids=[t.__name__ for t in TRAINERS])
def test_trainer_builds_its_network_from_the_cpu_and_resenc_presets(trainer, preset_plans):
    configurations = ("2d",) if getattr(trainer, "allow_3d", True) is False else ("2d", "3d_fullres")
    for (preset, configuration), plans in preset_plans.items():
        if configuration not in configurations:
            continue
        manager = PlansManager(plans)
        config = manager.get_configuration(configuration)
        net = trainer.build_network_architecture(manager, config, 1, len(LABELS), enable_deep_supervision=False)
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(1, 1, *config.patch_size))
        assert tuple(out.shape) == (1, len(LABELS), *config.patch_size), (preset, configuration)
        if preset == "ResEncM":
            assert any(type(m).__name__ == "ResidualEncoder" for m in net.modules()), "not built from the plans"


# ------------------------------------------------------------------ `nnunet_ext plan`: bad input writes nothing

@pytest.fixture
def fundus_raw(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    fundus2d.generate(tmp_path / "raw", fundus2d.DEFAULT_ID, n_train=4, n_test=1, size=32)
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--preset", "gpu9000"], "unknown preset 'gpu9000'"),
    (["--preset", "cpu", "-c", "3d_lowres"], "preset 'cpu' has no configuration '3d_lowres'"),
    (["--preset", "cpu", "-c", "3d_fullres"], "2D images: configuration '3d_fullres' needs volumes"),
    (["--preset", "cpu_context", "-c", "3d_fullres"], "preset 'cpu_context' has no configuration '3d_fullres'"),
])
def test_plan_refuses_bad_requests_and_writes_nothing(fundus_raw, capsys, argv, message):
    assert main(["plan", "-d", str(fundus2d.DEFAULT_ID), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (fundus_raw / "pre").exists()


def test_plan_refuses_a_missing_data_set(fundus_raw, capsys):
    assert main(["plan", "-d", "999", "--preset", "cpu"]) == 2
    assert "data set 999 not found" in capsys.readouterr().err
    assert not (fundus_raw / "pre").exists()


def test_plan_lists_the_presets(capsys):
    assert main(["plan", "--list"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert name in out and f"-p {preset.plans_identifier}" in out


def test_demo_refuses_an_unknown_preset_before_writing(tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--preset", "gpu9000", "--device", "cpu", "--work-dir", str(work)]) == 2
    assert "unknown preset 'gpu9000'" in capsys.readouterr().err
    assert not work.exists()
