"""AVFusionTrainer: label mapping, the fused network, the losses on the A/V phantom, and the stock commands."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import build_trainer, results_env
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from PIL import Image
from scipy import ndimage

from nnunet_ext import stock
from nnunet_ext.evaluation.av_protocol import (
    av_protocol_case,
    hard_auc_pr,
    intra_segment_misclassification,
    summarise_av,
    vessel_segments,
)
from nnunet_ext.methods.av_fusion.loss import BranchLoss, branch_target, find_av_labels
from nnunet_ext.methods.av_fusion.network import AVFusionNetwork
from nnunet_ext.methods.av_fusion.vitals import vital_counts, vital_values, vital_warnings
from nnunet_ext.phantoms import av2d
from nnunet_ext.trainers.av_fusion_trainers import AVFusionTrainer, AVFusionTrainer_attached, AVFusionTrainer_GAN

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


@pytest.mark.parametrize("fusion", ["concat", "mean"])
@pytest.mark.parametrize("detach", [False, True])
def test_detached_branches_learn_only_from_their_own_loss(detach, fusion):
    net = AVFusionNetwork(_unet(4, False), _unet(1, False), _unet(1, False), 4, fusion, detach_branches=detach)
    net(torch.randn(1, 3, 32, 32)).sum().backward()  # a loss on the fused output only
    for branch in (net.artery, net.vein):
        reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters()]
        assert any(reached) != detach
    assert all(p.grad is not None for p in net.fusion.parameters())
    # the original's default
    assert AVFusionNetwork(_unet(4, False), _unet(1, False), _unet(1, False), 4).detach_branches


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
    log = stock.train(pre.dataset_id, "2d", 0, name, env)
    fold = tmp_path / "results" / pre.raw_dir.name / f"{name}__nnUNetPlans__2d" / "fold_0"
    assert "Vital signs: branches: artery dice " in log and "fusion: overrides branches " in log
    assert (fold / "avfusion_progress.png").is_file()
    stopped = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    assert "branches/vein dice" in stopped["nnunet_ext"]["vitals"][0]
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


# ---------------------------------------------------------------------------------------------- mechanism
def _grad_norm(module: torch.nn.Module) -> float:
    return float(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None) ** 0.5)


@pytest.mark.mechanism
def test_av_fusion_mechanism_fused_loss_never_trains_the_branches(av_preprocessed, tmp_path, monkeypatch):
    """The method's idea: G_A and G_V never see the ambiguous 4-class decision. With the default trainer the fused
    Dice+CE sends no gradient into G_A/G_V (the attached ablation does), the branch loss trains the branches and not
    G, and the branch targets put a crossing pixel in both vessels."""
    torch.manual_seed(0)
    norms = {}
    for cls in (AVFusionTrainer, AVFusionTrainer_attached):
        trainer = build_trainer(cls, av_preprocessed, tmp_path / cls.__name__, monkeypatch, "2d")
        trainer.initialize()
        trainer.network.train()
        loader = trainer.get_dataloaders()[0]
        for _ in range(20):  # random patches: take one that holds a crossing (the first one did not, once in CI)
            data, target, full = trainer.batch_to_device(next(loader))
            if (full == 3).any():
                break
        output, artery_logits, vein_logits = trainer.network(data, return_branches=True)
        trainer.loss(output, target).backward(retain_graph=True)
        norms[cls] = {name: _grad_norm(getattr(trainer.network, name)) for name in ("artery", "vein", "multi")}
        if cls is AVFusionTrainer:
            trainer.network.zero_grad(set_to_none=True)
            trainer.branch_loss(artery_logits, vein_logits, full).backward()
            assert _grad_norm(trainer.network.artery) > 0 and _grad_norm(trainer.network.vein) > 0
            assert _grad_norm(trainer.network.multi) == 0
            crossing = full == 3
            assert crossing.any()  # the phantom's batch has crossing pixels
            assert bool((branch_target(full, trainer.av_labels.artery)[crossing] == 1).all())
            assert bool((branch_target(full, trainer.av_labels.vein)[crossing] == 1).all())
    assert norms[AVFusionTrainer]["artery"] == norms[AVFusionTrainer]["vein"] == 0, norms
    assert norms[AVFusionTrainer]["multi"] > 0
    assert norms[AVFusionTrainer_attached]["artery"] > 0 and norms[AVFusionTrainer_attached]["vein"] > 0


@pytest.mark.mechanism
def test_av_fusion_gan_per_pixel_discriminators_reach_fused_output_and_branches(av_preprocessed, tmp_path,
                                                                               monkeypatch):
    """The original's adversarial training: per-pixel discriminators (a logit per pixel and class), one adversarial
    term on the fused output (trains G, not the detached branches) and one on the branches (trains G_A/G_V)."""
    torch.manual_seed(0)
    trainer = build_trainer(AVFusionTrainer_GAN, av_preprocessed, tmp_path, monkeypatch, "2d")
    trainer.initialize()
    trainer.network.train()
    data, target, full = trainer.batch_to_device(next(trainer.get_dataloaders()[0]))
    one_hot, valid = trainer._one_hot(full)
    assert trainer.aux_modules["discriminator"](data, one_hot).shape == one_hot.shape
    assert trainer.aux_modules["branch_discriminator"](data, valid).shape == valid.shape
    output, artery_logits, vein_logits = trainer.network(data, return_branches=True)
    fused_adv, branch_adv, _, _ = trainer.generator_adversarial(data, output[0], artery_logits, vein_logits, valid)
    fused_adv.backward(retain_graph=True)
    assert _grad_norm(trainer.network.multi) > 0
    assert _grad_norm(trainer.network.artery) == _grad_norm(trainer.network.vein) == 0
    trainer.network.zero_grad(set_to_none=True)
    branch_adv.backward()
    assert _grad_norm(trainer.network.artery) > 0 and _grad_norm(trainer.network.vein) > 0
    assert _grad_norm(trainer.network.multi) == 0
    # a training step moves both discriminators
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in trainer.aux_modules.items()}
    trainer.on_train_epoch_start()
    trainer.train_step(next(trainer.get_dataloaders()[0]))
    for name, module in trainer.aux_modules.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters(), strict=True)), name


def test_av_fusion_vital_signs_counted_by_hand():
    """Eight pixels in a row, every count worked out by hand (artery 1, vein 2, crossing 3)."""
    av = find_av_labels(DRIVE_LABELS)
    target = torch.tensor([0, 1, 1, 2, 2, 3, 3, 0]).view(1, 1, 1, 8)
    artery = torch.tensor([-2.0, 2, 2, -2, -2, 2, -2, 2]).view(1, 1, 1, 8)  # marks 1, 2, 5, 7
    vein = torch.tensor([-1.0, -1, -1, 1, -1, 1, 1, -1]).view(1, 1, 1, 8)  # marks 3, 5, 6
    fused_labels = torch.tensor([0, 1, 2, 2, 2, 3, 2, 1])
    fused = torch.nn.functional.one_hot(fused_labels, 4).T.float().view(1, 4, 1, 8)
    values = vital_values(vital_counts(fused, artery, vein, target, av))
    # artery branch vs {1, 3} = pixels 1, 2, 5, 6: hits 1, 2, 5, false 7, missed 6 -> 6 / 8
    assert values["branches/artery dice"] == pytest.approx(0.75)
    # vein branch vs {2, 3} = pixels 3, 4, 5, 6: hits 3, 5, 6, missed 4 -> 6 / 7
    assert values["branches/vein dice"] == pytest.approx(6 / 7)
    assert values["crossings/both branches"] == pytest.approx(0.5)  # crossing 5 marked by both, 6 by the vein only
    # fused artery/vein where a branch marks a vessel: 1, 2, 3, 6, 7; the branches say artery at 1, 2, 7 (the larger
    # logit), vein at 3, 6; the fused output says vein at 2: one of five
    assert values["fusion/overrides branches"] == pytest.approx(0.2)
    assert values["fused/artery vs reference"] == pytest.approx(1.0)  # 1, 7 against 1, 2
    assert values["fused/vein vs reference"] == pytest.approx(2.0)  # 2, 3, 4, 6 against 3, 4
    # the ignore label drops its pixels from every count (here label 4 over pixels 6 and 7)
    ignored = target.clone()
    ignored[..., 6:] = 4
    values = vital_values(vital_counts(fused, artery, vein, ignored, av, ignore_label=4))
    assert values["branches/artery dice"] == pytest.approx(1.0)  # hits 1, 2, 5; the false 7 and missed 6 ignored
    assert values["crossings/both branches"] == pytest.approx(1.0)  # crossing 5 only
    assert values["fusion/overrides branches"] == pytest.approx(1 / 3)  # judged 1, 2, 3; overridden 2
    healthy = [{"epoch": e, "branches/artery dice": 0.6, "branches/vein dice": 0.7, "fused/artery vs reference": 0.9,
                "fused/vein vs reference": 1.1} for e in range(6)]
    assert vital_warnings(healthy, 5) == []


@pytest.mark.mechanism
def test_av_fusion_mechanism_vital_signs_warn_when_a_branch_collapses(av_preprocessed, tmp_path, monkeypatch):
    """Through the trainer's own validation (nnU-Net's validation_step, one forward pass): an artery branch that
    marks nothing shows as Dice 0 and, after vital_collapse_epochs epochs, as a WARNING; a vein branch that marks
    everything shows the Dice that the batch's labels give by hand."""
    torch.manual_seed(0)
    trainer = build_trainer(AVFusionTrainer, av_preprocessed, tmp_path, monkeypatch, "2d")
    trainer.initialize()
    with torch.no_grad():
        trainer.network.artery.decoder.seg_layers[-1].bias.fill_(-50.0)
        trainer.network.vein.decoder.seg_layers[-1].bias.fill_(50.0)
    batch = next(trainer.get_dataloaders()[1])
    labels = batch["target"][0]
    vessel = int(torch.isin(labels, torch.tensor([2, 3])).sum())
    history = []
    for epoch in range(trainer.vital_collapse_epochs):
        trainer.on_validation_epoch_start()
        trainer.on_validation_epoch_end([trainer.validation_step(batch)])
        history.append({"epoch": epoch, **trainer.epoch_vital_signs()})
        warnings = trainer.vital_sign_warnings(history)
        assert bool(warnings) == (epoch == trainer.vital_collapse_epochs - 1), (epoch, warnings)
    assert history[-1]["branches/artery dice"] == 0.0
    assert history[-1]["branches/vein dice"] == pytest.approx(2 * vessel / (vessel + labels.numel()))
    # the fused output of an untrained network may also warn; the branches' warnings are the artery's only
    assert [w for w in warnings if "branch" in w] == [next(w for w in warnings if w.startswith("the artery branch"))]
    assert trainer.network.last_outputs is None and not trainer.network.keep_outputs  # training forward keeps nothing


