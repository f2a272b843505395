"""WeakCycleTrainer: weak-label reading, body masks, per-image thresholds, the translation networks, pseudo-masks
(bit-identical for a fixed seed), the teacher, vital signs, the stock commands, and the mechanism tests (marked
`mechanism`): the body mask of a preprocessed BraTS-like case is its brain, and a short translation run on the
distractor phantom gives pseudo-masks better than keeping the whole body; refinement batches carry a weak and a
strong view of one patch."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import build_trainer, results_env
from ext_trainers.weak_cycle_test_trainers import WeakCycleTrainer_small
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from PIL import Image
from scipy import ndimage

from nnunet_ext import stock
from nnunet_ext.dataset_conversion._weak import weak_label
from nnunet_ext.methods.weak_cycle.data import (
    PseudoLabelDataset,
    WeakLabelError,
    balanced_identifiers,
    best_threshold,
    body_mask,
    case_kind,
    classify_cases,
    dice,
    otsu_threshold,
    teacher_thresholds,
    threshold_image,
)
from nnunet_ext.methods.weak_cycle.loss import (
    CYCLE_LOSS_WEIGHTS,
    ISIC_LOSS_WEIGHTS,
    LOSS_NAMES,
    cycle_generator_losses,
    weighted_sum,
)
from nnunet_ext.methods.weak_cycle.network import (
    WeakCycleDiscriminator,
    WeakCycleGenerator,
    attention_and_cam,
    discriminator_depths,
    generator_downsamplings,
)
from nnunet_ext.methods.weak_cycle.views import split_views
from nnunet_ext.phantoms import weak2d
from nnunet_ext.trainers.weak_cycle_trainers import (
    WeakCycleTrainer_noComposite,
    lesion_and_rest,
    lesion_contrast,
)
from nnunet_ext.training.base import unwrap
from nnunet_ext.training.vitals import format_vitals

MECHANISM_STEPS = 150  # translation steps of the mechanism test


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
    brain = np.zeros((1, 1, 4, 4), int)  # the converters' disease map: ignore over the image, 0 outside it
    brain[..., 1:3, 1:3] = 2
    assert case_kind(brain, 2) == "disease"


def test_otsu_and_validation_thresholds():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 500)]).clip(0, 1)
    assert 0.35 < otsu_threshold(values) < 0.65
    reference = np.zeros((16, 16), bool)
    reference[4:8, 4:8] = True
    probability = np.where(reference, 0.7, 0.3)
    threshold, score = best_threshold([probability], [reference])
    assert 0.3 < threshold <= 0.7 and score == 1.0


@pytest.mark.mechanism
def test_weak_cycle_teacher_thresholds_keep_each_class_of_an_unsure_teacher():
    """Class-balanced teacher thresholds, values by hand: the median of each class's confidences over the bodies,
    capped by the absolute confidence. An unsure teacher (lesion at 0.6-0.8) keeps half its lesion pixels, where
    the absolute 0.9 would drop the lesion class and leave the student a background-only target."""
    p1 = np.array([0.95, 0.7, 0.6, 0.2, 0.05, 0.5], np.float32)
    p2 = np.array([0.8, 0.3, 0.4], np.float32)
    bodies = [np.ones(6, bool), np.array([True, True, False])]
    high, low = teacher_thresholds([p1, p2], bodies, 0.9, 0.5)
    # lesion side (> 0.5): 0.6, 0.7, 0.8, 0.95 -> median 0.75; background side: 1 - (0.05, 0.2, 0.3) -> median 0.8
    assert high == pytest.approx(0.75) and low == pytest.approx(0.2)
    assert teacher_thresholds([p1, p2], bodies, 0.9, None) == (0.9, pytest.approx(0.1))
    high, low = teacher_thresholds([p1, p2], bodies, 0.9, 1.0)  # keep all: each class's least confident pixel
    assert high == pytest.approx(0.6) and low == pytest.approx(0.3)
    confident = [np.array([0.97, 0.99, 0.01, 0.02], np.float32)]
    assert teacher_thresholds(confident, [np.ones(4, bool)], 0.9, 0.5) == (0.9, pytest.approx(0.1))
    unsure = np.array([0.6, 0.7, 0.75, 0.8, 0.3, 0.2], np.float32)
    high, _ = teacher_thresholds([unsure], [np.ones(6, bool)], 0.9, 0.5)
    assert (unsure >= high).sum() == 2 and (unsure >= 0.9).sum() == 0
    with pytest.raises(ValueError, match="teacher_keep_fraction"):
        teacher_thresholds([p1], [bodies[0]], 0.9, 0.0)


def test_flat_attention_is_resolved_per_image():
    """An untrained attention lies in a narrow band (0.46-0.54): normalised over the body and cut by its own Otsu
    threshold it still separates a brighter region, where a fixed scan of 0.05-0.95 would keep everything."""
    body = np.zeros((24, 24), bool)
    body[2:22, 2:22] = True
    lesion = np.zeros_like(body)
    lesion[8:14, 8:14] = True
    rng = np.random.default_rng(0)
    attention = np.where(lesion, 0.53, 0.47) + rng.normal(0, 0.003, body.shape)
    mask, t = threshold_image(attention * body, body, None, opening_radius=1)
    assert 0 < t < 1 and dice(lesion, mask) > 0.9 and not mask[~body].any()
    assert dice(lesion, threshold_image(attention * body, body, 0.05)[0]) < 0.2  # a low global cut keeps the body
    speck = lesion.copy()
    speck[18, 18] = True  # one pixel: the opening removes it
    assert not threshold_image(np.where(speck, 0.9, 0.1) * body, body, None, opening_radius=1)[0][18, 18]


def test_body_mask_from_the_outside_marking_with_fallback():
    seg = np.full((1, 1, 12, 12), -1, np.int16)
    seg[..., 2:10, 2:10] = 2
    data = np.zeros((1, 1, 12, 12), np.float32)  # masked z-score: outside 0, the body well below it
    data[..., 2:10, 2:10] = -3.0
    data[..., 5, 5] = 0.0  # a body pixel at the background value is still body
    body = body_mask(seg, data)
    assert body.shape == (1, 12, 12) and body.sum() == 64 and body[0, 5, 5]
    # no -1 anywhere: the dominant border value is background, holes filled
    unmarked = np.full_like(seg, 2)
    assert body_mask(unmarked, data).sum() == 64
    # no dominant border value (a photograph filling the frame): everything is body
    texture = np.random.default_rng(0).normal(size=data.shape).astype(np.float32)
    assert body_mask(unmarked, texture).all()


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


def test_attention_grid_stays_fine_enough_to_outline_lesions():
    """Two downsamplings (the original's: 64x64 attention on 256x256 images, 40x40 on BraTS' 160x160 patches) unless
    the attention grid would fall under 24 cells; a 48x48 patch then gets a 24x24 grid, not 12x12."""
    sizes = ((32, 32), (48, 48), (64, 80), (95, 200), (96, 96), (160, 160), (256, 256), (8, 96, 96))
    assert [generator_downsamplings(s) for s in sizes] == [1, 1, 1, 1, 2, 2, 2, 1]
    assert generator_downsamplings((48, 48), min_attention=0) == 2
    torch.manual_seed(0)
    for n_down, cells in ((1, 24), (2, 12)):
        generator = WeakCycleGenerator(1, 2, features=4, n_down=n_down, n_blocks=1)
        grid = generator.attention(generator.cam(generator.encoder(torch.randn(1, 1, 48, 48)))[0])
        assert grid.shape[2:] == (cells, cells)


def _translation_networks():
    """(G_AB, G_BA, D_A pair, D_B pair), seeded, quarter width, for 1-channel 16x16 images."""
    torch.manual_seed(0)
    g_ab, g_ba = WeakCycleGenerator(1, 2, 8, 2, 1), WeakCycleGenerator(1, 2, 8, 2, 1)
    d_a = (WeakCycleDiscriminator(1, 2, 8, 2), WeakCycleDiscriminator(1, 2, 8, 1))
    d_b = (WeakCycleDiscriminator(1, 2, 8, 2), WeakCycleDiscriminator(1, 2, 8, 1))
    return g_ab, g_ba, d_a, d_b


def test_generator_losses_reach_every_generator_parameter():
    g_ab, g_ba, d_a, d_b = _translation_networks()
    losses, _ = cycle_generator_losses(g_ab, g_ba, d_a, d_b, torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16))
    assert set(losses) == set(LOSS_NAMES) == set(CYCLE_LOSS_WEIGHTS) | {"identity_attention"}
    sum(losses.values()).backward()
    assert [n for n, p in g_ab.named_parameters() if p.grad is None] == []


def test_weak_cycle_composite_adversarial_term_reaches_the_attention():
    """The original's adversarial term on the composite: its gradient reaches G_AB's attention convolution (the
    composite blends by the attention), it is computed only when asked for, and the noComposite ablation's weights
    switch it off."""
    g_ab, g_ba, d_a, d_b = _translation_networks()
    disease, normal = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    losses, _ = cycle_generator_losses(g_ab, g_ba, d_a, d_b, disease, normal)
    losses["adversarial_composite"].backward()
    assert g_ab.attention.weight.grad.abs().sum() > 0 and g_ba.attention.weight.grad.abs().sum() > 0
    assert CYCLE_LOSS_WEIGHTS["adversarial_composite"] == 1.0
    without, _ = cycle_generator_losses(g_ab, g_ba, d_a, d_b, disease, normal, composite=False)
    assert "adversarial_composite" not in without and set(without) == set(losses) - {"adversarial_composite"}
    assert WeakCycleTrainer_noComposite.cycle_loss_weights["adversarial_composite"] == 0.0


def test_weak_cycle_identity_attention_term_is_the_identity_passes_attention():
    """The bench candidate's term: the mean attention of G_BA fed a disease image plus that of G_AB fed a normal one
    (the passes that must change nothing), reaching both attention convolutions; the original's presets weigh it 0,
    so their total loss is unchanged to the bit."""
    g_ab, g_ba, d_a, d_b = _translation_networks()
    disease, normal = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    losses, _ = cycle_generator_losses(g_ab, g_ba, d_a, d_b, disease, normal)
    with torch.no_grad():
        by_hand = g_ba(disease)["mask"].mean() + g_ab(normal)["mask"].mean()
    assert 0 < float(by_hand) < 2
    torch.testing.assert_close(losses["identity_attention"].detach(), by_hand)
    losses["identity_attention"].backward()
    assert g_ab.attention.weight.grad.abs().sum() > 0 and g_ba.attention.weight.grad.abs().sum() > 0
    original = sum(CYCLE_LOSS_WEIGHTS[k] * v for k, v in losses.items() if k in CYCLE_LOSS_WEIGHTS)
    assert torch.equal(weighted_sum(losses, CYCLE_LOSS_WEIGHTS), original)
    assert "identity_attention" not in CYCLE_LOSS_WEIGHTS and "identity_attention" not in ISIC_LOSS_WEIGHTS


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
        label = np.asarray(Image.open(raw / "labelsTr" / f"{case}.png"))
        assert set(np.unique(label)) == {0, 2} and np.array_equal(label == 2, ndimage.binary_fill_holes(image > 0))
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


def test_weak_cycle_misspelt_loss_weight_refused(weak_preprocessed, tmp_path, monkeypatch):
    cls = type("WeakCycleTrainer_typo", (WeakCycleTrainer_small,),
               {"cycle_loss_weights": {**CYCLE_LOSS_WEIGHTS, "identiy": 1.0}})
    trainer = build_trainer(cls, weak_preprocessed, tmp_path, monkeypatch, "2d")
    with pytest.raises(ValueError, match=r"_typo.cycle_loss_weights names unknown losses \['identiy'\]"):
        trainer.initialize()


def test_translation_fit_identity_attention_and_teacher(weak_preprocessed, tmp_path, monkeypatch):
    """A short phase-1 fit on the phantom: the identity error of normal images through G_AB (its decoder output)
    falls; the pseudo-mask source is in [0, 1] and zero outside the body; the EMA teacher moves by (1 - decay)
    towards the student."""
    # every RNG seeded (the loader's numpy draws too): the fit no longer depends on what earlier tests drew
    monkeypatch.setenv("nnUNet_ext_seed", "0")
    trainer = _trainer(weak_preprocessed, tmp_path, monkeypatch)
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "translation"
    disease, normal = trainer._translation_batch(next(trainer.dataloader_train))
    g_ab = trainer.aux_modules["gen_ab"]

    def identity() -> float:
        with torch.no_grad():
            return float((g_ab(normal)["translated"] - normal).abs().mean())

    before = identity()
    for optimizer in trainer.aux_optimizers.values():  # a short fit: a larger step than the original's 1e-4
        for group in optimizer.param_groups:
            group["lr"] = 2e-3
    for _ in range(30):
        trainer.train_step_translation(next(trainer.dataloader_train))
    after = identity()
    assert after < 0.8 * before, (before, after)

    dataset = _dataset(weak_preprocessed)
    data, seg = (np.asarray(a[:]) for a in dataset.load_case(trainer.weak_cases.disease[0])[:2])
    fg = body_mask(seg, data)
    assert (~fg).sum() > 20  # the phantom's black corners survive nnU-Net's crop
    for source in ("attention", "cam"):
        trainer.pseudo_source = source
        probability = trainer.lesion_probability(g_ab, data.astype(np.float32), fg)
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
    for case, mask in masks.items():  # lesion, background and nnU-Net's outside; the lesion less than the body
        data, seg = (np.asarray(a[:]) for a in dataset.load_case(case)[:2])
        body = body_mask(seg, data)
        assert set(np.unique(mask)) == {-1, 0, 1} and (mask == 1).sum() < body.sum(), (case, threshold)
        assert np.array_equal(mask[0] == -1, ~body)  # the outside stays as nnU-Net marked it
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
    assert "Phase 'refinement'" in log and "Phase-1 pseudo-masks (attention) of 4 disease cases: per-image Otsu" in log
    assert "validation (2 fully labelled cases); validation Dice" in log
    assert "best-checkpoint tracking restarts" in log
    # the pseudo-masks come from the G_AB that scored best on the validation cases (generator_selection)
    assert "Phase-1 pseudo-masks from G_AB of translation epoch" in log
    assert "Vital signs: attention: coverage" in log and "cam: accuracy" in log
    assert "pseudo_mask: validation_dice" in log
    fold = tmp_path / "results" / pre.raw_dir.name / f"{name}__nnUNetPlans__2d" / "fold_0"
    stopped = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    ours = stopped["nnunet_ext"]
    assert stopped["current_epoch"] == 3 and ours["phase"] == "refinement" and ours["extra"]["teacher_ready"]
    masks = ours["extra"]["pseudo_masks"]
    assert len(masks) == 4 and all(set(np.unique(m)) <= {-1, 0, 1} for m in masks.values())
    assert (fold / "weakcycle_progress.png").is_file() and "attention/coverage" in ours["vitals"][0]
    assert "attention/lesion_contrast" in ours["vitals"][0]
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
    assert "Teacher updated" in log and "now ignored (uncertain)" in log and "teacher: changed" in log
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert set(final["nnunet_ext"]["extra"]["pseudo_masks"]) == set(masks)

    out = tmp_path / "pred"
    stock.predict(pre.raw_dir / "imagesTs", out, pre.dataset_id, "2d", name, env)
    for case in ("phantomweak_010", "phantomweak_011"):
        seg = np.asarray(Image.open(out / f"{case}.png"))
        assert seg.shape == (32, 32) and set(np.unique(seg)) <= {0, 1}


def test_refinement_views_teacher_ignore_and_best_checkpoint_restart(weak_preprocessed, tmp_path, monkeypatch):
    """The loader gives the weak view (no intensity augmentation), the student's strong view adds nnU-Net's intensity
    augmentations; entering refinement restarts the best-checkpoint tracker; the teacher's uncertain pixels become
    ignore, confident ones lesion, the outside stays -1."""
    torch.manual_seed(0)
    trainer = _trainer(weak_preprocessed, tmp_path, monkeypatch)
    loader_transforms = trainer.dataloader_train.data_loader.transforms.transforms
    names = [type(getattr(t, "transform", t)).__name__ for t in loader_transforms]
    assert names.index("SpatialTransform") < names.index("StrongViewTransform") < names.index("MirrorTransform")
    view = loader_transforms[names.index("StrongViewTransform")]
    strong = {type(t.transform).__name__ for t in view.intensity.transforms}
    assert {"GaussianNoiseTransform", "ContrastTransform", "GammaTransform"} <= strong and not set(names) & strong
    # the outside is masked in both views' channels
    assert loader_transforms[names.index("MaskImageTransform")].apply_to_channels == [0, 1]

    trainer._best_ema = 0.9  # as phase 1's validation of the untrained student leaves it
    trainer.current_epoch = trainer.phase_schedule.resolve(trainer.num_epochs)[1].start
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "refinement" and trainer._best_ema is None and trainer.teacher_ready
    # the student's poly decay spans the refinement epochs: it starts at nnU-Net's full learning rate
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.initial_lr)

    case = trainer.weak_cases.disease[0]
    before = trainer.pseudo_masks[case].copy()
    trainer.teacher_uncertain = "ignore"  # unsure pixels become ignore (the default keeps their labels: below)
    head = unwrap(trainer.aux_modules["teacher"]).decoder.seg_layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()  # probability 0.5 everywhere: uncertain
    trainer.update_pseudo_masks_from_teacher()
    after = trainer.pseudo_masks[case]
    assert np.array_equal(after == -1, before == -1) and set(np.unique(after)) == {-1, 2}
    assert trainer._teacher_vitals["teacher/ignored"] == 1.0 and trainer.epoch_vital_signs()["teacher/ignored"] == 1.0
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.0, 10.0]))  # confident lesion everywhere
    trainer.update_pseudo_masks_from_teacher()
    assert set(np.unique(trainer.pseudo_masks[case])) == {-1, 1}
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.0, 0.85]))  # lesion probability 0.70 everywhere: unsure, but lesion
    trainer.update_pseudo_masks_from_teacher()
    assert set(np.unique(trainer.pseudo_masks[case])) == {-1, 1} and trainer._teacher_vitals["teacher/lesion"] == 1
    trainer.teacher_keep_fraction = None  # the absolute rule alone leaves it all ignored
    trainer.update_pseudo_masks_from_teacher()
    assert set(np.unique(trainer.pseudo_masks[case])) == {-1, 2} and trainer._teacher_vitals["teacher/lesion"] == 0
    assert any("collapsed to background" in w for w in trainer.vital_sign_warnings([trainer._teacher_vitals]))
    # an attention no higher on the validation lesions than on the rest of their body, after 5 translation epochs
    flat = [{"cam/accuracy": 0.9}] * 4 + [{"cam/accuracy": 0.9, "attention/lesion_contrast": -0.1}]
    assert any("lesion contrast -0.10" in w for w in trainer.vital_sign_warnings(flat))
    assert not any("lesion contrast" in w for w in trainer.vital_sign_warnings(
        flat[:4] + [{"cam/accuracy": 0.9, "attention/lesion_contrast": 1.5}]))
    # the CAM's validation pseudo-masks far ahead of the attention's over the last 3 of 5 translation epochs (the
    # ISIC sample at the trainer's widths): the warning names the better source; level, or fewer epochs: none
    ahead = [{"cam/accuracy": 1.0}] * 2 + [{"cam/accuracy": 1.0, "pseudo_mask/validation_dice": a,
                                            "pseudo_mask/validation_dice_cam": c}
                                           for a, c in ((0.41, 0.88), (0.43, 0.87), (0.37, 0.83))]
    assert any("cam pseudo-masks score 0.860 against the attention's 0.403" in w and "WeakCycleTrainer_CAM" in w
               for w in trainer.vital_sign_warnings(ahead))
    assert not any("pseudo-masks score" in w for w in trainer.vital_sign_warnings(ahead[1:]))
    # refinement epochs (no translation vital signs) do not repeat it; the switch has its own check (below)
    assert not any("pseudo-masks score" in w for w in trainer.vital_sign_warnings(ahead + [{"teacher/lesion": 0.1}]))
    level = ahead[:2] + [dict(row, **{"pseudo_mask/validation_dice": 0.8}) for row in ahead[2:]]
    assert not any("pseudo-masks score" in w for w in trainer.vital_sign_warnings(level))
    trainer.pseudo_source = "cam"  # the CAM-only variant is told when the attention is the better source
    assert not any("pseudo-masks score" in w for w in trainer.vital_sign_warnings(ahead))
    reversed_ = ahead[:2] + [dict(row, **{"pseudo_mask/validation_dice_cam": 0.5, "pseudo_mask/validation_dice": 0.8})
                             for row in ahead[2:]]
    assert any("attention pseudo-masks score 0.800 against the cam's 0.500" in w
               and "pseudo_source = 'attention' (WeakCycleTrainer)" in w
               for w in trainer.vital_sign_warnings(reversed_))
    trainer.pseudo_source = "attention"
    # at the phase switch: the CAM's best epoch against the selected G_AB's attention (the ISIC run at the trainer's
    # widths: CAM 0.906 at epoch 2, the attention selected at 0.592)
    history, trainer.vital_history = trainer.vital_history, [
        {"epoch": e, "pseudo_mask/validation_dice": a, "pseudo_mask/validation_dice_cam": c}
        for e, (a, c) in enumerate(((0.12, 0.87), (0.14, 0.89), (0.34, 0.906), (0.592, 0.38)))]
    assert "best translation epoch (2) scored 0.906 on the validation cases against 0.592" in \
        trainer.other_source_at_switch({"dice": 0.592})
    assert trainer.other_source_at_switch({"dice": 0.85}) is None
    trainer.vital_history = history
    # a translation epoch whose steps were all NaN (the CUDA demo under mixed precision, 2026-12-04)
    assert any("not finite (NaN or inf) in 100%" in w for w in trainer.vital_sign_warnings(
        [{"translation/nonfinite_share": 1.0}]))
    assert not any("not finite" in w for w in trainer.vital_sign_warnings([{"translation/nonfinite_share": 0.0}]))
    # lesion shares of three updates (the xlong phantom run's first, a middle and its last): a shrinking warning
    shrinking = [{"teacher/lesion": 0.145}, {}, {"teacher/lesion": 0.065}, {"teacher/lesion": 0.030}]
    assert any("14.5% to 3.0% in 3 updates" in w for w in trainer.vital_sign_warnings(shrinking))
    assert not any("shrinking" in w for w in trainer.vital_sign_warnings(shrinking[:3] + [{"teacher/lesion": 0.06}]))
    # with "keep" (the default) the unsure pixels keep the labels they had: a lesion/background board survives an
    # unsure teacher, and only its confident pixels change
    inside = before != -1
    board = np.where(inside, (np.indices(before.shape).sum(0) % 2).astype(np.int8), before)
    trainer.pseudo_masks[case] = board.copy()
    trainer.teacher_uncertain = "keep"
    trainer.update_pseudo_masks_from_teacher()
    assert np.array_equal(trainer.pseudo_masks[case], board)
    trainer.teacher_keep_fraction = 0.8  # probability 0.70 everywhere: the class-balanced rule calls it all lesion
    trainer.update_pseudo_masks_from_teacher()
    assert np.array_equal(trainer.pseudo_masks[case], np.where(inside, 1, before))
    trainer.teacher_uncertain = "drop"
    with pytest.raises(ValueError, match=r"teacher_uncertain must be one of \['keep', 'ignore'\], got 'drop'"):
        trainer.update_pseudo_masks_from_teacher()
    trainer.teacher_uncertain = "ignore"
    assert np.load(trainer.pseudo_mask_folder / f"{case}.npy").min() == -1  # what the data loader reads

    # the teacher runs (and the consistency term acts) on the disease cases' samples only: the others' labels are
    # certain
    seen: list[int] = []
    hook = trainer.aux_modules["teacher"].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    batch = next(trainer.dataloader_train)
    size = batch["data"].shape[0]
    normal = trainer.weak_cases.normal[0]
    for keys, expected in (([case] + [normal] * (size - 1), [1]), ([normal] * size, []), ([case] * size, [size])):
        seen.clear()
        trainer.train_step_refinement(dict(batch, keys=keys))
        assert seen == expected, (keys, seen)
    trainer.consistency_on_certain = True
    seen.clear()
    trainer.train_step_refinement(dict(batch, keys=[normal] * size))
    assert seen == [size]
    hook.remove()


# ---------------------------------------------------------------------------------------------- mechanism
def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.mechanism
def test_weak_cycle_refinement_batches_carry_weak_and_strong_views_of_one_patch(weak_preprocessed, tmp_path,
                                                                                 monkeypatch):
    """Real refinement-phase loader batches hold per patch the teacher's weak view and the student's strong view, made
    in the loader's pipeline: the same geometry (each strong view correlates almost perfectly with its own weak view,
    far less with that view mirrored or with another patch, and the masked outside of the body is the same) and
    different intensities; the step feeds the strong view to the student and the weak view to the teacher."""
    monkeypatch.setenv("nnUNet_ext_seed", "0")
    trainer = _trainer(weak_preprocessed, tmp_path, monkeypatch)
    trainer.current_epoch = trainer.phase_schedule.resolve(trainer.num_epochs)[1].start
    trainer.on_train_epoch_start()
    assert trainer.current_phase.name == "refinement"
    channels = trainer.num_input_channels
    batches = [next(trainer.dataloader_train) for _ in range(2)]
    for batch in batches:
        assert batch["data"].shape[1] == 2 * channels
        strong, weak = split_views(batch["data"], channels)
        outside = weak == 0
        assert outside.float().mean() > 0.05 and torch.equal(strong == 0, outside)
        assert float((strong - weak).abs().mean()) > 0.02
        for i in range(len(weak)):
            own = _correlation(strong[i], weak[i])
            mirrored = max(_correlation(strong[i], weak[i].flip(axes)) for axes in ((1,), (2,), (1, 2)))
            others = [_correlation(strong[i], weak[j]) for j in range(len(weak)) if j != i]
            assert own > 0.9 and own > max([mirrored, *others]) + 0.3, (own, mirrored, others)

    seen = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0].clone()))
             for key, module in (("student", trainer.network), ("teacher", trainer.aux_modules["teacher"]))]
    # every sample from a pseudo-labelled disease case: the teacher then sees the whole batch's weak view
    disease = [next(iter(trainer.pseudo_masks))] * len(batches[0]["data"])
    try:
        trainer.train_step(dict(batches[0], keys=disease))
    finally:
        for hook in hooks:
            hook.remove()
    strong, weak = split_views(batches[0]["data"], channels)
    assert torch.equal(seen["student"], strong) and torch.equal(seen["teacher"], weak)


@pytest.mark.mechanism
def test_weak_cycle_body_mask_is_the_brain_of_a_preprocessed_brats_like_case(weak_preprocessed):
    """nnU-Net's masked z-score leaves the black background at 0 and puts dark brain tissue far below it, so 'differs
    from the minimum' is the whole image; the body mask must be the brain, with the converters' disease label map and
    with an all-ignore one (no outside marking: the fallback)."""
    plans = json.loads((weak_preprocessed.preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((weak_preprocessed.preprocessed / "dataset.json").read_text())
    plans["configurations"]["2d"].update(normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[True])
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("2d")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    brain = ((yy - 30) / 24.0) ** 2 + ((xx - 33) / 19.0) ** 2 < 1
    image = np.where(brain, 110 + rng.normal(0, 8, brain.shape), 0.0)
    ventricles = brain & (((yy - 30) / 8.0) ** 2 + ((xx - 33) / 3.0) ** 2 < 1)
    image[ventricles] = 12 + rng.normal(0, 3, ventricles.sum())  # dark CSF
    image[brain & ((yy - 20) ** 2 + (xx - 40) ** 2 < 25)] = 230.0  # a bright lesion
    image = np.clip(image, 0, 255).round()
    for label_map in (weak_label(image), np.full(image.shape, 2, np.uint8)):
        data, seg, properties = DefaultPreprocessor(verbose=False).run_case_npy(
            image[None, None].astype(np.float32), label_map[None, None].astype(np.int16), {"spacing": [999.0, 1, 1]},
            plans_manager, configuration, dataset_json)
        crop = tuple(slice(a, b) for a, b in properties["bbox_used_for_cropping"])
        truth = brain[None][crop]
        body = body_mask(seg, data)
        assert body.shape == truth.shape and np.mean(body == truth) > 0.995, np.mean(body == truth)
        # the old rule (not the minimum) on the masked-normalised case is the whole crop
        if (seg == -1).any():
            assert data[0][truth].min() < -1.5 and np.all(data[0][~truth] == 0)
            assert np.mean(np.abs(data[0] - data[0].min()) > 1e-6) > 0.99


@pytest.mark.mechanism
def test_weak_cycle_translation_pseudo_masks_beat_keep_all(weak_distractor_preprocessed, tmp_path, monkeypatch):
    """A short seeded translation run on the distractor phantom (bright ridges and dark spots in every image): the
    attention pseudo-masks (per-image Otsu, as the trainer makes them at the phase switch) score a higher Dice on the
    weak training cases than marking the whole body, on the mean and on most cases. Measured with seed 0: 0.314
    against keep-all's 0.121, every case above its keep-all Dice. With two downsamplings (an 8x8 attention grid on
    these 32x32 images, the rule before attention_min_cells) the attention fell everywhere and scored 0.0."""
    pre = weak_distractor_preprocessed
    monkeypatch.setenv("nnUNet_ext_seed", "0")
    trainer = _trainer(pre, tmp_path, monkeypatch)
    trainer.on_train_epoch_start()
    for optimizer in trainer.aux_optimizers.values():  # a short fit: a larger step than the original's 1e-4
        for group in optimizer.param_groups:
            group["lr"] = 1e-3
    for _ in range(MECHANISM_STEPS):
        trainer.train_step_translation(next(trainer.dataloader_train))
    trainer.make_pseudo_masks()
    written = trainer.weak_folder / "phase1_pseudo_masks"
    ours, keep_all = [], []
    for reference_file in sorted((pre.raw_dir / "referenceTr").glob("*.png")):
        reference = np.asarray(Image.open(reference_file)) == 1
        body = ndimage.binary_fill_holes(np.asarray(Image.open(pre.raw_dir / "imagesTr" /
                                                               f"{reference_file.stem}_0000.png")) > 0)
        ours.append(dice(reference, np.asarray(Image.open(written / reference_file.name)) == 1))
        keep_all.append(dice(reference, body))
    assert len(ours) == 8 and np.mean(ours) > np.mean(keep_all) + 0.1, (ours, keep_all)
    assert sum(o > k for o, k in zip(ours, keep_all, strict=True)) >= 6, (ours, keep_all)


def test_weak_cycle_lesion_contrast_by_hand():
    """The vital sign that tells an attention on the lesions from a flat one: (lesion mean - rest-of-body mean) /
    spread over the body."""
    body, lesion = np.ones((2, 2), bool), np.array([[True, True], [False, False]])
    assert lesion_contrast(np.array([[1.0, 1.0], [0.0, 0.0]]), body, lesion) == pytest.approx(2.0)  # std 0.5
    assert lesion_contrast(np.array([[0.0, 0.0], [1.0, 1.0]]), body, lesion) == pytest.approx(-2.0)
    assert lesion_contrast(np.full((2, 2), 0.6), body, lesion) == 0.0
    assert np.isnan(lesion_contrast(np.ones((2, 2)), body, np.zeros((2, 2), bool)))


def test_weak_cycle_attention_and_cam_keep_the_input_grid_and_chunk_without_changing_the_maps():
    """The maps the pseudo-masks and the bench's drawings come from: padded for the downsamplings and cut back to
    the input's size, CAM divided by its own maximum per image, the same whichever chunk size bounds the memory."""
    torch.manual_seed(0)
    generator = WeakCycleGenerator(1, 2, 8, 2, 1).eval()
    x = torch.randn(5, 1, 30, 22)  # neither axis a multiple of 4
    whole, chunked = attention_and_cam(generator, x, chunk=8), attention_and_cam(generator, x, chunk=2)
    for key in ("attention", "cam"):
        assert whole[key].shape == (5, 1, 30, 22)
        torch.testing.assert_close(whole[key], chunked[key])
    assert torch.allclose(whole["cam"].flatten(1).amax(1), torch.ones(5))
    assert ((whole["attention"] > 0) & (whole["attention"] < 1)).all()
    lesion, rest = lesion_and_rest(np.array([[1.0, 3.0], [0.0, 2.0]]), np.array([[True, True], [True, False]]),
                                   np.array([[True, False], [False, False]]))
    assert (lesion, rest) == (1.0, 1.5)  # the pixel outside the body counts nowhere


