"""FTSegNetTrainer: the CPB and transformer network, the prior phase and its freezing, the class table, the focal
loss, and the stock train -> stop -> --c -> predict commands on the tumour phantom."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import build_trainer, results_env
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from PIL import Image

from nnunet_ext import stock
from nnunet_ext.methods.ftsegnet.loss import DC_and_Focal_loss, FocalLoss
from nnunet_ext.methods.ftsegnet.network import (
    ClassificationPrior,
    FTSegNetwork,
    TransformerBlock,
    prior_strides,
    reduction_for,
)
from nnunet_ext.methods.ftsegnet.prior import PRIOR_CLASSES_KEY, PRIOR_ENV, prior_state_from_file, read_class_table
from nnunet_ext.phantoms import tumor2d
from nnunet_ext.trainers.ftsegnet_trainers import FTSegNetTrainer, FTSegNetTrainer_DiceFocal


# ---------------------------------------------------------------------------------------------- network
def _unet(dim: int, deep_supervision: bool, outputs: int = 2):
    kwargs = {"n_stages": 4, "features_per_stage": [8, 16, 32, 64], "conv_op": f"torch.nn.Conv{dim}d",
              "kernel_sizes": [[3] * dim] * 4, "strides": [[1] * dim, [1] + [2] * (dim - 1), [2] * dim, [2] * dim],
              "n_conv_per_stage": [1] * 4, "n_conv_per_stage_decoder": [1] * 3, "conv_bias": True,
              "norm_op": f"torch.nn.InstanceNorm{dim}d", "norm_op_kwargs": {"affine": True}, "dropout_op": None,
              "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 3, outputs,
                                  deep_supervision=deep_supervision)


def _ftsegnet(dim: int, deep_supervision: bool, with_prior: bool = True, classes: int = 3):
    unet = _unet(dim, deep_supervision)
    prior = ClassificationPrior(3, classes, prior_strides(unet.encoder), unet.encoder.conv_op) if with_prior else None
    return FTSegNetwork(unet, prior, [16, 32, 32][-dim:])


def test_cpb_is_the_identity_at_initialisation():
    """alpha = 0 and a zero gate/class projection: FTSegNet computes exactly the transformer-only network."""
    torch.manual_seed(0)
    net = _ftsegnet(2, False)
    plain = _ftsegnet(2, False, with_prior=False)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert missing == [] and unexpected and all(k.startswith(("prior.", "cpb.", "class_to_bottleneck."))
                                                for k in unexpected)
    net.eval()
    plain.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
        # the prior's spatial term switches on with alpha, its channel gate with W_c
        net.cpb[1].alpha.fill_(0.5)
        assert not torch.allclose(net(x), plain(x))
        net.cpb[1].alpha.zero_()
        net.cpb[2].gate.weight.normal_()
        assert not torch.allclose(net(x), plain(x))


def test_residual_encoder_plans_supported():
    """ResEnc plans (stem + residual stages): the CPB still starts as the identity on the stem's grid."""
    kwargs = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.Conv2d",
              "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_blocks_per_stage": [1, 1, 1],
              "n_conv_per_stage_decoder": [1, 1], "conv_bias": True, "norm_op": "torch.nn.InstanceNorm2d",
              "norm_op_kwargs": {"affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    unet = get_network_from_plans("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 3, 2, deep_supervision=False)
    prior = ClassificationPrior(3, 2, prior_strides(unet.encoder), unet.encoder.conv_op)
    net = FTSegNetwork(unet, prior, [32, 32]).eval()
    plain = FTSegNetwork(unet, None, [32, 32]).eval()
    plain.transformers.load_state_dict(net.transformers.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_shapes_and_gradients_2d_3d(dim):
    torch.manual_seed(0)
    net = _ftsegnet(dim, True)
    spatial = [16, 32, 32][-dim:]
    x = torch.randn(2, 3, *spatial)
    output, prior_logits = net(x, return_prior_logits=True)
    assert prior_logits.shape == (2, 3)
    # deep supervision on: full resolution first, then the decoder's lower resolutions
    assert tuple(output[0].shape) == (2, 2, *spatial) and len(output) == 3
    assert tuple(output[1].shape[2:]) == {2: (32, 16), 3: (16, 16, 16)}[dim]  # strides 1, (1,)2,2, 2, 2
    # transformer blocks sit in the deepest two stages only
    assert [isinstance(t[0], TransformerBlock) if len(t._modules) else False for t in net.transformers] == \
        [False, False, True, True]
    (sum(o.sum() for o in output) + prior_logits.sum()).backward()
    # the zero-initialised CPB terms still receive gradients, so training can open them
    assert net.cpb[0].alpha.grad is not None and net.cpb[0].alpha.grad.abs() > 0
    assert net.class_to_bottleneck.weight.grad.abs().sum() > 0
    net.decoder.deep_supervision = False  # what the predictor's rebuild does
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (2, 2, *spatial)


def test_spatial_reduction_skips_short_axes():
    # a 3d map 2 x 8 x 8 at reduction 2: only the in-plane axes shrink
    assert reduction_for((2, 8, 8), 2) == (1, 2, 2)
    assert reduction_for((4, 4), 4) == (1, 1)


# ---------------------------------------------------------------------------------------------- inputs and losses
def test_class_table_checked(tmp_path):
    table = tmp_path / "classification.json"
    table.write_text(json.dumps({"a": 0, "b": 2}))
    assert read_class_table(str(table), ["a", "b"]) == {"a": 0, "b": 2}
    with pytest.raises(ValueError, match=r"classification.json: no class for 1 training case.*'c'"):
        read_class_table(str(table), ["a", "b", "c"])
    table.write_text(json.dumps({"a": "tumour"}))
    with pytest.raises(ValueError, match="integers >= 0"):
        read_class_table(str(table))
    table.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_class_table(str(table))


def test_prior_file_must_hold_a_prior(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"network_weights": {"encoder.stages.0.weight": torch.zeros(1)}, "trainer_name": "nnUNetTrainer"}, bad)
    with pytest.raises(ValueError, match=r"holds no FTSegNet classification prior.*nnUNetTrainer"):
        prior_state_from_file(str(bad))
    with pytest.raises(FileNotFoundError, match=PRIOR_ENV):
        prior_state_from_file(str(tmp_path / "missing.pth"))
    prior = ClassificationPrior(3, 2, [(1, 1), (2, 2)], torch.nn.Conv2d)
    torch.save(prior.state_dict(), tmp_path / "prior.pth")
    assert prior_state_from_file(str(tmp_path / "prior.pth")).keys() == prior.state_dict().keys()


