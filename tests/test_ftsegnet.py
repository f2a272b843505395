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
    ClassificationPriorBlock,
    FTSegNetwork,
    GateCalibration,
    TransformerBlock,
    close_cpb,
    prior_strides,
    reduction_for,
)
from nnunet_ext.methods.ftsegnet.optim import SGDAdamW
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


def _ftsegnet(dim: int, deep_supervision: bool, with_prior: bool = True, classes: int = 3, spatial_prior: bool = True):
    unet = _unet(dim, deep_supervision)
    prior = ClassificationPrior(3, classes, prior_strides(unet.encoder), unet.encoder.conv_op) if with_prior else None
    return FTSegNetwork(unet, prior, [16, 32, 32][-dim:], spatial_prior=spatial_prior)


@pytest.mark.mechanism
def test_ftsegnet_class_only_cpb_ignores_where_the_prior_sees_things():
    """FTSegNetTrainer_ClassOnly's CPB (no spatial term) takes from P only what its features say about the whole
    image: P's feature maps mirrored (same per-image means, different places) leave its output unchanged, while the
    full CPB's output moves; both still use P (a different image's features change the output)."""
    torch.manual_seed(0)
    outputs = {}
    x = torch.randn(2, 3, 32, 32)
    for spatial in (True, False):
        net = _ftsegnet(2, False, spatial_prior=spatial)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        net.eval()
        assert (net.cpb[0].project is None) == (not spatial)
        forward = net.prior.forward

        def mirrored_prior(v, forward=forward):
            logits, evidence = forward(v)
            return logits, [e.flip(-1) for e in evidence]

        with torch.no_grad():
            plain = net(x)
            net.prior.forward = mirrored_prior
            mirrored = net(x)
            net.prior.forward = lambda v, forward=forward: forward(v.flip(0))  # each image gets the other's prior
            swapped = net(x)
        outputs[spatial] = ((mirrored - plain).abs().max(), (swapped - plain).abs().max())
    assert outputs[True][0] > 1e-3 and outputs[True][1] > 1e-3
    assert outputs[False][0] < 1e-5 and outputs[False][1] > 1e-3


def _blob_images(n: int, blob: bool, seed: int) -> torch.Tensor:
    """Noise images, with a bright disc of radius 3 somewhere in the middle when `blob` (a tumour on a fundus)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    if blob:
        yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        for i in range(n):
            cy, cx = torch.randint(8, 24, (2,), generator=g).tolist()
            x[i, :, (yy - cy) ** 2 + (xx - cx) ** 2 <= 9] += 3.0
    return x


def test_ftsegnet_gate_calibration_standardises_keeps_the_identity_and_reads_old_checkpoints():
    """calibrate: each CPB's gate input over the calibration images then has mean 0 and std 1 per channel (against
    torch's own mean/std of the pooled features); a new network computes the same before and after (W_c = 0); a
    state dict from before the calibration existed loads and reads the raw GAP again."""
    torch.manual_seed(0)
    net = _ftsegnet(2, False)
    net.eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        evidence = net.prior(x)[1]
        calibration = GateCalibration(net.prior.output_channels)
        calibration.add([g[:4] for g in evidence])  # two batches of images
        calibration.add([g[4:] for g in evidence])
        assert calibration.count == 6
        calibration.apply(net)
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
        for block, g in zip(net.cpb, evidence, strict=True):
            pooled = g.flatten(2).mean(2)
            torch.testing.assert_close(block.evidence_mean, pooled.mean(0), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(block.evidence_std, pooled.std(0, unbiased=False), rtol=1e-3, atol=1e-6)
            z = block.evidence(g)
            torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), rtol=0, atol=1e-3)
            torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(z.shape[1]), rtol=0, atol=1e-3)
    old = {k: v for k, v in net.state_dict().items() if ".evidence_" not in k}
    fresh = _ftsegnet(2, False)
    fresh.load_state_dict(old)  # strict: the missing buffers are filled in, not reported
    assert all(torch.equal(b.evidence_mean, torch.zeros_like(b.evidence_mean)) and
               torch.equal(b.evidence_std, torch.ones_like(b.evidence_std)) for b in fresh.cpb)
    with pytest.raises(ValueError, match="at least 2 patches"):
        GateCalibration([4]).statistics()


@pytest.mark.mechanism
def test_ftsegnet_calibrated_gate_learns_to_tell_images_apart():
    """The CPB's channel gate must be able to treat tumour and tumour-free images differently. P's instance norm
    leaves GAP(G_s) nearly the same for every image (here a spread of ~0.01 on a level of ~0.4, as on the tumour
    phantom), so a zero-started gate under nnU-Net's SGD (lr 1e-2, Nesterov momentum 0.99) asked to pass features at
    0.5 on plain images and 1.5 on images with a bright disc learns the mean and not the difference (gap < 0.05 after
    100 steps); on the calibrated (standardised) GAP it separates the two kinds at every stage (gap > 0.5). Measured:
    0.001-0.007 raw, 1.2-1.6 calibrated."""
    torch.manual_seed(0)
    prior = ClassificationPrior(3, 2, [(1, 1), (2, 2), (2, 2)], torch.nn.Conv2d).eval()
    x = torch.cat([_blob_images(8, False, 1), _blob_images(8, True, 2)])
    want = torch.cat([torch.full((8,), 0.5), torch.full((8,), 1.5)])
    with torch.no_grad():
        evidence = prior(x)[1]
    calibration = GateCalibration(prior.output_channels)
    calibration.add(evidence)
    statistics = calibration.statistics()
    gaps = {}
    for calibrated in (False, True):
        for s, g in enumerate(evidence):
            assert float(g.flatten(2).mean(2).std(0).mean()) < 0.05  # the raw signal is small at every stage
            torch.manual_seed(0)
            block = ClassificationPriorBlock(4, prior.output_channels[s], torch.nn.Conv2d, spatial=False)
            if calibrated:
                mean, std = statistics[s]
                block.evidence_mean.copy_(mean)
                block.evidence_std.copy_(std)
            optimizer = torch.optim.SGD(block.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
            features = torch.ones(16, 4, *g.shape[2:])
            for _ in range(100):
                loss = ((block(features, g).mean((1, 2, 3)) - want) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                out = block(features, g).mean((1, 2, 3))
            gaps[calibrated, s] = float(out[8:].mean() - out[:8].mean())
    assert all(gaps[False, s] < 0.05 for s in range(3)), gaps
    assert all(gaps[True, s] > 0.5 for s in range(3)), gaps


@pytest.mark.mechanism
def test_ftsegnet_closed_cpb_gives_the_nocpb_output_exactly():
    """A trained-looking CPB (alpha, gate and bottleneck projection all non-zero) changes the output; closing it
    (close_cpb: alpha, gate weights and bias, bottleneck projection to 0) gives exactly the transformer-only network
    with the same segmenter weights, whatever the prior computes."""
    torch.manual_seed(0)
    net = _ftsegnet(2, False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every weight moved, CPB and transformer branches included
    plain = _ftsegnet(2, False, with_prior=False)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert missing == [] and unexpected and all(k.startswith(("prior.", "cpb.", "class_to_bottleneck."))
                                                for k in unexpected)
    net.eval()
    plain.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - plain(x)).abs().max() > 1e-3
        close_cpb(net)
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
        # each of the three paths alone reopens it
        net.cpb[1].alpha.fill_(0.5)
        assert not torch.allclose(net(x), plain(x))
        net.cpb[1].alpha.zero_()
        net.cpb[2].gate.weight.normal_()
        assert not torch.allclose(net(x), plain(x))
        close_cpb(net)
        net.class_to_bottleneck.bias.fill_(1.0)
        assert not torch.allclose(net(x), plain(x))


def test_ftsegnet_new_network_is_the_plans_unet():
    """Zero-initialised CPB and transformer output layers: at initialisation FTSegNet (and the transformer-only
    network) compute exactly the plans' U-Net, so the extra parts can only grow in where training finds them useful."""
    torch.manual_seed(0)
    net = _ftsegnet(2, False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.unet(x), rtol=0, atol=0)


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


