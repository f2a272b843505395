"""Folder evaluation, reports and comparison on small hand-made nnU-Net folders (PNG 2D, NIfTI 3D)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.evaluation.compare import compare_results, paired_wilcoxon
from nnunet_ext.evaluation.evaluate import EvaluationSettings, evaluate_cross_validation, evaluate_folder

PNG_LABELS = {"background": 0, "artery": 1, "vein": 2, "uncertain": 3}


def _write_dataset_json(folder, labels, file_ending):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                     "labels": labels, "numTraining": 0,
                                                     "file_ending": file_ending}))


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


@pytest.fixture
def png_folders(tmp_path):
    """A 2D data set as nnU-Net keeps it: labelsTs and imagesTs PNGs, predictions with .npz probabilities shaped
    (C, 1, H, W) like nnUNetv2_predict writes them, and FOV masks."""
    raw = tmp_path / "Dataset999_Toy"
    labels_dir, images_dir, pred_dir, fov_dir = (raw / "labelsTs", raw / "imagesTs", tmp_path / "pred",
                                                 raw / "masksTs")
    for d in (labels_dir, images_dir, pred_dir, fov_dir):
        d.mkdir(parents=True)
    _write_dataset_json(raw, PNG_LABELS, ".png")
    rng = np.random.default_rng(0)
    for i, shift in enumerate((0, 1, 3)):
        ref = np.zeros((32, 40), dtype=np.uint8)
        ref[_disc(ref.shape, (10, 10), 5)] = 1
        ref[_disc(ref.shape, (20, 28), 4)] = 2
        ref[15, 20] = 3
        pred = np.zeros_like(ref)
        pred[_disc(ref.shape, (10 + shift, 10), 5)] = 1
        pred[_disc(ref.shape, (20, 28 - shift), 4)] = 2
        if i == 0:
            pred[15, 20] = 3
        probs = np.stack([pred == k for k in range(4)]).astype(np.float32) * 0.8 + 0.05
        probs = probs[:, None]
        case = f"toy_{i:03d}"
        Image.fromarray(ref).save(labels_dir / f"{case}.png")
        Image.fromarray(pred).save(pred_dir / f"{case}.png")
        np.savez_compressed(pred_dir / f"{case}.npz", probabilities=probs)
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(images_dir / f"{case}_0000.png")
        fov = np.zeros((32, 40), dtype=np.uint8)
        fov[1:-1, 1:-1] = 255
        Image.fromarray(fov).save(fov_dir / f"{case}.png")
    return raw, labels_dir, images_dir, pred_dir, fov_dir


def _assert_real_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        assert np.asarray(im.convert("L")).std() > 0  # not a blank canvas


def test_png_folder_all_outputs(png_folders, tmp_path):
    raw, labels_dir, images_dir, pred_dir, fov_dir = png_folders
    out = tmp_path / "eval"
    settings = EvaluationSettings(lesion_classes=[1], av=True, fov_dir=str(fov_dir), extra_regions=[(1, 2, 3)])
    summary = evaluate_folder(str(labels_dir), str(pred_dir), str(out), dataset_json=str(raw / "dataset.json"),
                              settings=settings, images_dir=str(images_dir), progress=False)
    frame = pd.read_csv(out / "per_case.csv")
    assert len(frame) == 3 * 4 and set(frame["class"]) == {"artery", "vein", "uncertain", "(1, 2, 3)"}
    first = frame[(frame["case"] == "toy_000")]
    assert (first["dice"] == 1.0).all() and (first["hd95"] == 0).all()
    # the reference's one uncertain pixel is missed in two cases: Dice 0, HD95 the image diagonal in pixels
    missed = frame[(frame["case"] == "toy_002") & (frame["class"] == "uncertain")].iloc[0]
    assert missed["dice"] == 0 and missed["hd95"] == pytest.approx(math.hypot(31, 39))
    # 2D: the dummy 999 spacing is gone, areas are pixel counts
    assert first.loc[first["class"] == "uncertain", "ref_volume"].item() == 1.0
    assert summary["cases_by_mean_dice"] == {"best": "toy_000", "median": "toy_001", "worst": "toy_002"}
    assert summary["per_class"]["artery"]["auc_roc"]["n"] == 3
    assert summary["detection"]["artery"]["n_ref_lesions"] == 3
    assert {o["class"]: o["small"] for o in summary["organs"]}["uncertain"] is True
    assert summary["av_protocol"]["weighted"]["sensitivity"]["n"] == 3
    assert len(pd.read_csv(out / "av_per_case.csv")) == 3 * 4
    written = json.loads((out / "summary.json").read_text())
    assert written["per_class"]["vein"]["dice"]["mean"] == pytest.approx(summary["per_class"]["vein"]["dice"]["mean"])
    md = (out / "summary.md").read_text()
    assert "| artery" in md and "A/V protocol" in md and "Lesion-wise detection" in md
    for name in ("boxplots", "overlay_best", "overlay_median", "overlay_worst", "detection_by_size"):
        _assert_real_png(out / f"{name}.png")


def _write_nifti(array, path, spacing_xyz):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def nifti_cv_folders(tmp_path):
    """A 3D anisotropic data set with a cross-validation model folder of two folds."""
    gt = tmp_path / "gt_segmentations"
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    gt.mkdir()
    _write_dataset_json(model, {"background": 0, "organ": 1, "tumour": 2}, ".nii.gz")
    for i in range(4):
        ref = np.zeros((8, 24, 24), dtype=np.uint8)
        ref[2:6, 4:20, 4:20] = 1
        ref[3:5, 8:11, 8:11] = 2
        pred = ref.copy()
        pred[2:6, 4:20, 20 - i:20] = 0  # organ shrinks by i columns
        fold_dir = model / f"fold_{i % 2}" / "validation"
        fold_dir.mkdir(parents=True, exist_ok=True)
        _write_nifti(ref, gt / f"case_{i}.nii.gz", (0.8, 0.8, 3.0))
        _write_nifti(pred, fold_dir / f"case_{i}.nii.gz", (0.8, 0.8, 3.0))
    return model, gt


def test_cross_validation_3d(nifti_cv_folders, tmp_path):
    model, gt = nifti_cv_folders
    out = tmp_path / "cv"
    summary = evaluate_cross_validation(str(model), str(gt), str(out), settings=EvaluationSettings(lesion_classes=[2]),
                                        progress=False)
    frame = pd.read_csv(out / "per_case.csv")
    assert sorted(frame["fold"].unique()) == [0, 1] and summary["folds"] == [0, 1]
    organ = frame[frame["class"] == "organ"].set_index("case")
    assert organ.loc["case_0", "dice"] == 1.0
    # case 1: one column of 4 x 16 voxels missing; the prediction's new face is 0.8 mm from the reference's
    assert organ.loc["case_1", "dice"] == pytest.approx(2 * 942 / (1006 + 942))
    assert organ.loc["case_1", "hd95"] == pytest.approx(0.8)
    assert organ.loc["case_1", "ref_volume"] == pytest.approx(4 * 16 * 16 * 0.8 * 0.8 * 3.0 - 18 * 0.8 * 0.8 * 3.0)
    assert summary["detection"]["tumour"]["lesion_sensitivity"] == 1.0
    _assert_real_png(out / "overlay_worst.png")


def test_paired_wilcoxon_edge_cases():
    assert paired_wilcoxon(np.zeros(5))["p_value"] == 1.0
    assert math.isnan(paired_wilcoxon(np.array([np.nan, np.nan]))["p_value"])
    result = paired_wilcoxon(np.array([0.1, 0.2, 0.15, 0.3, 0.05, 0.12]))
    # all six differences positive: the exact two-sided p is 2 / 2^6
    assert result["p_value"] == pytest.approx(2 / 64) and result["n"] == 6


def test_compare_two_result_folders(png_folders, tmp_path):
    raw, labels_dir, images_dir, pred_dir, fov_dir = png_folders
    settings = EvaluationSettings(surface=True)
    a = tmp_path / "a"
    b = tmp_path / "b"
    evaluate_folder(str(labels_dir), str(pred_dir), str(a), str(raw / "dataset.json"), settings, plots=False,
                    progress=False)
    # "b" is evaluated against its own prediction: a perfect method to compare with
    evaluate_folder(str(labels_dir), str(labels_dir), str(b), str(raw / "dataset.json"), settings, plots=False,
                    progress=False)
    out = tmp_path / "cmp"
    result = compare_results([str(a), str(b)], str(out), names=["stock", "perfect"])
    artery = result["comparisons"]["perfect - stock"]["artery"]["dice"]
    assert artery["n"] == 3 and artery["mean_difference"] > 0 and artery["wins"] == 2 and artery["ties"] == 1
    table = pd.read_csv(out / "comparison_per_case.csv")
    assert {"stock", "perfect", "perfect - stock"} <= set(table.columns)
    assert "perfect - stock" in (out / "comparison.md").read_text()
    _assert_real_png(out / "comparison_dice.png")


def test_regions_ignore_label_and_sigmoid_channels(tmp_path):
    """Region-based data set: probability channel i is region i (sigmoid outputs), the ignore label counts for
    neither side."""
    raw = tmp_path / "Dataset998_Regions"
    labels_dir, pred_dir = raw / "labelsTs", tmp_path / "pred"
    labels_dir.mkdir(parents=True)
    pred_dir.mkdir()
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "x"}, "numTraining": 0, "file_ending": ".png", "regions_class_order": [1, 2],
        "labels": {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}}))
    ref = np.zeros((10, 12), dtype=np.uint8)
    ref[2:8, 2:8] = 1
    ref[4:6, 4:6] = 2
    ref[0] = 3
    pred = ref.copy()
    pred[0] = 0
    pred[0, :5] = 1  # under the ignore label: no false positive
    Image.fromarray(ref).save(labels_dir / "c.png")
    Image.fromarray(pred).save(pred_dir / "c.png")
    probs = np.stack([np.isin(pred, (1, 2)), pred == 2]).astype(np.float32)[:, None] * 0.9
    np.savez_compressed(pred_dir / "c.npz", probabilities=probs)
    summary = evaluate_folder(str(labels_dir), str(pred_dir), str(tmp_path / "out"), plots=False, progress=False)
    frame = pd.read_csv(tmp_path / "out" / "per_case.csv").set_index("class")
    assert list(frame.index) == ["whole", "core"]
    assert (frame["dice"] == 1).all() and (frame["fp"] == 0).all() and (frame["auc_roc"] == 1).all()
    assert frame.loc["whole", "ref_volume"] == 36 and frame.loc["whole", "tn"] == 10 * 12 - 12 - 36
    assert summary["foreground_mean"]["dice"] == 1.0


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_truncated_nifti_is_an_error_not_zeros(tmp_path, ending):
    """SimpleITK fills what a truncated NIfTI lacks with zeros; the evaluation refuses the file instead."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ext.evaluation.reading import read_label_map

    arr = np.zeros((10, 16, 16), np.uint8)
    arr[1:9, 2:14, 2:14] = np.random.default_rng(0).choice([1, 2], (8, 12, 12))
    path = tmp_path / f"case{ending}"
    _write_nifti(arr, path, (1.0, 1.0, 2.0))
    label_map = read_label_map(SimpleITKIO, str(path))
    np.testing.assert_array_equal(label_map.array, arr)
    assert label_map.array.dtype == np.uint8 and label_map.spacing == (2.0, 1.0, 1.0)

    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data) // 3])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == arr.shape  # what SimpleITK alone makes of it
    expected = "Compressed file ended" if ending == ".nii.gz" else f"bytes of voxel data and header where the header " \
                                                                   f"declares {352 + arr.size}"
    with pytest.raises(ValueError, match=f"case{ending}: truncated or corrupt file.*{expected}"):
        read_label_map(SimpleITKIO, str(path))