def test_weak_cycle_bench_watershed_refinement_snaps_a_blurry_attention_to_the_lesion_edge():
    """The original's post-processing (bench/weak_cycle/postprocess.py, a control): where the attention is a blur
    larger than the lesion and off its centre, the watershed of the image puts the mask's boundary on the lesion's
    edge, which a threshold on the attention cannot."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "weak_cycle" / "postprocess.py"
    spec = importlib.util.spec_from_file_location("weak_cycle_postprocess", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yy, xx = np.mgrid[:48, :48]
    lesion = (yy - 24) ** 2 + (xx - 22) ** 2 < 6 ** 2
    image = 0.4 + 0.4 * lesion + np.random.default_rng(0).normal(0, 0.02, (48, 48))
    attention = np.exp(-((yy - 26) ** 2 + (xx - 25) ** 2) / (2 * 9.0 ** 2))
    body = np.ones((48, 48), bool)
    masks = module.masks(attention, image, body)
    assert dice(lesion, masks["watershed_original"]) > 0.9
    assert dice(lesion, masks["otsu_opening"]) < 0.8


def test_weak_cycle_bench_vitals_table_reads_each_epochs_vital_signs(tmp_path):
    """bench/weak_cycle/vitals_table.py: the vital signs of each epoch from an nnU-Net log (a resumed epoch's later
    line wins), the table up to the last epoch every run reached, and a log without vital signs refused by name."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "weak_cycle" / "vitals_table.py"
    spec = importlib.util.spec_from_file_location("weak_cycle_vitals_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("2026-12-04 01:14:57.0: Epoch 0\n"
                 "2026-12-04 01:15:04.0: Vital signs: attention: coverage 0.63, inside_body 0.4114; cam: accuracy 0.5\n"
                 "2026-12-04 01:15:05.0: Epoch 1\n"
                 "2026-12-04 01:15:06.0: Vital signs: attention: coverage 0.5; pseudo_mask: validation_dice 0\n"
                 "2026-12-04 01:15:07.0: Epoch 1\n"
                 "2026-12-04 01:15:08.0: Vital signs: attention: coverage 0.25; pseudo_mask: validation_dice 0.125\n"
                 "2026-12-04 01:15:09.0: Epoch 2\n"
                 "2026-12-04 01:15:10.0: Vital signs: attention: coverage 0.1\n")
    b.write_text("2026-12-04 01:14:57.0: Epoch 0\n2026-12-04 01:15:04.0: Vital signs: attention: coverage 0.7\n"
                 "2026-12-04 01:15:05.0: Epoch 1\n2026-12-04 01:15:06.0: Vital signs: attention: coverage 0.6\n")
    logged = {"attention/coverage": 0.63, "attention/inside_body": 0.4114, "cam/accuracy": 0.5}
    assert module.parse_vitals(format_vitals(logged)) == logged  # the reader is the log's own formatter reversed
    epochs = module.read_log(a)
    assert epochs == {0: {"attention/coverage": 0.63, "attention/inside_body": 0.4114, "cam/accuracy": 0.5},
                      1: {"attention/coverage": 0.25, "pseudo_mask/validation_dice": 0.125},
                      2: {"attention/coverage": 0.1}}
    assert module.main(["--name", "t", "--every", "1", "-o", str(tmp_path), f"x={a}", f"y={b}"]) == 0
    rows = [r for r in (tmp_path / "t.md").read_text().splitlines() if r.startswith("| 1 ")]
    assert rows == ["| 1 | x | 0.250 |  | 0.125 |  |", "| 1 | y | 0.600 |  |  |  |"]
    assert "| 2 |" not in (tmp_path / "t.md").read_text()  # y stopped after epoch 1
    empty = tmp_path / "empty.log"
    empty.write_text("2026-12-04 01:14:57.0: Epoch 0\n")
    with pytest.raises(SystemExit, match="empty.log: no 'Vital signs' lines"):
        module.read_log(empty)