def test_tumour_phantom_naevi_are_dark_unlabelled_and_leave_the_rest_alone():
    """mimics=True adds benign naevi: darker than the choroid around them, background in the label map; the mask,
    class and (without mimics) the image are those of the default phantom."""
    for i in range(6):
        plain = tumor2d.make_case(tumor2d.case_rng(0, i), 96)
        naevi = tumor2d.make_case(tumor2d.case_rng(0, i), 96, mimics=True)
        np.testing.assert_array_equal(plain[1], naevi[1])
        assert plain[2] == naevi[2]
        darker = plain[0].astype(int).sum(-1) - naevi[0].astype(int).sum(-1) > 60
        # a naevus is 30-200 pixels of clear darkening, never on the tumour
        assert 30 <= darker.sum() <= 400 and not (darker & (plain[1] > 0)).any()


def test_tumour_phantom_balanced_masks_alternate_and_leave_the_rest_alone(tmp_path):
    """balanced_masks=True: the masked training cases alternate tumour / no tumour; the classification-only and the
    held-out cases are the default phantom's images."""
    kwargs = dict(n_train=10, n_test=2, size=48, seed=0, n_classification_only=6, balanced_test=True)
    plain = tumor2d.generate(tmp_path / "plain", 781, **kwargs)
    balanced = tumor2d.generate(tmp_path / "balanced", 781, balanced_masks=True, **kwargs)
    table = json.loads((balanced / tumor2d.CLASS_TABLE).read_text())
    for i in range(10):
        name = f"{tumor2d.NAME.lower()}_{i:03d}"
        label = np.asarray(Image.open(balanced / "labelsTr" / f"{name}.png"))
        if i < 4:
            assert (label == 1).any() == (i % 2 == 0) and (table[name] != tumor2d.CLASSES["no_tumour"]) == (i % 2 == 0)
        else:
            assert (label == tumor2d.IGNORE).all()
            for sub, f in (("imagesTr", f"{name}_0000.png"), ("labelsTr", f"{name}.png")):
                np.testing.assert_array_equal(np.asarray(Image.open(plain / sub / f)),
                                              np.asarray(Image.open(balanced / sub / f)))
    held_out = sorted((plain / "imagesTs").glob("*.png"))
    assert len(held_out) == 2
    for f in held_out:
        np.testing.assert_array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(balanced / "imagesTs" / f.name)))


def _trainer(pre: SimpleNamespace, tmp_path: Path, monkeypatch, cls=FTSegNetTrainer, **kwargs) -> FTSegNetTrainer:
    trainer = build_trainer(cls, pre, tmp_path, monkeypatch, "2d", **kwargs)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 10, 2
    trainer.initialize()
    return trainer


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_prior_trains_on_its_own_budget_then_stays_frozen(tumour_preprocessed, tmp_path, monkeypatch):
    """P trains its prior_iterations before epoch 0, leaving the segmenter untouched; the segmenter then has every
    epoch of the budget, with nnU-Net's LR schedule from epoch 0, and P stays frozen."""
    torch.manual_seed(0)
    trainer = _trainer(tumour_preprocessed, tmp_path, monkeypatch)
    # the phantom's class table (found in nnUNet_raw) gives 3 classes, recorded in the plans for prediction
    assert trainer.prior.num_classes == 3
    assert trainer.plans_manager.plans["configurations"]["2d"][PRIOR_CLASSES_KEY] == 3
    loader_tr, loader_val = trainer.prior_dataloaders()
    batch = next(loader_tr)
    table = json.loads((tumour_preprocessed.raw_dir / "classification.json").read_text())
    assert trainer.prior_targets(batch, batch["target"][0]).tolist() == [table[k] for k in batch["keys"]]

    unet_before, prior_before = _state(trainer.network.unet), _state(trainer.prior)
    losses = [trainer.train_step_prior(batch)[0] for _ in range(6)]
    assert losses[-1] < losses[0], losses
    assert trainer.prior_iterations_left() == 1000
    trainer.train_prior(loader_tr, 4)
    assert trainer.prior_iterations_done == 4 and trainer.prior_iterations_left() == 996
    assert 0 <= trainer.prior_accuracy(loader_val) <= 1
    assert all(torch.equal(v, trainer.network.unet.state_dict()[k]) for k, v in unet_before.items())
    assert any(not torch.equal(v, trainer.prior.state_dict()[k]) for k, v in prior_before.items())

    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "segment" and trainer.current_phase.start == 0
    assert trainer.current_phase.end == trainer.num_epochs
    assert not trainer.prior.training and not any(p.requires_grad for p in trainer.prior.parameters())
    prior_frozen = _state(trainer.prior)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [trainer.initial_lr, trainer.transformer_lr]
    seg_losses = [float(trainer.train_step(batch)["loss"]) for _ in range(4)]
    assert seg_losses[-1] < seg_losses[0], seg_losses
    assert all(p.grad is None for p in trainer.prior.parameters())
    for k, v in prior_frozen.items():
        torch.testing.assert_close(trainer.prior.state_dict()[k], v, rtol=0, atol=0)
    assert trainer.network.cpb[0].alpha.item() != 0  # the CPB opened
    vitals = trainer.epoch_vital_signs()
    assert set(vitals) >= {"prior/validation accuracy", "alpha/stage 0"}
    for loader in (loader_tr, loader_val):
        loader._finish() if hasattr(loader, "_finish") else None


