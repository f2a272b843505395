"""Interrupted runs: SIGKILL of `nnUNetv2_train` in the middle of an epoch, then `--c`.

A seeded run with single-process augmentation is deterministic on the CPU, so the strongest check is available: the
killed-and-resumed run must end bit-identical to an uninterrupted one, every auxiliary network, optimizer, scheduler
and method state included. Anything a trainer forgot to put in its checkpoint shows up as a difference.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_TRAINERS, results_env

from nnunet_ext import stock
from nnunet_ext.training.base import atomic_torch_save

sys.path.insert(0, str(TEST_TRAINERS))
from kill_switch import KILL_EPOCH_ENV  # noqa: E402


def _fold(results: Path, dataset_dir: str, trainer: str, configuration: str) -> Path:
    return results / dataset_dir / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"


def kill_mid_epoch(dataset_id: int, configuration: str, trainer: str, env: dict, fold: Path, epoch: int = 2) -> None:
    """Run the stock nnUNetv2_train of a `KillMidEpoch` trainer until it SIGKILLs itself in `epoch` (0-based), with
    checkpoint_latest.pth from the end of epoch `epoch - 1` on disk and one step of `epoch` done."""
    with pytest.raises(stock.StockCommandError) as failed:
        stock.train(dataset_id, configuration, 0, trainer, dict(env, **{KILL_EPOCH_ENV: str(epoch)}))
    assert f"failed with exit code {-signal.SIGKILL}:" in str(failed.value), str(failed.value)
    assert f"SIGKILL in epoch {epoch}, before step 2" in str(failed.value)
    assert not (fold / "checkpoint_final.pth").exists()


def _differences(a, b, path="") -> list[str]:
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a.cpu(), b.cpu()) else [path]
    if isinstance(a, np.ndarray):  # WeakCycle's pseudo-masks
        return [] if a.dtype == b.dtype and np.array_equal(a, b) else [path]
    return [] if a == b else [path]


def assert_resume_matches_straight_run(data, trainer: str, configuration: str, tmp_path: Path) -> tuple[dict, dict]:
    """Returns the killed run's checkpoint_latest.pth (end of epoch 1) and its final checkpoint after `--c`."""
    straight = results_env(data.env, tmp_path / "straight", nnUNet_ext_seed="7")
    stock.train(data.dataset_id, configuration, 0, trainer, straight)
    killed = results_env(data.env, tmp_path / "killed", nnUNet_ext_seed="7")
    fold = _fold(tmp_path / "killed", data.raw_dir.name, trainer, configuration)
    kill_mid_epoch(data.dataset_id, configuration, trainer, killed, fold)
    latest = torch.load(fold / "checkpoint_latest.pth", weights_only=False)  # readable after the kill
    assert latest["current_epoch"] == 2

    log = stock.train(data.dataset_id, configuration, 0, trainer, killed, continue_training=True)
    assert "Epoch 2" in log and "Epoch 1\n" not in log
    assert not list(fold.glob("*.tmp*"))
    a = torch.load(_fold(tmp_path / "straight", data.raw_dir.name, trainer, configuration) / "checkpoint_final.pth",
                   weights_only=False)
    b = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    keys = ["network_weights", "optimizer_state", "current_epoch", "nnunet_ext"]
    assert _differences({k: a[k] for k in keys if k != "nnunet_ext"} | _ext(a),
                        {k: b[k] for k in keys if k != "nnunet_ext"} | _ext(b)) == []
    return latest, b


def _ext(checkpoint: dict) -> dict:
    ours = dict(checkpoint.get("nnunet_ext", {}))
    ours.pop("rng", None)  # also equal, but numpy's state tuple holds an array that == cannot compare
    return {"nnunet_ext": ours}


@pytest.mark.parametrize("trainer", ["AuxPhaseTestTrainer_kill"])
def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(fundus_preprocessed, tmp_path, trainer):
    assert_resume_matches_straight_run(fundus_preprocessed, trainer, "2d", tmp_path)


def test_av_fusion_gan_kill_mid_epoch_then_resume_matches_uninterrupted_run(av_preprocessed, tmp_path):
    assert_resume_matches_straight_run(av_preprocessed, "AVFusionTrainer_GAN_tiny_kill", "2d", tmp_path)


def test_focusnet_kill_mid_epoch_then_resume_matches_uninterrupted_run(hn_preprocessed, tmp_path):
    # killed in epoch 2, the 'shape' phase: S-Net, SOL heads, SOS-Nets, shape autoencoder and three optimizers
    assert_resume_matches_straight_run(hn_preprocessed, "FocusNetV2Trainer_tiny_kill", "3d_fullres", tmp_path)


def test_ftsegnet_kill_mid_epoch_then_resume_matches_uninterrupted_run(tumour_preprocessed, tmp_path):
    # killed in epoch 2, the 'segment' phase (the prior trained in epoch 0): the frozen prior inside the network and
    # its Adam state
    latest, _ = assert_resume_matches_straight_run(tumour_preprocessed, "FTSegNetTrainer_tiny_kill", "2d", tmp_path)
    assert latest["nnunet_ext"]["phase"] == "segment" and latest["nnunet_ext"]["aux_optimizers"]["prior"]["state"]


def test_weak_cycle_kill_mid_epoch_then_resume_matches_uninterrupted_run(weak_preprocessed, tmp_path):
    # killed in epoch 2, the 'refinement' phase, right after the teacher rewrote the pseudo-masks on disk (the resumed
    # run must put back those of the checkpoint): generators, discriminators, EMA teacher, pseudo-masks, six Adam
    # states
    latest, _ = assert_resume_matches_straight_run(weak_preprocessed, "WeakCycleTrainer_tiny_kill", "2d", tmp_path)
    ours = latest["nnunet_ext"]
    assert ours["phase"] == "refinement" and ours["extra"]["teacher_ready"] and len(ours["extra"]["pseudo_masks"]) == 4


def test_freetumor_kill_mid_epoch_then_resume_matches_uninterrupted_run(abdomen_preprocessed, tmp_path):
    # killed in epoch 2 with the baseline judge frozen at epoch 1 judging: the judge's weights and when it was frozen,
    # synthesis random stream, intensity statistics, per-epoch synthesis history
    _, final = assert_resume_matches_straight_run(abdomen_preprocessed, "FreeTumorTrainer_tiny_kill", "3d_fullres",
                                                  tmp_path)
    history = final["nnunet_ext"]["extra"]["synthesis_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    judged = [h for h in history[1:] if h.get("accepted", 0) + h.get("rejected", 0)]
    assert judged, history  # the frozen baseline judged synthetic tumours after its phase
    assert not history[0].get("synthesised", 0)  # epoch 0 trains the judge on the real tumours only
    assert final["nnunet_ext"]["extra"]["judge_frozen_at"] == 1


def test_freetumor_synthesis_kill_mid_epoch_then_resume_matches_uninterrupted_run(abdomen_preprocessed, tmp_path):
    # killed in epoch 2, the second 'synthesis' epoch (baseline in epoch 0): generator, discriminator, their Adam
    # states, the frozen baseline segmentor
    latest, _ = assert_resume_matches_straight_run(abdomen_preprocessed, "FreeTumorSynthesisTrainer_tiny_kill",
                                                   "3d_fullres", tmp_path)
    ours = latest["nnunet_ext"]
    assert ours["phase"] == "synthesis" and ours["aux_optimizers"]["generator"]["state"]


_SAVER = """
import sys, torch
from nnunet_ext.training.base import atomic_torch_save
print("saving", flush=True)
atomic_torch_save({"w": torch.zeros(64, 1024, 1024)}, sys.argv[1])  # 256 MiB: long enough to be killed in it
"""


def test_kill_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save({"w": torch.ones(3)}, str(target))
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.time() + 60
    while not list(tmp_path.glob("*.tmp*")) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob("*.tmp*")), "the save finished before the kill; the test did not test anything"
    assert torch.equal(torch.load(target)["w"], torch.ones(3))