# ---------------------------------------------------------------------------------------------- evaluation
def test_av_protocol_paper_mode_scores_hard_labels_probability_mode_soft_maps():
    """One image, 10 pixels, no FOV mask. The soft maps rank the pixels well although the hard labels miss most
    arteries: the paper mode (hard labels) and the probability mode disagree. Values computed by hand."""
    ref = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    pred = np.array([1, 2, 2, 2, 2, 2, 2, 2, 0, 0])  # artery: TP 1, FN 3, FP 0, TN 6
    p_artery = np.array([0.6, 0.45, 0.45, 0.4, 0.3, 0.2, 0.2, 0.1, 0.0, 0.0])
    p_vein = np.array([0.4, 0.55, 0.55, 0.6, 0.7, 0.8, 0.8, 0.9, 0.0, 0.0])
    probs = np.stack([1 - p_artery - p_vein, p_artery, p_vein, np.zeros(10)])
    r = av_protocol_case(ref, pred, probs, classes={"artery": 1, "vein": 2})
    artery = r["per_class"]["artery"]
    assert artery["sensitivity"] == pytest.approx(0.25)
    assert artery["f1"] == pytest.approx(2 / (2 + 0 + 3))
    assert artery["auc_roc"] == pytest.approx((0.25 + 1.0) / 2)  # (Se + Sp) / 2 of the 0/1 map
    # PR points (recall, precision): (0, 1), (0.25, 1), (1, 0.4): trapezoids 0.25 + 0.75 * 0.7
    assert artery["auc_pr"] == pytest.approx(0.25 + 0.75 * 0.7)
    assert artery["mse"] == pytest.approx(3 / 10)  # 1 - accuracy
    soft = r["probability"]["per_class"]["artery"]
    assert soft["auc_roc"] == pytest.approx(1.0)  # every artery above every non-artery
    assert soft["auc_pr"] == pytest.approx(1.0)
    assert soft["mse"] == pytest.approx(np.mean((p_artery - (ref == 1)) ** 2))
    # the weighted figure: artery and vein have 4 reference pixels each
    vein = r["per_class"]["vein"]  # TP 4, FP 3, FN 0, TN 3
    assert vein["f1"] == pytest.approx(8 / 11) and vein["auc_roc"] == pytest.approx((1 + 0.5) / 2)
    assert r["weighted"]["f1"] == pytest.approx((0.4 + 8 / 11) / 2)
    # a model that calls every vessel a vein: artery sensitivity 0 gives AUC-ROC 0.5 in the paper mode
    blind = av_protocol_case(ref, np.where(ref > 0, 2, 0), probs, classes={"artery": 1, "vein": 2})
    assert blind["per_class"]["artery"]["auc_roc"] == 0.5 and blind["per_class"]["artery"]["f1"] == 0
    assert blind["probability"]["per_class"]["artery"]["auc_roc"] == pytest.approx(1.0)
    # no prediction of the class: the PR curve is (0, 1) -> (1, prevalence)
    assert blind["per_class"]["artery"]["auc_pr"] == pytest.approx((1 + 0.4) / 2)
    assert hard_auc_pr(tp=0, fp=0, fn=0, tn=5) != hard_auc_pr(tp=0, fp=0, fn=0, tn=5)  # NaN without positives


def test_av_protocol_uncertain_class_zeroed_when_its_f1_is_undefined():
    """The original sets every metric of the uncertain class to 0 when it has no true positive, and still weighs it
    by its pixels: the weighted sensitivity drops."""
    ref = np.array([[1, 1, 2, 2, 3, 0]])
    pred = np.array([[1, 1, 2, 2, 2, 0]])  # the crossing pixel called vein
    r = av_protocol_case(ref, pred)
    assert r["per_class"]["uncertain"] == {"sensitivity": 0, "f1": 0, "auc_roc": 0, "auc_pr": 0, "mse": 0,
                                           "n_pixels": 1}
    assert r["weighted"]["sensitivity"] == pytest.approx((2 * 1 + 2 * 1 + 1 * 0) / 5)
    assert r["probability"] is None and r["protocol"] == "paper"
    s = summarise_av([r, r])
    assert s["weighted"]["sensitivity"]["mean"] == pytest.approx(0.8) and s["std_is_over"] == "images"
    assert "probability" not in s


def _tree() -> np.ndarray:
    """A hand-made 1-pixel tree: an artery trunk with one artery branch (a junction at (10, 20)), and a vein that
    crosses the trunk at (10, 30) (labelled uncertain)."""
    ref = np.zeros((40, 40), dtype=np.uint8)
    ref[10, 2:38] = 1
    ref[11:35, 20] = 1
    ref[2:38, 30] = 2
    ref[10, 30] = 3
    return ref


