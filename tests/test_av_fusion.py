"""AVFusionTrainer: label mapping, the fused network, the losses on the A/V phantom, and the stock commands."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import build_trainer, results_env
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from PIL import Image

from nnunet_ext import stock
from nnunet_ext.methods.av_fusion.loss import BranchLoss, branch_target, find_av_labels
from nnunet_ext.methods.av_fusion.network import AVFusionNetwork
from nnunet_ext.phantoms import av2d
from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer, AVFusionTrainer_GAN

DRIVE_LABELS = {"background": 0, "artery": 1, "vein": 2, "uncertain": 3}


# ---------------------------------------------------------------------------------------------- labels
def test_av_labels_found_by_name():
    av = find_av_labels(DRIVE_LABELS)
    assert (av.artery, av.vein) == ((1, 3), (2, 3))
    av = find_av_labels({"background": 0, "Crossing": 3, "Veins": 1, "Arteries": 2})
    assert (av.artery, av.vein) == ((2, 3), (1, 3))
    # no shared class: the branches see artery and vein alone
    av = find_av_labels({"background": 0, "artery": 1, "vein": 2})
    assert (av.artery, av.vein) == ((1,), (2,))


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "optic_disc": 1, "vessel": 2}, r"Dataset9_X: .*exactly one artery class.*found no"),
    ({"background": 0, "artery": 1, "vein_small": 2, "vein_large": 3}, r"one vein class.*found 2"),
    ({"background": 0, "artery": [1, 3], "vein": [2, 3]}, r"label 'artery' is a region"),
])
def test_bad_labels_rejected_with_the_data_set_named(labels, message):
    with pytest.raises(ValueError, match=message):
        find_av_labels(labels, "Dataset9_X")


def test_branch_targets_share_the_crossing():
    target = torch.tensor([0, 1, 2, 3, 3, 1]).view(1, 1, 1, 6)
    av = find_av_labels(DRIVE_LABELS)
    assert branch_target(target, av.artery).flatten().tolist() == [0, 1, 0, 1, 1, 1]
    assert branch_target(target, av.vein).flatten().tolist() == [0, 0, 1, 1, 1, 0]
    # a perfect branch prediction scores a lower loss than the swapped one
    loss = BranchLoss(av, batch_dice=True)
    logit = lambda m: (m * 20 - 10).float()  # noqa: E731
    good = loss(logit(branch_target(target, av.artery)), logit(branch_target(target, av.vein)), target)
    swapped = loss(logit(branch_target(target, av.vein)), logit(branch_target(target, av.artery)), target)
    assert good < 0 < swapped  # nnU-Net's Dice term is -Dice


def test_branch_loss_ignores_the_ignore_label():
    av = find_av_labels(DRIVE_LABELS)
    loss = BranchLoss(av, batch_dice=True, ignore_label=4)
    target = torch.tensor([0, 1, 2, 4]).view(1, 1, 1, 4)
    artery, vein = torch.tensor([-9.0, 9, -9, 9]).view(1, 1, 1, 4), torch.tensor([-9.0, -9, 9, 9]).view(1, 1, 1, 4)
    wrong_where_ignored = loss(artery, vein, target)
    right_where_ignored = loss(artery, -vein.abs() + torch.tensor([0.0, 0, 18, 0]).view(1, 1, 1, 4), target)
    assert wrong_where_ignored.item() == pytest.approx(right_where_ignored.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------- network
def _unet(outputs: int, deep_supervision: bool):
    kwargs = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.Conv2d",
              "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1],
              "n_conv_per_stage_decoder": [1, 1], "conv_bias": True, "norm_op": "torch.nn.InstanceNorm2d",
              "norm_op_kwargs": {"affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 3, outputs,
                                  deep_supervision=deep_supervision)


@pytest.mark.parametrize("fusion", ["concat", "mean"])
def test_fusion_network_shapes_2d(fusion):
    torch.manual_seed(0)
    net = AVFusionNetwork(_unet(4, True), _unet(1, False), _unet(1, False), 4, fusion)
    assert net.fusion.in_channels == (8 + 2 if fusion == "concat" else 8) and net.fusion.out_channels == 4
    x = torch.randn(2, 3, 32, 32)
    output, artery, vein = net(x, return_branches=True)
    # deep supervision on: the fused logits first, then G's side outputs, as nnU-Net's DeepSupervisionWrapper wants
    assert [tuple(o.shape) for o in output] == [(2, 4, 32, 32), (2, 4, 16, 16)]
    assert artery.shape == vein.shape == (2, 1, 32, 32)
    # every parameter takes part (DDP needs that): the unused 1x1 heads of G and of the branches were dropped
    (sum(o.sum() for o in output) + artery.sum() + vein.sum()).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    # what nnU-Net's set_deep_supervision_enabled and the predictor do
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        fused = net(x)
        assert fused.shape == (2, 4, 32, 32)
        torch.testing.assert_close(fused, output[0].detach())
    # stock prediction rebuilds the network without deep supervision and loads the trained weights
    rebuilt = AVFusionNetwork(_unet(4, False), _unet(1, False), _unet(1, False), 4, fusion)
    rebuilt.load_state_dict(net.state_dict())


@pytest.mark.parametrize("detach", [False, True])
def test_detached_branches_learn_only_from_their_own_loss(detach):
    net = AVFusionNetwork(_unet(4, False), _unet(1, False), _unet(1, False), 4, "concat", detach_branches=detach)
    net(torch.randn(1, 3, 32, 32)).sum().backward()  # a loss on the fused output only
    reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in net.artery.parameters()]
    assert any(reached) != detach
    assert all(p.grad is not None for p in net.fusion.parameters())


# ---------------------------------------------------------------------------------------------- phantom + trainer
def test_av_phantom_labels_and_fov_masks(av_preprocessed):
    raw = av_preprocessed.raw_dir
    assert json.loads((raw / "dataset.json").read_text())["labels"] == av2d.LABELS
    labels = np.stack([np.asarray(Image.open(p)) for p in sorted((raw / "labelsTr").glob("*.png"))])
    counts = np.bincount(labels.ravel(), minlength=4)
    assert counts[1] > 0 and counts[2] > 0 and counts[3] > 0  # arteries, veins and crossings
    fov = np.asarray(Image.open(raw / "masksTs" / "phantomav_008.png"))
    assert set(np.unique(fov)) == {0, 1} and fov[32, 32] == 1 and fov[0, 0] == 0


def test_fused_and_branch_losses_decrease_on_the_phantom(av_preprocessed, tmp_path, monkeypatch):
    torch.manual_seed(0)
    trainer = build_trainer(AVFusionTrainer, av_preprocessed, tmp_path, monkeypatch, "2d")
    trainer.initialize()
    trainer.network.train()
    assert trainer.av_labels.artery == (1, 3) and trainer.av_labels.vein == (2, 3)
    batch = next(trainer.get_dataloaders()[0])  # one batch, repeatedly: the loss must fall
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(5)]
    assert losses[-1] < losses[0] - 0.05, losses


def test_3d_configuration_and_region_labels_refused(av_preprocessed, tmp_path, monkeypatch):
    pre = av_preprocessed
    plans = json.loads((pre.preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre.preprocessed / "dataset.json").read_text())
    plans["configurations"]["3d_fullres"] = copy.deepcopy(plans["configurations"]["2d"])
    plans["configurations"]["3d_fullres"]["patch_size"] = [8, 64, 64]
    with pytest.raises(ValueError, match=r"2D method.*'3d_fullres' of Dataset793_PhantomAV is 3D"):
        build_trainer(AVFusionTrainer, pre, tmp_path, monkeypatch, "3d_fullres", plans=copy.deepcopy(plans))
    regions = dict(dataset_json, labels={"background": 0, "artery": [1, 3], "vein": [2, 3], "crossing": 3},
                   regions_class_order=[1, 2, 3])
    with pytest.raises(ValueError, match="region-based labels"):
        build_trainer(AVFusionTrainer, pre, tmp_path, monkeypatch, "2d", plans=plans, dataset_json=regions)


def test_data_set_without_artery_and_vein_rejected(fundus_preprocessed, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"Dataset791_PhantomFundus: .*exactly one artery class.*optic_disc"):
        build_trainer(AVFusionTrainer_GAN, fundus_preprocessed, tmp_path, monkeypatch, "2d")


def test_gan_train_stop_resume_predict_through_stock_commands(av_preprocessed, tmp_path, monkeypatch):
    """nnUNetv2_train stops after epoch 1, `--c` resumes with the discriminator and its Adam state, then stock
    nnUNetv2_predict --save_probabilities gives fused 4-class probabilities."""
    pre = av_preprocessed
    name = "AVFusionTrainer_GAN_tiny"  # tests/ext_trainers: 2 epochs x 2 iterations
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="7", nnUNet_ext_stop_after_epochs="1")
    stock.train(pre.dataset_id, "2d", 0, name, env)
    fold = tmp_path / "results" / pre.raw_dir.name / f"{name}__nnUNetPlans__2d" / "fold_0"
    stopped = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    assert stopped["current_epoch"] == 1 and not (fold / "checkpoint_final.pth").exists()
    disc_state = stopped["nnunet_ext"]["aux_optimizers"]["discriminator"]["state"]
    assert {int(s["step"]) for s in disc_state.values()} == {2}
    assert any(k.startswith("artery.") for k in stopped["network_weights"])  # G_A, G_V, head: one network

    # the trainer's own load_checkpoint restores what the file holds
    trainer = build_trainer(AVFusionTrainer_GAN, pre, tmp_path, monkeypatch, "2d")
    trainer.initialize()
    trainer.load_checkpoint(str(fold / "checkpoint_latest.pth"))
    for k, v in stopped["nnunet_ext"]["aux_modules"]["discriminator"].items():
        torch.testing.assert_close(trainer.aux_modules["discriminator"].state_dict()[k], v)
    restored = trainer.aux_optimizers["discriminator"].state_dict()["state"]
    for i, s in disc_state.items():
        torch.testing.assert_close(restored[i]["exp_avg"], s["exp_avg"])

    del env["nnUNet_ext_stop_after_epochs"]
    log = stock.train(pre.dataset_id, "2d", 0, name, env, continue_training=True)
    assert "Epoch 1" in log and "Epoch 0\n" not in log
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    # Adam continued from the saved moments: 2 + 2 steps, not a fresh optimizer's 2
    assert {int(s["step"]) for s in final["nnunet_ext"]["aux_optimizers"]["discriminator"]["state"].values()} == {4}

    out = tmp_path / "pred"
    stock.predict(pre.raw_dir / "imagesTs", out, pre.dataset_id, "2d", name, env, save_probabilities=True)
    for case in ("phantomav_008", "phantomav_009"):
        seg = np.asarray(Image.open(out / f"{case}.png"))
        assert seg.shape == (64, 64) and seg.max() <= 3
        probabilities = np.load(out / f"{case}.npz")["probabilities"]
        assert probabilities.shape[0] == 4
        np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-3)