def test_optimizer_rules_match_torch():
    """The 'sgd' rule is torch's Nesterov SGD, the 'adamw' rule torch's AdamW, the warm-up scales AdamW's steps."""
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(3)]

    def run(make):
        p = torch.nn.Parameter(start.clone())
        opt = make([p])
        for g in grads:
            p.grad = g.clone()
            opt.step()
        return p.detach()

    torch.testing.assert_close(
        run(lambda ps: SGDAdamW([{"params": ps, "rule": "sgd", "lr": 0.1, "weight_decay": 0.01}])),
        run(lambda ps: torch.optim.SGD(ps, 0.1, momentum=0.99, nesterov=True, weight_decay=0.01)))
    torch.testing.assert_close(
        run(lambda ps: SGDAdamW([{"params": ps, "rule": "adamw", "lr": 0.1, "weight_decay": 0.01}])),
        run(lambda ps: torch.optim.AdamW(ps, 0.1, weight_decay=0.01)))
    # warm-up over 4 steps: the first step moves by a quarter of AdamW's first step
    one = [grads[0]]
    grads[:] = one
    plain = run(lambda ps: SGDAdamW([{"params": ps, "rule": "adamw", "lr": 0.1, "weight_decay": 0}]))
    warm = run(lambda ps: SGDAdamW([{"params": ps, "rule": "adamw", "lr": 0.1, "weight_decay": 0, "warmup": 4}]))
    torch.testing.assert_close(warm - start, (plain - start) / 4)
    with pytest.raises(ValueError, match="unknown update rule 'lamb'"):
        SGDAdamW([{"params": [torch.nn.Parameter(start)], "rule": "lamb"}])