def test_label_maps_hold_integer_labels(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ext.evaluation.reading import read_label_map

    probability = np.full((4, 5, 6), 0.25, np.float32)
    _write_nifti(probability, tmp_path / "p.nii.gz", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="p.nii.gz: not a label map: non-integer values"):
        read_label_map(SimpleITKIO, str(tmp_path / "p.nii.gz"))
    _write_nifti(np.full((4, 5, 6), -1, np.int16), tmp_path / "n.nii.gz", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"n.nii.gz: not a label map: values -1..-1"):
        read_label_map(SimpleITKIO, str(tmp_path / "n.nii.gz"))


def test_cross_validation_checks_the_split(nifti_cv_folders, tmp_path):
    """With nnU-Net's splits_final.json beside gt_segmentations, a validation case without a prediction is refused
    (naming it) unless allow_missing; folds not evaluated are not expected."""
    model, gt = nifti_cv_folders
    splits = [{"train": [], "val": ["case_0", "case_2", "case_4"]}, {"train": [], "val": ["case_1", "case_3"]}]
    (gt.parent / "splits_final.json").write_text(json.dumps(splits))
    _write_nifti(np.zeros((8, 24, 24), np.uint8), gt / "case_4.nii.gz", (0.8, 0.8, 3.0))
    out = tmp_path / "cv_out"
    with pytest.raises(FileNotFoundError, match=r"no prediction for 1 of 5 reference cases in .*: case_4 "):
        evaluate_cross_validation(str(model), str(gt), str(out), plots=False, progress=False)
    assert not out.exists()
    summary = evaluate_cross_validation(str(model), str(gt), str(out), folds=[1], plots=False, progress=False)
    assert summary["n_cases"] == 2 and summary["missing_predictions"] == []
    summary = evaluate_cross_validation(str(model), str(gt), str(out), plots=False, progress=False,
                                        settings=EvaluationSettings(allow_missing=True))
    assert summary["n_cases"] == 4 and summary["missing_predictions"] == ["case_4"]
