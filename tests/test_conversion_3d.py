"""3D CT converters (PDDCA, MSD liver/pancreas, LiTS, KiTS23, merged abdomen, organ-only, COVID-19-20)."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli import main as cli_main
from nnunet_ext.dataset_conversion import (
    Dataset731_PDDCA,
    Dataset751_MSDLiver,
    Dataset753_KiTS23,
    Dataset754_FreeTumorAbdomen,
    Dataset755_OrganOnlyCT,
    Dataset756_COVID19_20,
)
from nnunet_ext.dataset_conversion._common import ConversionError

SPACING, ORIGIN = (0.8, 0.7, 2.5), (-10.0, 20.0, 5.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
SHAPE = (6, 8, 10)  # z, y, x


def write(path: Path, arr: np.ndarray, spacing=SPACING) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(path))


def ct(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(np.int16)


def seg(values, seed: int) -> np.ndarray:
    arr = np.random.default_rng(seed).choice(values, SHAPE).astype(np.uint8)
    arr.flat[: len(values)] = values  # every value present
    return arr


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def assert_geometry(img: sitk.Image) -> None:
    assert np.allclose(img.GetSpacing(), SPACING) and np.allclose(img.GetOrigin(), ORIGIN)
    assert np.allclose(img.GetDirection(), DIRECTION)


def make_msd(root: Path, prefix: str, n: int = 2, values=(0, 1, 2)) -> dict:
    truth = {}
    for k in range(n):
        image, label = ct(k), seg(values, k)
        write(root / "imagesTr" / f"{prefix}_{k}.nii.gz", image)
        write(root / "labelsTr" / f"{prefix}_{k}.nii.gz", label)
        truth[f"{prefix}_{k}"] = (image, label)
    write(root / "imagesTs" / f"{prefix}_9.nii.gz", ct(9))
    (root / "imagesTr" / f"._{prefix}_0.nii.gz").write_bytes(b"macOS resource fork")  # must be skipped
    (root / "dataset.json").write_text("{}")
    return truth


def make_kits(root: Path, n: int = 2) -> dict:
    truth = {}
    for k in range(n):
        image, label = ct(20 + k), seg((0, 1, 2, 3), 20 + k)
        write(root / "dataset" / f"case_{k:05d}" / "imaging.nii.gz", image)
        write(root / "dataset" / f"case_{k:05d}" / "segmentation.nii.gz", label)
        truth[f"case_{k:05d}"] = (image, label)
    return truth


def test_msd_liver_keeps_images_labels_geometry(tmp_path):
    truth = make_msd(tmp_path / "Task03_Liver", "liver")
    out = Dataset751_MSDLiver.convert(tmp_path / "Task03_Liver", out_root=tmp_path / "raw")
    for case, (image, label) in truth.items():
        img_arr, img = read(out / "imagesTr" / f"liver_{case}_0000.nii.gz")
        lab_arr, lab = read(out / "labelsTr" / f"liver_{case}.nii.gz")
        np.testing.assert_array_equal(img_arr, image)
        np.testing.assert_array_equal(lab_arr, label)
        assert_geometry(img)
        assert_geometry(lab)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["liver_liver_9_0000.nii.gz"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "liver": 1, "liver_tumour": 2} and ds["numTraining"] == 2
    assert ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"


def test_lits_layout(tmp_path):
    write(tmp_path / "lits/batch1/volume-3.nii", ct(3))
    write(tmp_path / "lits/batch1/segmentation-3.nii", seg((0, 1, 2), 3).astype(np.float32))
    out = Dataset751_MSDLiver.convert(tmp_path / "lits", out_root=tmp_path / "raw")
    lab, _ = read(out / "labelsTr" / "liver_3.nii.gz")
    assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) == {0, 1, 2}


def test_kits23(tmp_path):
    truth = make_kits(tmp_path / "kits23")
    out = Dataset753_KiTS23.convert(tmp_path / "kits23", out_root=tmp_path / "raw")
    for case, (_, label) in truth.items():
        np.testing.assert_array_equal(read(out / "labelsTr" / f"{case}.nii.gz")[0], label)
    assert json.loads((out / "dataset.json").read_text())["labels"]["kidney_cyst"] == 3


def test_merged_abdomen(tmp_path):
    src = tmp_path / "src"
    liver = make_msd(src / "Task03_Liver", "liver")
    pancreas = make_msd(src / "Task07_Pancreas", "pancreas", n=1)
    kits = make_kits(src / "kits23")
    assert cli_main(["convert", "freetumor_abdomen", str(src), "-o", str(tmp_path / "raw")]) == 0
    out = tmp_path / "raw" / "Dataset754_FreeTumorAbdomen"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "liver": 1, "liver_tumour": 2, "pancreas": 3, "pancreas_tumour": 4,
                            "kidney": 5, "kidney_tumour": 6}
    assert ds["numTraining"] == 5 and len(list((out / "imagesTs").iterdir())) == 2
    lut = {"liver": [0, 1, 2], "pancreas": [0, 3, 4], "kits_": [0, 5, 6, 5]}  # KiTS cyst (3) -> kidney
    for prefix, cases in (("liver", liver), ("pancreas", pancreas), ("kits_", kits)):
        for case, (image, label) in cases.items():
            name = f"{prefix}{case}" if prefix == "kits_" else f"{prefix}_{case}"
            np.testing.assert_array_equal(read(out / "labelsTr" / f"{name}.nii.gz")[0], np.array(lut[prefix])[label])
            np.testing.assert_array_equal(read(out / "imagesTr" / f"{name}_0000.nii.gz")[0], image)


def test_organ_only_real_ct(shared_data, tmp_path):
    src = shared_data / "CT_abdomen"
    out = Dataset755_OrganOnlyCT.convert(src, out_root=tmp_path)
    # the flat folder holds two CTs of the patient; the one on the segmentation's grid is paired
    assert [p.name for p in (out / "imagesTr").iterdir()] == ["example_0000.nii.gz"]
    lab, lab_img = read(out / "labelsTr" / "example.nii.gz")
    source, source_img = read(src / "example_seg.nii.gz")
    assert set(np.unique(lab).tolist()) == {0, 1, 3, 5}
    for organ_label, ids in ((1, [5]), (3, [7]), (5, [2, 3])):
        assert (lab == organ_label).sum() == np.isin(source, ids).sum() > 0
    assert ((lab > 0) == np.isin(source, [2, 3, 5, 7])).all()
    assert lab_img.GetSize() == source_img.GetSize() == (122, 101, 30)
    assert np.allclose(lab_img.GetSpacing(), source_img.GetSpacing())
    np.testing.assert_array_equal(read(out / "imagesTr" / "example_0000.nii.gz")[0],
                                  read(src / "example_ct_sm.nii.gz")[0])
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"]["kidney_tumour"] == 6 and ds["organs_present"] == {"example": [0, 1, 3, 5]}


def test_organ_only_user_mapping_and_pairs(tmp_path):
    write(tmp_path / "a_img.nii.gz", ct(1))
    write(tmp_path / "a_lab.nii.gz", seg((0, 10, 11, 12), 1))
    rc = cli_main(["convert", "organ_ct", str(tmp_path), "-o", str(tmp_path / "raw"), "--pair",
                   str(tmp_path / "a_img.nii.gz"), str(tmp_path / "a_lab.nii.gz"), "--map", "liver=11",
                   "--map", "kidney=10,12"])
    assert rc == 0
    lab, _ = read(tmp_path / "raw/Dataset755_OrganOnlyCT/labelsTr/a_lab.nii.gz")
    source, _ = read(tmp_path / "a_lab.nii.gz")
    np.testing.assert_array_equal(lab, np.array([0] * 10 + [5, 1, 5], np.uint8)[source])


@pytest.mark.parametrize("with_lung", [False, True])
def test_covid(tmp_path, with_lung):
    lesion = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 7 == 0).astype(np.uint8)
    lung = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3 == 0).astype(np.uint8)
    write(tmp_path / "src/Train/volume-covid19-A-0003_ct.nii.gz", ct(3))
    write(tmp_path / "src/Train/volume-covid19-A-0003_seg.nii.gz", lesion)
    write(tmp_path / "src/Validation/volume-covid19-A-0011_ct.nii.gz", ct(4))
    write(tmp_path / "lungs/volume-covid19-A-0003_lung.nii.gz", lung)
    out = Dataset756_COVID19_20.convert(tmp_path / "src", out_root=tmp_path / "raw",
                                        lung_masks=tmp_path / "lungs" if with_lung else None)
    lab, img = read(out / "labelsTr" / "volume-covid19-A-0003.nii.gz")
    expected = np.where(lesion == 1, 2, lung) if with_lung else lesion
    np.testing.assert_array_equal(lab, expected)
    assert_geometry(img)
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["volume-covid19-A-0011_0000.nii.gz"]
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels == ({"background": 0, "lung": 1, "lesion": 2} if with_lung else {"background": 0, "lesion": 1})


def test_pddca(tmp_path):
    rng = np.random.default_rng(0)
    masks = {}
    for case in ("0522c0001", "0522c0002", "0522c0555"):
        write(tmp_path / case / "img.nrrd", ct(int(case[-3:])))
        for k, structure in enumerate(Dataset731_PDDCA.STRUCTURES):
            if case == "0522c0002" and structure in ("Chiasm", "OpticNerve_R"):
                continue
            mask = np.zeros(SHAPE, np.uint8)
            mask.flat[rng.choice(mask.size - 9, 3, replace=False) + 9] = 1  # may overlap others
            mask.flat[k] = 1  # disjoint anchor voxel per structure
            write(tmp_path / case / "structures" / f"{structure}.nrrd", mask)
            masks[(case, k + 1)] = mask
    out = Dataset731_PDDCA.convert(tmp_path, out_root=tmp_path / "raw")
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["0522c0555.nii.gz"]
    lab, img = read(out / "labelsTr" / "0522c0001.nii.gz")
    assert_geometry(img)
    assert set(np.unique(lab).tolist()) == set(range(10))
    for k in range(1, 10):
        assert lab.flat[k - 1] == k
        # the last structure to claim a voxel keeps it
        later = np.zeros(SHAPE, bool)
        for j in range(k + 1, 10):
            later |= masks[("0522c0001", j)] > 0
        assert ((lab == k) == ((masks[("0522c0001", k)] > 0) & ~later)).all()
    assert json.loads((out / "missing_structures.json").read_text()) == {"0522c0002": ["Chiasm", "OpticNerve_R"]}
    ds = json.loads((out / "dataset.json").read_text())
    assert list(ds["labels"])[1:] == list(Dataset731_PDDCA.STRUCTURES) and ds["numTraining"] == 2


def _bad_label(root):
    write(root / "Task03_Liver/labelsTr/liver_1.nii.gz", seg((0, 1, 3), 1))
    return "labelsTr/liver_1.nii.gz", r"label values \[3\] outside the scheme"


def _bad_geometry(root):
    write(root / "Task03_Liver/labelsTr/liver_1.nii.gz", seg((0, 1), 1), spacing=(0.8, 0.7, 3.0))
    return "labelsTr/liver_1.nii.gz", "geometry mismatch: spacing"


def _bad_size(root):
    write(root / "Task03_Liver/labelsTr/liver_0.nii.gz", np.zeros((6, 8, 9), np.uint8))
    return "labelsTr/liver_0.nii.gz", "size mismatch"


def _bad_missing(root):
    (root / "Task03_Liver/labelsTr/liver_1.nii.gz").unlink()
    return "imagesTr/liver_1.nii.gz", "missing partner file"


def _bad_corrupt(root):
    (root / "Task03_Liver/imagesTs/liver_9.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return "imagesTs/liver_9.nii.gz", "unreadable or corrupt"


@pytest.mark.parametrize("breaker", [_bad_label, _bad_geometry, _bad_size, _bad_missing, _bad_corrupt])
def test_3d_bad_input_names_file_and_writes_nothing(tmp_path, breaker):
    make_msd(tmp_path / "src" / "Task03_Liver", "liver")
    fragment, problem = breaker(tmp_path / "src")
    with pytest.raises(ConversionError, match=problem) as err:
        Dataset754_FreeTumorAbdomen.convert(tmp_path / "src", out_root=tmp_path / "raw")
    assert fragment in str(err.value)
    # some problems are found before anything is staged, the rest while writing: either way nothing is left
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []
