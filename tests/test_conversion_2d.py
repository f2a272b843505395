"""Weak-label converters (BraTS, ISIC) and the fundus tumour converter: synthetic layouts, real slices, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from PIL import Image

from nnunet_ext.cli import main as cli_main
from nnunet_ext.dataset_conversion import Dataset721_FundusTumour, Dataset741_BraTSWeak, Dataset742_ISICWeak
from nnunet_ext.dataset_conversion._common import ConversionError


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def values(folder: Path) -> dict[str, set]:
    return {p.name: set(np.unique(png(p)).tolist()) for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------ real samples
def test_real_brats_slices_default_roles(shared_data, tmp_path):
    out = Dataset741_BraTSWeak.convert(shared_data / "BraTS2018_slices", out_root=tmp_path)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "lesion": 1, "ignore": 2} and ds["channel_names"] == {"0": "FLAIR"}
    assert ds["numTraining"] == 16
    labels = values(out / "labelsTr")
    normal = {k for k in labels if k.startswith("Brats18_2013_10_1") or k in
              {f"Brats18_2013_{n}_flair_nii_{z}.png" for n, z in (("11_1", 120), ("14_1", 115), ("3_1", 105),
                                                                   ("9_1", 115))}}
    assert len(normal) == 8 and all(labels[k] == {0} for k in normal)
    assert all(v == {0, 1} for k, v in labels.items() if k not in normal)
    # single grey channel, as nnU-Net reads a 2-D PNG
    assert png(next((out / "imagesTr").iterdir())).shape == (256, 256)
    split = json.loads((out / "splits_final.json").read_text())
    assert len(split) == 1 and len(split[0]["val"]) == 8 and len(split[0]["train"]) == 8
    verify_dataset_integrity(str(out), num_processes=1)


def test_real_brats_and_isic_other_roles(shared_data, tmp_path):
    weak = Dataset741_BraTSWeak.convert(shared_data / "BraTS2018_slices", out_root=tmp_path,
                                        roles={"val": "weak"})
    labels = values(weak / "labelsTr")
    # weak slices: the ignore label over the brain, 0 on the black background (nnU-Net then marks it outside)
    assert sum(v == {0, 2} for v in labels.values()) == 8
    assert sorted(map(frozenset, labels.values())).count(frozenset({0})) == 8
    assert not (weak / "splits_final.json").exists() and not (weak / "imagesTs").exists()
    verify_dataset_integrity(str(weak), num_processes=1)

    isic = Dataset742_ISICWeak.convert(shared_data / "ISIC2018_weak", out_root=tmp_path, roles={"val": "test"})
    assert len(list((isic / "imagesTr").iterdir())) == 8 and all(v == {0} for v in values(isic / "labelsTr").values())
    test_labels = values(isic / "labelsTs")
    assert len(test_labels) == 8 and all(v == {0, 1} for v in test_labels.values())
    assert png(isic / "imagesTs" / "ISIC_0000062_0000.png").shape == (256, 256, 3)
    # resized masks hold interpolated values: > 127 is lesion
    src = np.asarray(Image.open(shared_data / "ISIC2018_weak/val/labels/ISIC_0000062_segmentation.png"))[..., 0]
    np.testing.assert_array_equal(png(isic / "labelsTs" / "ISIC_0000062.png"), src > 127)


# ------------------------------------------------------------------------------------------ synthetic BraTS 3D
def write_brats_case(root: Path, case: str, with_tumour: bool, seg_spacing=(1.0, 1.0, 1.0)):
    folder = root / "HGG" / case
    folder.mkdir(parents=True)
    z, y, x = np.mgrid[:20, :40, :40]
    brain = ((y - 20) ** 2 + (x - 20) ** 2 < 15 ** 2) & (z >= 2) & (z < 18)
    flair = np.where(brain, 100 + 10 * (x % 3), 0).astype(np.int16)
    seg = np.zeros(flair.shape, np.uint8)
    if with_tumour:
        seg[(z >= 8) & (z < 12) & ((y - 20) ** 2 + (x - 22) ** 2 < 6 ** 2)] = 2
        seg[(z == 10) & ((y - 20) ** 2 + (x - 22) ** 2 < 2 ** 2)] = 4
    for arr, name, spacing in ((flair, "flair", (1.0, 1.0, 1.0)), (seg, "seg", seg_spacing)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(folder / f"{case}_{name}.nii.gz"))


def test_brats_3d_layout(tmp_path):
    for k in range(3):
        write_brats_case(tmp_path / "src", f"Brats18_TCIA_{k}_1", with_tumour=k != 1)
    out = Dataset741_BraTSWeak.convert(tmp_path / "src", out_root=tmp_path / "raw", size=32, slice_step=1,
                                       min_lesion_pixels=5, val_fraction=0.0, test_fraction=0.34, seed=0)
    ds = json.loads((out / "dataset.json").read_text())
    counts = ds["case_counts"]
    test_cases = {p.name.split("_flair")[0] for p in (out / "imagesTs").iterdir()}
    assert len(test_cases) == 1
    # 16 brain slices per patient; the tumour patients' slices 8-11 are disease, the rest normal
    tumour_patients_in_train = 2 - ("Brats18_TCIA_1_1" not in test_cases)
    assert counts["weak"] == 4 * tumour_patients_in_train
    assert counts["normal"] == 16 * 2 - counts["weak"] and counts["test"] == 16
    for p in (out / "labelsTr").iterdir():
        z = int(p.name[-7:-4])
        weak = 8 <= z < 12 and "TCIA_1_" not in p.name
        values_of = set(np.unique(png(p)).tolist())
        assert (2 in values_of and values_of <= {0, 2}) if weak else values_of == {0}, p.name
    assert png(next((out / "imagesTr").iterdir())).shape == (32, 32)
    verify_dataset_integrity(str(out), num_processes=1)


def test_brats_3d_bad_input(tmp_path):
    write_brats_case(tmp_path / "a", "Brats18_X_1", True, seg_spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ConversionError, match=r"Brats18_X_1_seg.nii.gz: geometry mismatch"):
        Dataset741_BraTSWeak.convert(tmp_path / "a", out_root=tmp_path / "raw")
    write_brats_case(tmp_path / "b", "Brats18_Y_1", True)
    (tmp_path / "b/HGG/Brats18_Y_1/Brats18_Y_1_seg.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"Brats18_Y_1_flair.nii.gz: missing partner file"):
        Dataset741_BraTSWeak.convert(tmp_path / "b", out_root=tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


# ------------------------------------------------------------------------------------------ synthetic ISIC task 1
def write_isic(root: Path, part: str, k: int, dark_corner: bool = False, lesion_corner: bool = False):
    inputs, truth = root / f"ISIC2018_Task1-2_{part}_Input", root / f"ISIC2018_Task1_{part}_GroundTruth"
    inputs.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    img = np.full((60, 80, 3), 180, np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[20:40, 30:50] = 255
    img[mask > 0] = (90, 50, 40)
    if dark_corner:
        img[:15, :15] = 0
    if lesion_corner:
        mask[50:, 70:] = 255
    Image.fromarray(img).save(inputs / f"ISIC_{k:07d}.jpg", quality=95)
    Image.fromarray(mask).save(truth / f"ISIC_{k:07d}_segmentation.png")


def test_isic_task1_layout_and_corner_crops(tmp_path):
    src = tmp_path / "src"
    write_isic(src, "Training", 1)
    write_isic(src, "Training", 2, dark_corner=True)
    write_isic(src, "Training", 3, lesion_corner=True)
    write_isic(src, "Validation", 10)
    write_isic(src, "Test", 20)
    assert cli_main(["convert", "isic_weak", str(src), "-o", str(tmp_path / "raw"), "--size", "64"]) == 0
    out = tmp_path / "raw" / "Dataset742_ISICWeak"
    labels = values(out / "labelsTr")
    crops = sorted(k for k in labels if "_health_" in k)
    # four corners each, less the dark one of image 2 and the lesion-touching one of image 3
    assert len(crops) == 10 and "ISIC_0000002_health_tl.png" not in crops and "ISIC_0000003_health_br.png" not in crops
    assert all(labels[k] == {0} for k in crops)
    assert all(2 in labels[f"ISIC_000000{k}.png"] <= {0, 2} for k in (1, 2, 3))
    assert labels["ISIC_0000010.png"] == {0, 1}
    assert values(out / "labelsTs") == {"ISIC_0000020.png": {0, 1}}
    assert json.loads((out / "splits_final.json").read_text())[0]["val"] == ["ISIC_0000010"]
    assert png(out / "imagesTr" / "ISIC_0000001_health_tr_0000.png").shape == (64, 64, 3)
    verify_dataset_integrity(str(out), num_processes=1)


def test_isic_missing_ground_truth(tmp_path):
    write_isic(tmp_path / "src", "Training", 1)
    write_isic(tmp_path / "src", "Training", 2)
    (tmp_path / "src/ISIC2018_Task1_Training_GroundTruth/ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(ConversionError, match=r"ISIC_0000002.jpg: missing partner file"):
        Dataset742_ISICWeak.convert(tmp_path / "src", out_root=tmp_path / "raw", val_fraction=0, test_fraction=0)
    assert list((tmp_path / "raw").iterdir()) == []


# ------------------------------------------------------------------------------------------------ fundus tumour
def make_fts(root: Path) -> None:
    rng = np.random.default_rng(3)
    for split, names in (("training", ("a1", "a2", "b1")), ("test", ("t1",))):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, name in enumerate(names):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / split / "images" /
                                                                                   f"{name}.jpg")
            mask = np.zeros((30, 40), np.uint8)
            mask[5:15, 10:20] = 255 if i % 2 == 0 else 1  # both published codings
            Image.fromarray(mask).save(root / split / "masks" / f"{name}_mask.png")
    (root / "classification.csv").write_text("image,class\na1.jpg,melanoma\na2.jpg,melanoma\nb1.jpg,"
                                             "haemangioma\nt1.jpg,haemangioma\n")


def test_fundus_tumour(tmp_path):
    make_fts(tmp_path / "src")
    out = Dataset721_FundusTumour.convert(tmp_path / "src", out_root=tmp_path / "raw")
    assert values(out / "labelsTr") == {f"{n}.png": {0, 1} for n in ("a1", "a2", "b1")}
    assert list(values(out / "labelsTs")) == ["t1.png"]
    np.testing.assert_array_equal(png(out / "imagesTr/a1_0000.png"),
                                  np.asarray(Image.open(tmp_path / "src/training/images/a1.jpg")))
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "tumour": 1} and ds["classification_classes"] == ["haemangioma",
                                                                                                "melanoma"]
    assert json.loads((out / "classification.json").read_text()) == {"a1": 1, "a2": 1, "b1": 0, "t1": 0}
    verify_dataset_integrity(str(out), num_processes=1)


def test_fundus_tumour_classification_only_images(tmp_path):
    """Images in classification_only/ (a class, no mask) become training cases labelled all ignore, with their
    class; without a class they are refused."""
    make_fts(tmp_path / "src")
    (tmp_path / "src/training/classification_only").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "src/training/classification_only/c1.png")
    with (tmp_path / "src/classification.csv").open("a") as f:
        f.write("c1.png,melanoma\n")
    out = Dataset721_FundusTumour.convert(tmp_path / "src", out_root=tmp_path / "raw")
    assert values(out / "labelsTr")["c1.png"] == {2}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "tumour": 1, "ignore": 2} and ds["numTraining"] == 4
    assert json.loads((out / "classification.json").read_text())["c1"] == 1
    verify_dataset_integrity(str(out), num_processes=1)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "src/training/classification_only/c2.png")
    with pytest.raises(ConversionError, match=r"c2.png: classification-only image without a class"):
        Dataset721_FundusTumour.convert(tmp_path / "src", out_root=tmp_path / "raw2")


def test_fundus_tumour_bad_mask_values(tmp_path):
    make_fts(tmp_path / "src")
    Image.fromarray(np.full((30, 40), 128, np.uint8)).save(tmp_path / "src/training/masks/a2_mask.png")
    with pytest.raises(ConversionError, match=r"a2_mask.png: label values \[128\] outside the scheme"):
        Dataset721_FundusTumour.convert(tmp_path / "src", out_root=tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


# ---------------------------------------------------------------------------------------------- test split only
def _as_test_split(sample: Path, into: Path) -> Path:
    """A sample's val/ slices laid out as the official test/ split (links, nothing copied)."""
    for sub in ("images", "labels"):
        (into / "test" / sub).mkdir(parents=True)
        for f in (sample / "val" / sub).iterdir():
            (into / "test" / sub / f.name).symlink_to(f)
    return into