def test_reference_tree_split_at_junctions_and_crossings():
    ids, labels = vessel_segments(_tree())
    # trunk left of the junction, the branch, the vein below the crossing; the trunk piece between junction and
    # crossing (8 pixels after the cuts), the trunk's right end and the vein above the crossing are too short (< 10)
    segments = sorted((labels[i], int((ids == i).sum())) for i in labels)
    assert segments == [(1, 16), (1, 22), (2, 25)]
    assert ids[10, 20] == ids[10, 30] == 0  # junction and crossing belong to no segment
    assert len(vessel_segments(_tree(), min_segment_length=1)[1]) == 6


def test_intra_segment_misclassification_on_a_hand_made_tree():
    ref = _tree()
    assert intra_segment_misclassification(ref, ref) == {"mixed_fraction": 0.0, "misclassified_pixel_fraction": 0.0,
                                                         "n_segments": 3, "n_missed": 0, "n_mixed": 0}
    pred = ref.copy()
    pred[10, 2:10] = 2  # half of the left trunk segment (columns 2-17 after the cut) called vein
    r = intra_segment_misclassification(ref, pred)
    assert r["mixed_fraction"] == pytest.approx(1 / 3) and r["n_mixed"] == 1
    assert r["misclassified_pixel_fraction"] == pytest.approx(8 / (16 + 22 + 25))
    # a whole segment swapped is misclassified but not mixed; a segment left as background is missed, not mixed
    pred = ref.copy()
    pred[11:35, 20] = 2
    pred[13:38, 30] = 0
    r = intra_segment_misclassification(ref, pred)
    assert (r["mixed_fraction"], r["n_missed"]) == (0.0, 1)
    assert r["misclassified_pixel_fraction"] == pytest.approx(22 / (16 + 22))
    # wide vessels: the skeleton is the centre line; the same three segments
    wide = ndimage.grey_dilation(ref, size=(3, 3))
    wide[ndimage.binary_dilation(ref == 3, np.ones((3, 3)))] = 3
    assert len(vessel_segments(wide)[1]) == 3
    # a PNG read by nnU-Net is 1 x H x W: the protocol squeezes the dummy axis
    r = av_protocol_case(ref[None], pred[None])
    assert r["segments"]["n_missed"] == 1