def test_focal_loss_ranks_and_ignores():
    target = torch.tensor([[0, 1, 1, 2]])
    good = torch.tensor([[[4.0, -4, -4, 9], [-4, 4, 4, 9], [0, 0, 0, 9]]])  # last pixel wrong, but ignored (2)
    bad = -good
    focal = FocalLoss(gamma=2, ignore_index=2)
    assert focal(good, target) < 0.01 < focal(bad, target)
    # gamma 0 is plain cross-entropy over the non-ignored pixels
    ce = torch.nn.functional.cross_entropy(bad[..., :3], target[..., :3])
    torch.testing.assert_close(FocalLoss(gamma=0, ignore_index=2)(bad, target), ce)
    loss = DC_and_Focal_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False})
    one_hot = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 0]]), 2).movedim(-1, 1).float()
    assert loss(one_hot * 20 - 10, torch.tensor([[[0, 1, 1, 0]]])) < loss(10 - one_hot * 20,
                                                                            torch.tensor([[[0, 1, 1, 0]]]))


# ---------------------------------------------------------------------------------------------- phantom + trainer
def test_tumour_phantom(tumour_preprocessed):
    raw = tumour_preprocessed.raw_dir
    table = json.loads((raw / "classification.json").read_text())
    labels = {p.stem: np.asarray(Image.open(p)) for p in (raw / "labelsTr").glob("*.png")}
    assert set(table) >= set(labels) and set(np.unique(np.concatenate([v.ravel() for v in labels.values()]))) == {0, 1}
    # the table agrees with the masks: class 0 exactly when the image has no tumour, and some of each
    assert all((table[k] == 0) == (v.max() == 0) for k, v in labels.items())
    assert {table[k] for k in labels} == {0, 1, 2}
    again = tumor2d.make_case(tumor2d.case_rng(1, 3), 64)
    np.testing.assert_array_equal(again[1], labels["phantomtumor_003"])


