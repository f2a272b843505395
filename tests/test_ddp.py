"""Multi-process training (DDP) of our trainers on CPU with the gloo backend: gradients synchronised, every rank ends
every epoch with the same segmentation and auxiliary weights, only rank 0 writes, phases that freeze modules keep
working. One 2-process run per trainer, on its smallest variant."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import results_env

RUNNER = Path(__file__).resolve().parent / "ddp_runner.py"


def run_ddp(trainer: str, dataset_id: int, configuration: str, env: dict, out: Path, world_size: int = 2) -> list:
    proc = subprocess.run([sys.executable, str(RUNNER), trainer, str(dataset_id), configuration, "0", str(out),
                           "--world-size", str(world_size)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def assert_ranks_agree_with_checkpoint(ranks: list) -> None:
    checkpoint = torch.load(Path(ranks[0]["output_folder"]) / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    saved = {"network": checkpoint["network_weights"], **checkpoint.get("nnunet_ext", {}).get("aux_modules", {})}
    assert set(saved) == set(ranks[0]["modules"])
    for name, state in ranks[0]["modules"].items():
        for key, value in state.items():
            for other in ranks[1:]:
                assert torch.equal(value, other["modules"][name][key]), f"ranks disagree on {name}.{key}"
            assert torch.equal(value, saved[name][key].cpu()), f"checkpoint differs from rank 0 on {name}.{key}"
    # a phase switch re-wraps modules in DDP, which copies rank 0's weights to the others: only the weights at the
    # end of every epoch show that each phase kept the ranks together by itself
    assert len(ranks[0]["epochs"]) == ranks[0]["num_epochs"]
    for other in ranks[1:]:
        for epoch, (mine, theirs) in enumerate(zip(ranks[0]["epochs"], other["epochs"], strict=True)):
            differ = sorted(name for name in mine if mine[name] != theirs[name])
            assert not differ, f"ranks disagree on {differ} after epoch {epoch}"


def training_log(ranks: list) -> str:
    logs = list(Path(ranks[0]["output_folder"]).glob("training_log_*.txt"))
    assert len(logs) == 1, logs  # one log, written by rank 0
    log = logs[0].read_text()
    assert "Training done." in log
    return log


@pytest.mark.parametrize("trainer", ["nnUNetTrainer_debug", "AuxPhaseTestTrainer"])
def test_two_process_gloo_training_keeps_ranks_identical(fundus_preprocessed, tmp_path, trainer):
    f = fundus_preprocessed
    env = results_env(f.env, tmp_path / "results", nnUNet_ext_seed="0", OMP_NUM_THREADS="1")
    ranks = run_ddp(trainer, f.dataset_id, "2d", env, tmp_path / "ranks")
    # the plans' batch is split over the ranks, as nnU-Net does on GPUs
    plans = json.loads(next((Path(f.env["nnUNet_preprocessed"])).glob("*/nnUNetPlans.json")).read_text())
    assert sum(r["batch_size"] for r in ranks) == plans["configurations"]["2d"]["batch_size"]
    assert_ranks_agree_with_checkpoint(ranks)
    log = training_log(ranks)
    if trainer == "AuxPhaseTestTrainer":
        # the critic is frozen in phase 'warmup' and trains in 'joint': re-wrapping kept DDP working across the switch
        assert "Phase 'warmup'" in log and "Phase 'joint'" in log


METHODS = [
    # trainer, data set fixture, configuration, phases its run goes through
    ("AVFusionTrainer_GAN_tiny", "av_preprocessed", "2d", ["adversarial"]),
    ("FTSegNetTrainer_tiny", "tumour_preprocessed", "2d", ["segment"]),
    ("FreeTumorSynthesisTrainer_tiny", "abdomen_preprocessed", "3d_fullres", ["baseline", "synthesis"]),
    ("FreeTumorTrainer_tiny", "abdomen_preprocessed", "3d_fullres", []),
]


@pytest.mark.parametrize("trainer,fixture,configuration,phases", METHODS, ids=[m[0] for m in METHODS])
def test_method_trainers_under_two_process_gloo_ddp(request, tmp_path, trainer, fixture, configuration, phases):
    """Discriminators (AV fusion, FreeTumor), the prior that is both part of the network and an auxiliary module
    (FTSegNet), the generator trained against a frozen network (FreeTumor synthesis), the EMA quality-control model
    (FreeTumor): all equal on every rank after every epoch, and rank 0's checkpoint holds them."""
    pre = request.getfixturevalue(fixture)
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="0", OMP_NUM_THREADS="1")
    ranks = run_ddp(trainer, pre.dataset_id, configuration, env, tmp_path / "ranks")
    assert_ranks_agree_with_checkpoint(ranks)
    log = training_log(ranks)
    for phase in phases:
        assert f"Phase '{phase}'" in log
    if trainer == "FreeTumorTrainer_tiny":
        assert set(ranks[0]["modules"]) == {"network", "ema"}
        # the synthesis counts in the log and the checkpoint are those of both ranks' patches
        history = [r["extra"]["synthesis_history"] for r in ranks]
        assert history[0] == history[1] and len(history[0]) == 2
        assert sum(h["synthesised"] for h in history[0]) > 0
        checkpoint = torch.load(Path(ranks[0]["output_folder"]) / "checkpoint_final.pth", weights_only=False)
        assert checkpoint["nnunet_ext"]["extra"]["synthesis_history"] == history[0]