def test_transformer_blocks_get_their_own_rule(tumour_preprocessed, tmp_path, monkeypatch):
    """Transformer parameters in an AdamW group at transformer_lr with its decay, everything else (not P) in
    nnU-Net's SGD group; the poly schedule decays each group from its own initial lr."""
    trainer = _trainer(tumour_preprocessed, tmp_path, monkeypatch)
    sgd, adamw = trainer.optimizer.param_groups
    net = trainer.network
    assert adamw["rule"] == "adamw" and {id(p) for p in adamw["params"]} == {id(p) for p in
                                                                             net.transformers.parameters()}
    assert sgd["rule"] == "sgd" and sgd["lr"] == trainer.initial_lr
    assert not {id(p) for p in sgd["params"]} & {id(p) for p in net.prior.parameters()}
    assert len(sgd["params"]) + len(adamw["params"]) + len(list(net.prior.parameters())) == len(list(
        net.parameters()))
    trainer.lr_scheduler.step(5)
    assert adamw["lr"] == pytest.approx(trainer.transformer_lr * 0.5 ** 0.9)
    assert sgd["lr"] == pytest.approx(trainer.initial_lr * 0.5 ** 0.9)


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
    """nnUNetv2_train trains the prior before epoch 0 and stops after epoch 0; `--c` does not train the prior again
    (it stays bit-identical), stock nnUNetv2_predict runs the prior inside forward; a new run can take that prior
    through nnUNet_ext_ftsegnet_prior and skip the prior's training."""
    pre = tumour_preprocessed
    name = "FTSegNetTrainer_tiny"  # tests/ext_trainers: 6 prior steps, then 2 epochs x 2 iterations
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="3", nnUNet_ext_stop_after_epochs="1")
    log = stock.train(pre.dataset_id, "2d", 0, name, env)
    assert "validation patch accuracy" in log
    assert log.index("Training the classification prior: 6 iterations") < log.index("prior iteration 6: loss") \
        < log.index("Epoch 0")
    output = tmp_path / "results" / pre.raw_dir.name / f"{name}__nnUNetPlans__2d"
    stopped = torch.load(output / "fold_0" / "checkpoint_latest.pth", weights_only=False)
    assert stopped["current_epoch"] == 1 and stopped["nnunet_ext"]["phase"] == "segment"
    assert stopped["nnunet_ext"]["extra"]["prior_iterations_done"] == 6
    prior_after_training = {k: v for k, v in stopped["network_weights"].items() if k.startswith("prior.")}
    assert prior_after_training and stopped["nnunet_ext"]["aux_optimizers"]["prior"]["state"]
    assert (output / "fold_0" / "ftsegnet_progress.png").is_file()
    # the CPB gates were calibrated on the frozen prior before epoch 0, and the checkpoint keeps it
    assert log.index("CPB gates calibrated on") < log.index("Epoch 0")
    calibrated = {k: v for k, v in stopped["network_weights"].items() if ".evidence_" in k}
    assert calibrated and any(not torch.equal(v, torch.ones_like(v)) for k, v in calibrated.items()
                              if k.endswith("evidence_std"))

    del env["nnUNet_ext_stop_after_epochs"]
    log = stock.train(pre.dataset_id, "2d", 0, name, env, continue_training=True)
    assert "Training the classification prior" not in log and "CPB gates calibrated" not in log and "Epoch 1" in log
    final = torch.load(output / "fold_0" / "checkpoint_final.pth", weights_only=False)
    for k, v in {**prior_after_training, **calibrated}.items():
        torch.testing.assert_close(final["network_weights"][k], v, rtol=0, atol=0)
    assert any(not torch.equal(final["network_weights"][k], stopped["network_weights"][k])
               for k in final["network_weights"] if k.startswith("unet."))
    assert json.loads((output / "plans.json").read_text())["configurations"]["2d"][PRIOR_CLASSES_KEY] == 3

    out = tmp_path / "pred"
    stock.predict(pre.raw_dir / "imagesTs", out, pre.dataset_id, "2d", name, env)
    for case in ("phantomtumor_008", "phantomtumor_009"):
        seg = np.asarray(Image.open(out / f"{case}.png"))
        assert seg.shape == (64, 64) and seg.max() <= 1

    # a prior from elsewhere: no prior training, the given weights, frozen from the first epoch
    monkeypatch.setenv(PRIOR_ENV, str(output / "fold_0" / "checkpoint_final.pth"))
    trainer = _trainer(pre, tmp_path / "second", monkeypatch)
    assert trainer.prior_iterations_left() == 0
    for k, v in prior_after_training.items():
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


# ---------------------------------------------------------------------------------------------- classification-only
CLS_ONLY_ID = 788


