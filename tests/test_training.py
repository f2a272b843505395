"""The shared trainer machinery, in-process and through the stock nnUNetv2_train."""


import pytest
import torch
from conftest import build_trainer, results_env
from ext_trainers.aux_test_trainers import AuxPhaseTestTrainer

from nnunet_ext import stock
from nnunet_ext.trainers.baseline_trainers import nnUNetTrainer_debug
from nnunet_ext.training.variants import short_variant


def _build(trainer_class, fundus, tmp_path, monkeypatch):
    return build_trainer(trainer_class, fundus, tmp_path, monkeypatch, "2d")


def test_short_variant_sets_budget_and_keeps_signature(fundus_preprocessed, tmp_path, monkeypatch):
    t = _build(nnUNetTrainer_debug, fundus_preprocessed, tmp_path, monkeypatch)
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (2, 5, 2)
    # nnU-Net rebuilds trainers from these recorded init args (checkpoints, DDP): exactly its five
    assert set(t.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    assert nnUNetTrainer_debug.__module__ == "nnunet_ext.trainers.baseline_trainers"
    custom = short_variant(AuxPhaseTestTrainer, "Aux_1x2", epochs=1, iterations=2)
    assert custom.__name__ == "Aux_1x2" and custom.__module__ == __name__
    with pytest.raises(ValueError, match="must be >= 1"):
        short_variant(AuxPhaseTestTrainer, "Aux_0", epochs=0, iterations=2)


def test_phases_switch_which_modules_train(fundus_preprocessed, tmp_path, monkeypatch):
    t = _build(AuxPhaseTestTrainer, fundus_preprocessed, tmp_path, monkeypatch)
    t.initialize()
    critic = t.aux_modules["critic"]
    t.current_epoch = 0
    t.on_train_epoch_start()
    assert t.current_phase.name == "warmup"
    assert not any(p.requires_grad for p in critic.parameters()) and not critic.training
    assert all(p.requires_grad for p in t.network.parameters())
    t.current_epoch = 1
    t.on_train_epoch_start()
    assert t.current_phase.name == "joint"
    assert all(p.requires_grad for p in critic.parameters()) and critic.training
    # the aux scheduler follows the epoch like nnU-Net's own
    assert t.aux_optimizers["critic"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)


def test_schedule_naming_an_unknown_module_fails_at_start_up(fundus_preprocessed, tmp_path, monkeypatch):
    from nnunet_ext.training.phases import Phase, PhaseSchedule

    t = _build(AuxPhaseTestTrainer, fundus_preprocessed, tmp_path, monkeypatch)
    t.phase_schedule = PhaseSchedule([Phase("gan", None, train=("network", "discriminator"))])
    with pytest.raises(ValueError, match=r"unknown modules \['discriminator'\]"):
        t.initialize()


def _state_equal(a, b, path="") -> list[str]:
    """Paths at which two nested checkpoint structures differ (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [path]
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path} keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in _state_equal(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list | tuple):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _state_equal(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def test_stop_and_resume_with_aux_state_matches_a_straight_run(fundus_preprocessed, tmp_path):
    """3 epochs straight vs 2 epochs, a clean stop, and `nnUNetv2_train --c`: identical final state, auxiliary
    network, its Adam moments and its scheduler included (seeded, single-process augmentation)."""
    f = fundus_preprocessed
    name = "AuxPhaseTestTrainer"
    straight = results_env(f.env, tmp_path / "straight", nnUNet_ext_seed="123")
    stock.train(f.dataset_id, "2d", 0, name, straight)

    interrupted = results_env(f.env, tmp_path / "interrupted", nnUNet_ext_seed="123",
                              nnUNet_ext_stop_after_epochs="2")
    stock.train(f.dataset_id, "2d", 0, name, interrupted)
    fold = tmp_path / "interrupted" / f.raw_dir.name / f"{name}__nnUNetPlans__2d" / "fold_0"
    assert not (fold / "checkpoint_final.pth").exists()
    stopped = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    assert stopped["current_epoch"] == 2
    assert stopped["nnunet_ext"]["phase"] == "joint"
    assert set(stopped["nnunet_ext"]["aux_optimizers"]["critic"]["state"])  # Adam moments exist

    resumed = dict(interrupted)
    del resumed["nnUNet_ext_stop_after_epochs"]
    log = stock.train(f.dataset_id, "2d", 0, name, resumed, continue_training=True)
    assert "Epoch 2" in log and "Epoch 1\n" not in log

    a = torch.load(tmp_path / "straight" / f.raw_dir.name / f"{name}__nnUNetPlans__2d" / "fold_0" /
                   "checkpoint_final.pth", weights_only=False)
    b = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert a["current_epoch"] == b["current_epoch"] == 3
    for key in ("network_weights", "optimizer_state"):
        assert _state_equal(a[key], b[key], key) == []
    for key in ("aux_modules", "aux_optimizers", "aux_lr_schedulers"):
        assert _state_equal(a["nnunet_ext"][key], b["nnunet_ext"][key], key) == []
    # and the run really changed the auxiliary network after the resume
    assert _state_equal(stopped["nnunet_ext"]["aux_modules"], b["nnunet_ext"]["aux_modules"]) != []


def test_checkpoint_without_aux_state_is_refused(fundus_preprocessed, tmp_path, monkeypatch):
    plain = _build(nnUNetTrainer_debug, fundus_preprocessed, tmp_path, monkeypatch)
    plain.initialize()
    ckpt = tmp_path / "plain.pth"
    plain.save_checkpoint(str(ckpt))
    assert "nnunet_ext" in torch.load(ckpt, weights_only=False)
    data = torch.load(ckpt, weights_only=False)
    del data["nnunet_ext"]
    torch.save(data, ckpt)
    aux = _build(AuxPhaseTestTrainer, fundus_preprocessed, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match=r"plain.pth was written by nnUNetTrainer_debug.*needs \['critic'\]"):
        aux.load_checkpoint(str(ckpt))


def test_optimizer_step_skips_an_update_whose_gradient_norm_is_not_finite(fundus_preprocessed, tmp_path, monkeypatch):
    """nnU-Net's order (unscale, clip, step) steps on gradients the clipping made NaN; the shared step skips such an
    update instead (weights and optimizer state untouched, gradients dropped), backs a GradScaler off by its factor,
    counts the skip for the epoch's warning, and applies the finite updates as before."""
    t = _build(AuxPhaseTestTrainer, fundus_preprocessed, tmp_path, monkeypatch)
    t.initialize()
    t.current_epoch = 1
    t.on_train_epoch_start()
    critic, optimizer = t.aux_modules["critic"], t.aux_optimizers["critic"]
    params = list(critic.parameters())
    x = torch.rand(2, t.label_manager.num_segmentation_heads, 8, 8)

    def weights():
        return [p.detach().clone() for p in params]

    def moved(before):
        return sum(float((p.detach() - b).abs().sum()) for p, b in zip(params, before, strict=True))

    assert t.grad_scaler is None and t.skipped_updates_warning() is None  # CPU: no scaler, as nnU-Net
    before = weights()
    assert t.optimizer_step(critic(x).sum() * float("nan"), optimizer, params) is False
    assert moved(before) == 0 and all(p.grad is None for p in params) and not optimizer.state
    assert t.optimizer_step(critic(x).square().sum(), optimizer, params) is True
    assert moved(before) > 0 and all(bool(torch.isfinite(p).all()) for p in params)
    assert t.update_counts == [2, 1] and t.skipped_updates_warning().startswith("1 of this epoch's 2 updates skipped")

    # the same with a real GradScaler: an overflowing loss halves the scale and steps nothing; then a finite one steps
    t.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = weights()
    state = {k: v.clone() for k, v in optimizer.state[params[0]].items()}
    assert t.optimizer_step(critic(x).sum() * 3e38, optimizer, params) is False
    assert t.grad_scaler.get_scale() == 2.0 ** 9 and moved(before) == 0
    assert _state_equal(state, optimizer.state[params[0]]) == []
    assert t.optimizer_step(critic(x).square().sum(), optimizer, params) is True
    assert t.grad_scaler.get_scale() == 2.0 ** 9 and moved(before) > 0
    t.on_train_epoch_start()
    assert t.update_counts == [0, 0] and t.skipped_updates_warning() is None