@pytest.mark.mechanism
def test_weak_cycle_translation_trains_in_float32_under_the_trainers_mixed_precision(weak_preprocessed, tmp_path,
                                                                                     monkeypatch):
    """On an H200 under nnU-Net's CUDA mixed precision the translation loss was NaN in every epoch, the GradScaler
    skipped every update and G_AB never moved (bench/results/gpu/demo_WeakCycleTrainer.log). The same happens here
    with the trainer's autocast as float16 on the CPU and a real GradScaler, when the translation step uses it
    (translation_amp): the generators' float16 gradients overflow in every step, and under nnU-Net's order (unscale,
    clip, step) a discriminator's gradients passed the scaler's check, came out of the clipping NaN and turned its
    weights NaN, so that from the second step on every loss was NaN. The shared optimizer_step now skips any update
    whose norm is not finite: the weights stay finite, the skips are counted and warned about, and G_AB still does
    not move (mixed precision remains the wrong choice here). By default the generators' convolutions run in float32
    under that autocast, every loss is finite, G_AB moves and the scaler is left alone; a NaN loss would show as a
    vital sign with its warning."""
    monkeypatch.setenv("nnUNet_ext_seed", "0")
    trainer = _trainer(weak_preprocessed, tmp_path, monkeypatch)
    trainer.autocast = lambda: torch.autocast("cpu", dtype=torch.float16)
    trainer.grad_scaler = torch.amp.GradScaler("cpu")
    scale = trainer.grad_scaler.get_scale()
    generator = unwrap(trainer.aux_modules["gen_ab"])
    seen = []
    hook = generator.encoder[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    batches = [next(trainer.dataloader_train) for _ in range(4)]

    def run() -> tuple[list[float], float]:
        trainer.on_train_epoch_start()
        seen.clear()
        before = [p.detach().clone() for p in generator.parameters()]
        losses = [float(trainer.train_step_translation(batch)["loss"]) for batch in batches]
        moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(generator.parameters(), before, strict=True))
        return losses, moved

    losses, moved = run()
    assert set(seen) == {torch.float32}, seen
    assert np.isfinite(losses).all() and moved > 0 and trainer.grad_scaler.get_scale() == scale, (losses, moved)
    assert trainer.epoch_vital_signs()["translation/nonfinite_share"] == 0.0
    trainer.translation_amp = True
    losses, moved = run()
    hook.remove()
    assert set(seen) == {torch.float16}, seen
    assert np.isfinite(losses).all() and moved == 0, (losses, moved)
    weights = [p for m in trainer.aux_modules.values() for p in unwrap(m).parameters()]
    assert all(bool(torch.isfinite(p).all()) for p in weights)
    tried, skipped = trainer.update_counts
    assert tried == 2 * len(batches) and skipped >= len(batches), trainer.update_counts  # every generator update
    assert "updates skipped" in trainer.skipped_updates_warning()
    assert trainer.grad_scaler.get_scale() == scale / 2 ** skipped  # halved per skip, never stepped on NaN
    assert any("not finite" in w for w in trainer.vital_sign_warnings([{"translation/nonfinite_share": 0.5}]))