@pytest.fixture(scope="module")
def tumour_classification_only(tumour_preprocessed, tmp_path_factory) -> SimpleNamespace:
    """The tumour fixture's 8 training images again, the last 3 classification-only (label map all ignore, class in
    classification.json). The images are the same, so the fixture's fingerprint and plans fit: copied, and only
    nnU-Net's preprocessing runs (planning would cost ~20 s more)."""
    root = tmp_path_factory.mktemp("tumour_cls_only")
    env = stock.work_environment(root / "nnunet", device="cpu")
    raw = tumor2d.generate(Path(env["nnUNet_raw"]), CLS_ONLY_ID, n_train=8, n_test=2, size=64, seed=1,
                           n_classification_only=3)
    preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
    preprocessed.mkdir(parents=True)
    for name in ("dataset_fingerprint.json", "nnUNetPlans.json"):
        content = json.loads((tumour_preprocessed.preprocessed / name).read_text())
        if "dataset_name" in content:
            content["dataset_name"] = raw.name
        (preprocessed / name).write_text(json.dumps(content))
    (preprocessed / "dataset.json").write_text((raw / "dataset.json").read_text())  # with the ignore label
    stock.run([stock.find_command("nnUNetv2_preprocess"), "-d", str(CLS_ONLY_ID), "-c", "2d", "-np", "1"],
              {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"})
    return SimpleNamespace(dataset_id=CLS_ONLY_ID, raw_dir=raw, env=env, root=root, configuration="2d",
                           preprocessed=preprocessed)


@pytest.mark.mechanism
def test_ftsegnet_classification_only_case_changes_prior_not_segmentation_loss(tumour_classification_only, tmp_path,
                                                                                monkeypatch):
    """Cases with a class and no mask: found from nnU-Net's preprocessing, kept out of the segmenter's loaders, drawn
    by the prior's (nnU-Net's sampler copes with a case that has no annotated pixel); a prior step on them moves P,
    while nnU-Net's Dice+CE with the ignore label gives them no loss and no gradient."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    pre = tumour_classification_only
    torch.manual_seed(0)
    trainer = _trainer(pre, tmp_path, monkeypatch)
    only = [f"phantomtumor_{i:03d}" for i in (5, 6, 7)]
    assert sorted(trainer.classification_only) == only
    seg_tr, seg_val = trainer.get_tr_and_val_datasets()
    assert not set(only) & (set(seg_tr.identifiers) | set(seg_val.identifiers))
    loader_tr, loader_val = trainer.prior_dataloaders()
    prior_cases = set(loader_tr.data_loader.indices) | set(loader_val.data_loader.indices)
    assert set(only) <= prior_cases

    patch = trainer.configuration_manager.patch_size
    loader = nnUNetDataLoader(trainer.dataset_class(trainer.preprocessed_dataset_folder, only), 2, patch, patch,
                              trainer.label_manager, oversample_foreground_percent=0.5,
                              transforms=loader_tr.data_loader.transforms)
    table = json.loads((pre.raw_dir / "classification.json").read_text())
    with pytest.warns(UserWarning, match="No annotated pixels"):
        cls_batch = loader.generate_train_batch()
    # no tumour anywhere: ignore, and background where augmentation rotated or scaled padding in at the borders (one
    # reason the segmenter is better off never drawing such cases)
    assert all(set(torch.unique(t).tolist()) <= {0, tumor2d.IGNORE} and bool((t == tumor2d.IGNORE).any())
               for t in cls_batch["target"])
    assert trainer.prior_targets(cls_batch, cls_batch["target"][0]).tolist() == [table[k] for k in cls_batch["keys"]]

    prior_before = _state(trainer.prior)
    trainer.train_step_prior(cls_batch)
    assert any(not torch.equal(v, trainer.prior.state_dict()[k]) for k, v in prior_before.items())

    seg_batch = next(trainer.get_dataloaders()[0])
    assert trainer.configuration_manager.batch_dice  # the Dice sums over the batch: the value is comparable too
    g = torch.Generator().manual_seed(0)
    heads = trainer.label_manager.num_segmentation_heads
    n = seg_batch["target"][0].shape[0]
    masked_outputs = [torch.randn((n, heads, *t.shape[2:]), generator=g).requires_grad_() for t in seg_batch["target"]]
    masked_loss = trainer.loss(masked_outputs, seg_batch["target"])
    masked_loss.backward()
    # the same outputs for the masked items, one more item for a classification-only case
    mixed = [torch.cat([s, torch.full_like(s[:1], tumor2d.IGNORE)]) for s in seg_batch["target"]]
    mixed_outputs = [torch.cat([o.detach(), torch.randn((1, *o.shape[1:]))]).requires_grad_() for o in masked_outputs]
    mixed_loss = trainer.loss(mixed_outputs, mixed)
    mixed_loss.backward()
    torch.testing.assert_close(mixed_loss.detach(), masked_loss.detach())
    for grad, masked_grad in zip([o.grad for o in mixed_outputs], [o.grad for o in masked_outputs], strict=True):
        if grad is None:  # the lowest deep-supervision output has weight 0, as in nnU-Net
            assert masked_grad is None
            continue
        assert torch.count_nonzero(grad[n:]) == 0
        torch.testing.assert_close(grad[:n], masked_grad)
    for loader in (loader_tr, loader_val):
        loader._finish() if hasattr(loader, "_finish") else None


@pytest.mark.mechanism
def test_ftsegnet_prior_learns_the_class_table_on_cases_it_can_overfit(tumour_preprocessed, tmp_path, monkeypatch):
    """The CPB passes on what P knows, so P must learn the image classes: on the 6 training cases of fold 0 (3
    large tumours, 1 small, 2 none) prior training takes P's class-balanced patch accuracy on them from chance to
    near certainty, which naming the commonest class (1/3) cannot reach, and the vital signs stay quiet. A class
    table read for the wrong cases, targets that ignore it, or a prior step that does not update P fail here.
    Measured (2026-12-03, unseeded runs): balanced accuracy 0.67-0.78 after 1000 steps, 0.87-1.0 after 2000,
    0.94-1.0 after 3000 (about 8 s a thousand)."""
    trainer = _trainer(tumour_preprocessed, tmp_path, monkeypatch, nnUNet_ext_seed="0")
    loader_tr, loader_val = trainer.prior_dataloaders()
    try:
        before = trainer.prior_scores(loader_tr)
        trainer.train_prior(loader_tr, 3000)
        after = trainer.prior_scores(loader_tr)
    finally:
        for loader in (loader_tr, loader_val):
            loader._finish() if hasattr(loader, "_finish") else None
    assert before["classes"] == after["classes"] == 3
    assert after["balanced accuracy"] >= 0.8, (before, after)
    assert after["balanced accuracy"] > before["balanced accuracy"] + 0.3, (before, after)
    trainer.prior_val_scores = after
    assert not trainer.vital_sign_warnings([{"epoch": 0, **trainer.epoch_vital_signs()}])


@pytest.mark.mechanism
def test_ftsegnet_vital_signs_warn_when_the_prior_names_one_class_for_every_patch(tumour_preprocessed, tmp_path,
                                                                                   monkeypatch):
    """A prior that calls every patch 'large tumour' (half of the training cases) has a plain accuracy well above
    chance (1/3), so only the class-balanced accuracy shows the collapse: exactly 1/3, and the warning says so."""
    trainer = _trainer(tumour_preprocessed, tmp_path, monkeypatch, nnUNet_ext_seed="0")
    with torch.no_grad():
        trainer.prior.head.weight.zero_()
        trainer.prior.head.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    loader_tr, loader_val = trainer.prior_dataloaders()
    try:
        scores = trainer.prior_scores(loader_tr)
    finally:
        for loader in (loader_tr, loader_val):
            loader._finish() if hasattr(loader, "_finish") else None
    assert scores["classes"] == 3
    assert scores["balanced accuracy"] == pytest.approx(1 / 3)
    assert scores["accuracy"] > 1 / 3 + 0.05, scores  # what the plain-accuracy warning alone would have missed
    trainer.prior_val_scores = scores
    vitals = trainer.epoch_vital_signs()
    assert vitals["prior/validation balanced accuracy"] == pytest.approx(1 / 3)
    warnings = trainer.vital_sign_warnings([{"epoch": 0, **vitals}])
    assert len(warnings) == 1 and "no better than naming one class for every patch" in warnings[0], warnings