def _trainer(pre: SimpleNamespace, tmp_path: Path, monkeypatch, cls=FTSegNetTrainer) -> FTSegNetTrainer:
    trainer = build_trainer(cls, pre, tmp_path, monkeypatch, "2d")
    trainer.num_epochs, trainer.num_iterations_per_epoch = 10, 2
    trainer.initialize()
    return trainer


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_prior_trains_first_then_stays_frozen(tumour_preprocessed, tmp_path, monkeypatch):
    torch.manual_seed(0)
    trainer = _trainer(tumour_preprocessed, tmp_path, monkeypatch)
    # the phantom's class table (found in nnUNet_raw) gives 3 classes, recorded in the plans for prediction
    assert trainer.prior.num_classes == 3
    assert trainer.plans_manager.plans["configurations"]["2d"][PRIOR_CLASSES_KEY] == 3
    batch = next(trainer.get_dataloaders()[0])
    table = json.loads((tumour_preprocessed.raw_dir / "classification.json").read_text())
    assert trainer.prior_targets(batch, batch["target"][0]).tolist() == [table[k] for k in batch["keys"]]

    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "prior" and trainer.prior.training
    unet_before, prior_before = _state(trainer.network.unet), _state(trainer.prior)
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(6)]
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, trainer.network.unet.state_dict()[k]) for k, v in unet_before.items())
    assert any(not torch.equal(v, trainer.prior.state_dict()[k]) for k, v in prior_before.items())

    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "segment"
    assert not trainer.prior.training and not any(p.requires_grad for p in trainer.prior.parameters())
    prior_frozen = _state(trainer.prior)
    # the segmenter's poly schedule starts afresh after the prior's epoch
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.initial_lr)
    seg_losses = [float(trainer.train_step(batch)["loss"]) for _ in range(4)]
    assert seg_losses[-1] < seg_losses[0], seg_losses
    assert all(p.grad is None for p in trainer.prior.parameters())
    for k, v in prior_frozen.items():
        torch.testing.assert_close(trainer.prior.state_dict()[k], v, rtol=0, atol=0)
    assert trainer.network.cpb[0].alpha.item() != 0  # the CPB opened


def test_foreground_targets_without_a_class_table(tumour_preprocessed, tmp_path, monkeypatch):
    trainer = _trainer(tumour_preprocessed, tmp_path, monkeypatch, FTSegNetTrainer_DiceFocal)
    trainer.class_table = None  # as on a data set without classification.json
    target = torch.zeros(3, 1, 8, 8)
    target[1, 0, 2, 2] = 1
    assert trainer.prior_targets({"keys": ["x"] * 3}, target).tolist() == [0, 1, 0]
    trainer.current_epoch = 5
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "segment"
    assert np.isfinite(float(trainer.train_step(next(trainer.get_dataloaders()[0]))["loss"]))