def test_focusnet_under_two_process_gloo_ddp(hn_preprocessed, tmp_path):
    """All four phases; each SOS-Net and the shape autoencoder's per-organ parts get gradients only from ranks whose
    batch shows their organ, and a rank whose batch shows none still joins the update (it used to deadlock)."""
    pre = hn_preprocessed
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="0", OMP_NUM_THREADS="1")
    ranks = run_ddp("FocusNetV2Trainer_tiny", pre.dataset_id, "3d_fullres", env, tmp_path / "ranks")
    assert_ranks_agree_with_checkpoint(ranks)
    log = training_log(ranks)
    for phase in ("snet", "shape", "sos", "adversarial"):
        assert f"Phase '{phase}'" in log
    fold = Path(ranks[0]["output_folder"])
    selection = json.loads((fold / "focusnet_small_organs.json").read_text())
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert selection["labels"] == checkpoint["nnunet_ext"]["extra"]["small_organs"]
    assert [p.name for p in fold.glob("focusnet_small_organs.json*")] == ["focusnet_small_organs.json"]


def test_weak_cycle_under_two_process_gloo_ddp(weak_preprocessed, tmp_path):
    """Generators and discriminators (translation), student and EMA teacher (refinement) equal on both ranks; the
    pseudo-masks are written once, by rank 0, and are what every rank and the checkpoint hold."""
    pre = weak_preprocessed
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="0", OMP_NUM_THREADS="1")
    ranks = run_ddp("WeakCycleTrainer_tiny", pre.dataset_id, "2d", env, tmp_path / "ranks")
    assert_ranks_agree_with_checkpoint(ranks)
    assert {"network", "teacher", "gen_ab", "gen_ba"} <= set(ranks[0]["modules"])
    log = training_log(ranks)
    assert "Phase 'translation'" in log and "Phase 'refinement'" in log and "Teacher updated" in log
    fold = Path(ranks[0]["output_folder"])
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    masks = checkpoint["nnunet_ext"]["extra"]["pseudo_masks"]
    assert masks
    for rank in ranks:
        assert set(rank["extra"]["pseudo_masks"]) == set(masks)
        for case, mask in masks.items():
            assert np.array_equal(rank["extra"]["pseudo_masks"][case], mask)
    folder = fold / "weak_cycle"
    assert sorted(p.name for p in (folder / "pseudo_masks").iterdir()) == sorted(f"{c}.npy" for c in masks)
    for case, mask in masks.items():
        assert np.array_equal(np.load(folder / "pseudo_masks" / f"{case}.npy"), mask)
    # the phase-1 masks in raw geometry: one folder, no temporary left by a second writer
    assert sorted(p.name for p in folder.iterdir()) == ["phase1_pseudo_masks", "pseudo_masks"]
    ending = json.loads((pre.raw_dir / "dataset.json").read_text())["file_ending"]
    phase1 = sorted((folder / "phase1_pseudo_masks").glob(f"*{ending}"))
    assert {p.name.removesuffix(ending) for p in phase1} == set(masks)
    assert (folder / "phase1_pseudo_masks" / "threshold.json").is_file()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(phase1[0]))).max() <= 1
