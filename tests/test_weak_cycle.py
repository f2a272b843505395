"""WeakCycleTrainer: weak-label reading, the translation networks, pseudo-masks (bit-identical for a fixed seed), the
teacher, and the stock commands."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import build_trainer, results_env
from ext_trainers.weak_cycle_test_trainers import WeakCycleTrainer_small
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from PIL import Image

from nnunet_ext import stock
from nnunet_ext.methods.weak_cycle.data import (
    PseudoLabelDataset,
    WeakLabelError,
    balanced_identifiers,
    best_threshold,
    case_kind,
    classify_cases,
    foreground_mask,
    otsu_threshold,
)
from nnunet_ext.methods.weak_cycle.loss import CYCLE_LOSS_WEIGHTS, cycle_generator_losses
from nnunet_ext.methods.weak_cycle.network import WeakCycleDiscriminator, WeakCycleGenerator, discriminator_depths
from nnunet_ext.phantoms import weak2d


# ---------------------------------------------------------------------------------------------- pure functions
def test_case_kinds_follow_the_weak_convention():
    assert case_kind(np.full((1, 1, 4, 4), 2), 2) == "disease"
    assert case_kind(np.zeros((1, 1, 4, 4)), 2) == "normal"
    outside = np.full((1, 1, 4, 4), -1)  # nnU-Net's -1 outside the non-zero region counts as background
    outside[..., 1:3, 1:3] = 2
    assert case_kind(outside, 2) == "disease"
    outside[..., 1:3, 1:3] = 0
    assert case_kind(outside, 2) == "normal"
    outside[..., 1, 1] = 1
    assert case_kind(outside, 2) == "full"


def test_otsu_and_validation_thresholds():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 500)]).clip(0, 1)
    assert 0.35 < otsu_threshold(values) < 0.65
    reference = np.zeros((16, 16), bool)
    reference[4:8, 4:8] = True
    probability = np.where(reference, 0.7, 0.3)
    threshold, score = best_threshold([probability], [reference])
    assert 0.3 < threshold <= 0.7 and score == 1.0


def test_foreground_is_the_non_minimum_region_with_holes_filled():
    data = np.full((2, 1, 12, 12), -3.0, np.float32)
    data[0, 0, 2:10, 2:10] = 1.0
    data[0, 0, 5, 5] = -3.0  # a dark pixel inside the body is still body
    fg = foreground_mask(data)
    assert fg.shape == (1, 12, 12) and fg[0, 5, 5] and fg[0, 2:10, 2:10].all() and fg.sum() == 64


def test_balanced_identifiers_repeat_the_minority():
    from nnunet_ext.methods.weak_cycle.data import WeakCases

    ids = balanced_identifiers(WeakCases(disease=["a", "b", "c", "d", "e"], normal=["n"], full=["f"]))
    assert ids.count("n") == 5 and sorted(set(ids)) == ["a", "b", "c", "d", "e", "f", "n"]


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("dim, size", [(2, (32, 32)), (3, (8, 16, 16))])
def test_generator_and_discriminator_shapes(dim, size):
    torch.manual_seed(0)
    generator = WeakCycleGenerator(2, dim, features=8, n_down=2, n_blocks=1)
    x = torch.randn(2, 2, *size)
    out = generator(x)
    for key in ("translated", "composite", "reconstruction"):
        assert out[key].shape == x.shape
    assert out["mask"].shape == out["cam_map"].shape == (2, 1, *size)
    assert out["cam_logits"].shape == (2, 2)
    assert 0 <= out["mask"].min() and out["mask"].max() <= 1
    # where the attention is 0 the composite is the input itself
    torch.testing.assert_close(out["composite"], out["translated"] * out["mask"] + x * (1 - out["mask"]))
    global_depth, local_depth = discriminator_depths(size)
    for depth in (global_depth, local_depth):
        patch_logits, cam_logits = WeakCycleDiscriminator(2, dim, features=8, n_layers=depth)(x)
        assert patch_logits.shape[:2] == (2, 1) and cam_logits.shape == (2, 2)
        assert patch_logits.shape[2:] == tuple(s // 2 ** depth for s in size)
    assert discriminator_depths((256, 256)) == (5, 3)


def test_generator_losses_reach_every_generator_parameter():
    torch.manual_seed(0)
    g_ab, g_ba = WeakCycleGenerator(1, 2, 8, 2, 1), WeakCycleGenerator(1, 2, 8, 2, 1)
    d_a = (WeakCycleDiscriminator(1, 2, 8, 2), WeakCycleDiscriminator(1, 2, 8, 1))
    d_b = (WeakCycleDiscriminator(1, 2, 8, 2), WeakCycleDiscriminator(1, 2, 8, 1))
    losses, _ = cycle_generator_losses(g_ab, g_ba, d_a, d_b, torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16))
    assert set(losses) == set(CYCLE_LOSS_WEIGHTS)
    sum(losses.values()).backward()
    assert [n for n, p in g_ab.named_parameters() if p.grad is None] == []


# ---------------------------------------------------------------------------------------------- phantom + trainer
def _dataset(pre: SimpleNamespace):
    folder = str(pre.preprocessed / "nnUNetPlans_2d")
    return infer_dataset_class(folder)(folder)


def test_phantom_follows_the_weak_convention(weak_preprocessed):
    raw = weak_preprocessed.raw_dir
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["labels"] == weak2d.LABELS and dataset_json["numTraining"] == 10
    split = json.loads((raw / "splits_final.json").read_text())[0]
    assert len(split["train"]) == 8 and len(split["val"]) == 2
    reference = {p.stem: np.asarray(Image.open(p)) for p in (raw / "referenceTr").glob("*.png")}
    assert len(reference) == 4 and all(m.max() == 1 for m in reference.values())
    for case, mask in reference.items():
        image = np.asarray(Image.open(raw / "imagesTr" / f"{case}_0000.png")).astype(float)
        assert image[mask == 1].mean() > image[(mask == 0) & (image > 0)].mean() + 30  # bright blobs
        assert set(np.unique(np.asarray(Image.open(raw / "labelsTr" / f"{case}.png")))) == {2}
    test_mask = np.asarray(Image.open(raw / "labelsTs" / "phantomweak_010.png"))
    assert test_mask.shape == (32, 32) and test_mask.max() == 1


def test_weak_cases_read_from_the_preprocessed_data(weak_preprocessed):
    dataset = _dataset(weak_preprocessed)
    split = json.loads((weak_preprocessed.preprocessed / "splits_final.json").read_text())[0]
    cases = classify_cases(dataset, split["train"], 2, "Dataset796_PhantomWeak")
    assert len(cases.disease) == 4 and len(cases.normal) == 4 and cases.full == []
    mixed = split["val"] + cases.normal[:1] + cases.disease[:1]
    assert classify_cases(dataset, mixed, 2, "D").full == sorted(split["val"])
    with pytest.raises(WeakLabelError, match=r"Dataset796_PhantomWeak: no normal cases.*all 0"):
        classify_cases(dataset, cases.disease, 2, "Dataset796_PhantomWeak")
    with pytest.raises(WeakLabelError, match=r"Dataset796_PhantomWeak: no disease cases.*ignore label 2"):
        classify_cases(dataset, cases.normal + split["val"], 2, "Dataset796_PhantomWeak")
    with pytest.raises(WeakLabelError, match="declares no ignore label"):
        classify_cases(dataset, split["train"], None, "Dataset796_PhantomWeak")


def _trainer(pre: SimpleNamespace, tmp_path: Path, monkeypatch, cls=WeakCycleTrainer_small):
    trainer = build_trainer(cls, pre, tmp_path, monkeypatch, "2d")
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    return trainer


def test_data_set_without_ignore_label_refused(weak_preprocessed, tmp_path, monkeypatch):
    dataset_json = json.loads((weak_preprocessed.preprocessed / "dataset.json").read_text())
    dataset_json["labels"] = {"background": 0, "lesion": 1}
    with pytest.raises(WeakLabelError, match="Dataset796_PhantomWeak: dataset.json declares no ignore label"):
        build_trainer(WeakCycleTrainer_small, weak_preprocessed, tmp_path, monkeypatch, "2d", dataset_json=dataset_json)


def test_translation_fit_identity_attention_and_teacher(weak_preprocessed, tmp_path, monkeypatch):
    """A short phase-1 fit on the phantom: identity of normal images through G_AB falls near zero; the pseudo-mask
    source is in [0, 1] and zero outside the body; the EMA teacher moves by (1 - decay) towards the student."""
    torch.manual_seed(0)
    trainer = _trainer(weak_preprocessed, tmp_path, monkeypatch)
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "translation"
    disease, normal = trainer._translation_batch(next(trainer.dataloader_train))
    g_ab = trainer.aux_modules["gen_ab"]

    def identity() -> float:
        with torch.no_grad():
            return float((g_ab(normal)["composite"] - normal).abs().mean())

    before = identity()
    for optimizer in trainer.aux_optimizers.values():  # a short fit: a larger step than the original's 1e-4
        for group in optimizer.param_groups:
            group["lr"] = 2e-3
    for _ in range(30):
        trainer.train_step_translation(next(trainer.dataloader_train))
    after = identity()
    assert after < 0.15 and after < 0.5 * before, (before, after)

    dataset = _dataset(weak_preprocessed)
    data = np.asarray(dataset.load_case(trainer.weak_cases.disease[0])[0][:], np.float32)
    fg = foreground_mask(data)
    assert (~fg).sum() > 20  # the phantom's black corners survive nnU-Net's crop
    for source in ("attention", "cam"):
        trainer.pseudo_source = source
        probability = trainer.lesion_probability(g_ab, data)
        assert probability.shape == data.shape[1:]
        assert probability.min() >= 0 and probability.max() <= 1 and probability.max() > 0
        assert np.all(probability[~fg] == 0)

    student, teacher = trainer.network, trainer.aux_modules["teacher"]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    trainer.update_teacher()
    for before_t, t, s in zip(t0, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, trainer.ema_decay * before_t + (1 - trainer.ema_decay) * s)


def _phase1_pseudo_masks(pre: SimpleNamespace, folder: Path, monkeypatch, seed: int = 11) -> tuple[dict, dict, dict]:
    """A seeded in-process phase 1: a short translation fit, then the pseudo-masks as the trainer makes them at the
    phase boundary (masks, threshold, and the raw-geometry files it writes)."""
    monkeypatch.setenv("nnUNet_ext_seed", str(seed))
    trainer = _trainer(pre, folder, monkeypatch)
    trainer.on_train_epoch_start()
    # a larger step than the original's 1e-4: after fewer steps the attention is flat, and the chosen threshold
    # (0.05) then passes the whole body, whatever the generator
    for optimizer in trainer.aux_optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = 2e-3
    for _ in range(40):
        trainer.train_step_translation(next(trainer.dataloader_train))
    trainer.make_pseudo_masks()
    written = {p.name: p.read_bytes() for p in (trainer.weak_folder / "phase1_pseudo_masks").iterdir()}
    return trainer.pseudo_masks, trainer.pseudo_threshold, written


def test_pseudo_masks_are_bit_identical_for_a_fixed_seed(weak_preprocessed, tmp_path, monkeypatch):
    masks, threshold, written = _phase1_pseudo_masks(weak_preprocessed, tmp_path / "a", monkeypatch)
    masks_again, threshold_again, written_again = _phase1_pseudo_masks(weak_preprocessed, tmp_path / "b", monkeypatch)
    assert threshold == threshold_again
    assert sorted(masks) == sorted(masks_again) and len(masks) == 4
    for case, mask in masks.items():
        assert mask.dtype == masks_again[case].dtype and np.array_equal(mask, masks_again[case]), case
    assert written == written_again and len(written) == 5  # 4 label files + threshold.json
    dataset = _dataset(weak_preprocessed)
    for case, mask in masks.items():  # non-trivial: lesion and background, and less than the body, in every mask
        body = foreground_mask(np.asarray(dataset.load_case(case)[0][:], np.float32))
        assert set(np.unique(mask)) == {0, 1} and mask.sum() < body.sum(), (case, threshold)
    # and the seed is what fixes them: another seed trains other generators, which draw other masks
    other, _, _ = _phase1_pseudo_masks(weak_preprocessed, tmp_path / "c", monkeypatch, seed=12)
    assert any(not np.array_equal(mask, other[case]) for case, mask in masks.items())


def test_pseudo_label_dataset_replaces_disease_labels(weak_preprocessed, tmp_path):
    dataset = _dataset(weak_preprocessed)
    case = sorted(dataset.identifiers)[0]
    seg = np.asarray(dataset.load_case(case)[1][:])
    wrapped = PseudoLabelDataset(dataset, tmp_path, [case, case])
    assert wrapped.identifiers == [case, case]
    np.testing.assert_array_equal(np.asarray(wrapped.load_case(case)[1][:]), seg)  # no pseudo-mask yet
    pseudo = np.zeros_like(seg, dtype=np.int8)
    pseudo[..., 3:6, 3:6] = 1
    np.save(tmp_path / f"{case}.npy", pseudo)
    np.testing.assert_array_equal(wrapped.load_case(case)[1], pseudo)


def test_train_stop_resume_in_refinement_export_and_predict(weak_preprocessed, tmp_path):
    """Stock nnUNetv2_train: phase 1 (2 epochs) -> pseudo-masks -> stops after the first refinement epoch; `--c`
    resumes with generators, teacher and pseudo-masks from the checkpoint, the teacher rewrites the masks; the phase-1
    masks are exported as a labelled data set; stock nnUNetv2_predict gives the student's 0/1 masks."""
    pre = weak_preprocessed
    name = "WeakCycleTrainer_tiny"  # tests/ext_trainers: 4 epochs x 2 iterations, phases 2 + 2
    env = results_env(pre.env, tmp_path / "results", nnUNet_ext_seed="3", nnUNet_ext_stop_after_epochs="3",
                      nnUNet_ext_weak_export="799")
    log = stock.train(pre.dataset_id, "2d", 0, name, env)
    assert "Phase 'refinement'" in log and "Phase-1 pseudo-masks (attention) of 4 disease cases" in log
    assert "from validation (2 fully labelled cases)" in log
    fold = tmp_path / "results" / pre.raw_dir.name / f"{name}__nnUNetPlans__2d" / "fold_0"
    stopped = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    ours = stopped["nnunet_ext"]
    assert stopped["current_epoch"] == 3 and ours["phase"] == "refinement" and ours["extra"]["teacher_ready"]
    masks = ours["extra"]["pseudo_masks"]
    assert len(masks) == 4 and all(set(np.unique(m)) <= {0, 1} for m in masks.values())
    assert set(ours["aux_modules"]) == {"gen_ab", "gen_ba", "disc_global_a", "disc_local_a", "disc_global_b",
                                        "disc_local_b", "teacher"}
    phase1 = sorted((fold / "weak_cycle" / "phase1_pseudo_masks").glob("*.png"))
    assert len(phase1) == 4 and np.asarray(Image.open(phase1[0])).shape == (32, 32)
    exported = Path(pre.env["nnUNet_raw"]) / "Dataset799_PhantomWeakPseudo"
    labels = {p.name: np.asarray(Image.open(p)) for p in (exported / "labelsTr").glob("*.png")}
    assert len(labels) == 10 and len(list((exported / "imagesTr").glob("*.png"))) == 10
    assert all(set(np.unique(v)) <= {0, 1} for v in labels.values())  # no ignore left: a fully labelled set

    del env["nnUNet_ext_stop_after_epochs"]
    log = stock.train(pre.dataset_id, "2d", 0, name, env, continue_training=True)
    assert "Epoch 3" in log and "Epoch 2\n" not in log
    assert "Phase-1 pseudo-masks" not in log  # restored from the checkpoint, not recomputed
    assert "Teacher updated" in log
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert set(final["nnunet_ext"]["extra"]["pseudo_masks"]) == set(masks)

    out = tmp_path / "pred"
    stock.predict(pre.raw_dir / "imagesTs", out, pre.dataset_id, "2d", name, env)
    for case in ("phantomweak_010", "phantomweak_011"):
        seg = np.asarray(Image.open(out / f"{case}.png"))
        assert seg.shape == (32, 32) and set(np.unique(seg)) <= {0, 1}