def test_train_stop_resume_predict_through_stock_commands(tumour_preprocessed, tmp_path, monkeypatch):
    """nnUNetv2_train stops after the prior's epoch, `--c` resumes into the segmentation phase with the trained prior
    (which then stays unchanged), stock nnUNetv2_predict runs the prior inside forward; a new run can take that prior
    through nnUNet_ext_ftsegnet_prior and skip the prior phase."""
    pre = tumour_preprocessed
    name = "FTSegNetTrainer_tiny"  # tests/ext_trainers: 2 epochs x 2 iterations, prior phase = epoch 0
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="3", nnUNet_ext_stop_after_epochs="1")
    log = stock.train(pre.dataset_id, "2d", 0, name, env)
    assert "Phase 'prior'" in log and "patch accuracy" in log
    output = tmp_path / "results" / pre.raw_dir.name / f"{name}__nnUNetPlans__2d"
    stopped = torch.load(output / "fold_0" / "checkpoint_latest.pth", weights_only=False)
    assert stopped["current_epoch"] == 1 and stopped["nnunet_ext"]["phase"] == "prior"
    prior_after_phase = {k: v for k, v in stopped["network_weights"].items() if k.startswith("prior.")}
    assert prior_after_phase and stopped["nnunet_ext"]["aux_optimizers"]["prior"]["state"]

    del env["nnUNet_ext_stop_after_epochs"]
    log = stock.train(pre.dataset_id, "2d", 0, name, env, continue_training=True)
    assert "Phase 'segment'" in log and "Phase 'prior'" not in log
    final = torch.load(output / "fold_0" / "checkpoint_final.pth", weights_only=False)
    for k, v in prior_after_phase.items():
        torch.testing.assert_close(final["network_weights"][k], v, rtol=0, atol=0)
    assert any(not torch.equal(final["network_weights"][k], stopped["network_weights"][k])
               for k in final["network_weights"] if k.startswith("unet."))
    assert json.loads((output / "plans.json").read_text())["configurations"]["2d"][PRIOR_CLASSES_KEY] == 3

    out = tmp_path / "pred"
    stock.predict(pre.raw_dir / "imagesTs", out, pre.dataset_id, "2d", name, env)
    for case in ("phantomtumor_008", "phantomtumor_009"):
        seg = np.asarray(Image.open(out / f"{case}.png"))
        assert seg.shape == (64, 64) and seg.max() <= 1

    # a prior from elsewhere: no prior phase, the given weights, frozen from the first epoch
    monkeypatch.setenv(PRIOR_ENV, str(output / "fold_0" / "checkpoint_final.pth"))
    trainer = _trainer(pre, tmp_path / "second", monkeypatch)
    assert [p.name for p in trainer.phase_schedule.phases] == ["segment"]
    for k, v in prior_after_phase.items():
        torch.testing.assert_close(trainer.network.state_dict()[k], v)
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert not any(p.requires_grad for p in trainer.prior.parameters())


def test_prior_with_the_wrong_class_count_rejected(tumour_preprocessed, tmp_path, monkeypatch):
    wrong = ClassificationPrior(3, 5, [(1, 1)] + [(2, 2)] * 4, torch.nn.Conv2d)
    torch.save(wrong.state_dict(), tmp_path / "wrong.pth")
    monkeypatch.setenv(PRIOR_ENV, str(tmp_path / "wrong.pth"))
    with pytest.raises(RuntimeError, match=r"wrong.pth does not fit this data set's prior \(3 classes"):
        _trainer(tumour_preprocessed, tmp_path, monkeypatch)


def test_3d_trainer_network_from_plans(tumour_preprocessed, tmp_path, monkeypatch):
    """build_network_architecture on a 3d configuration of the plans (the predictor's call, no deep supervision)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = json.loads((tumour_preprocessed.preprocessed / "nnUNetPlans.json").read_text())
    config = copy.deepcopy(plans["configurations"]["2d"])
    arch = config["architecture"]["arch_kwargs"]
    n = arch["n_stages"]
    arch.update(conv_op="torch.nn.Conv3d", norm_op="torch.nn.InstanceNorm3d", kernel_sizes=[[3, 3, 3]] * n,
                strides=[[1, 1, 1]] + [[1, 2, 2]] * (n - 1))
    config["patch_size"] = [4, 64, 64]
    plans["configurations"]["3d_fullres"] = config
    manager = PlansManager(plans)
    net = FTSegNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 3, 2, False)
    net.eval()
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 3, 4, 64, 64)).shape) == (1, 2, 4, 64, 64)