@pytest.mark.parametrize(("module", "sample", "channels"), [(Dataset741_BraTSWeak, "BraTS2018_slices", (256, 256)),
                                                            (Dataset742_ISICWeak, "ISIC2018_weak", (256, 256, 3))])
def test_real_test_split_only(shared_data, tmp_path, module, sample, channels):
    """A source with only test/images + test/labels (BraTS slice names end in flair.nii_Z.png: not volumes that need
    a _seg.nii.gz partner) becomes imagesTs/labelsTs alone, masks exact."""
    src = _as_test_split(shared_data / sample, tmp_path / "src")
    out = module.convert(src, out_root=tmp_path / "raw")
    labels = sorted((out / "labelsTs").iterdir())
    assert len(labels) == 8 and not any((out / "imagesTr").iterdir()) and not (out / "splits_final.json").exists()
    for label in labels:
        stem = label.name[: -len(".png")]
        source = next((src / "test" / "labels").glob(f"{stem.replace('_flair_nii_', '_flair.nii_')}_segmentation.*"))
        mask = np.asarray(Image.open(source))
        mask = mask.max(axis=2) if mask.ndim == 3 else mask
        np.testing.assert_array_equal(png(label), mask > 127)
        assert png(out / "imagesTs" / f"{stem}_0000.png").shape == channels
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 0 and ds["case_counts"]["test"] == 8


def test_isic_task1_test_only(tmp_path):
    src = tmp_path / "src"
    for k in (20, 21):
        write_isic(src, "Test", k)
    out = Dataset742_ISICWeak.convert(src, out_root=tmp_path / "raw", size=64)
    assert values(out / "labelsTs") == {"ISIC_0000020.png": {0, 1}, "ISIC_0000021.png": {0, 1}}
    assert not any((out / "imagesTr").iterdir())
    # no healthy crops: those come from training images only
    assert json.loads((out / "dataset.json").read_text())["case_counts"] == {"weak": 0, "normal": 0, "validation": 0,
                                                                             "full": 0, "test": 2}
    with pytest.raises(ConversionError, match=r"no ISIC2018_Task1-2_\{Training,Validation,Test\}_Input folder"):
        Dataset742_ISICWeak.convert(tmp_path / "raw", out_root=tmp_path / "raw2")
