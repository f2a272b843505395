"""A/V fundus converters (DRIVE-AV, LES-AV, HRF-AV) on synthetic layouts and on the real samples, bad input, CLI,
and the stock nnU-Net integrity check on a converted real set."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main
from nnunet_ext.dataset_conversion import Dataset711_DRIVE_AV, Dataset712_LES_AV, Dataset713_HRF_AV
from nnunet_ext.dataset_conversion._common import ConversionError
from nnunet_ext.dataset_conversion._fundus import decode_av_label
from nnunet_ext.stock import plan_and_preprocess

# RITE colour of each index label; 3 is drawn as green (crossing) or white (uncertain)
COLOURS = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255), 3: (0, 255, 0)}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def random_av(rng, shape=(24, 20)) -> np.ndarray:
    lab = rng.integers(0, 4, size=shape).astype(np.uint8)
    lab[:2] = [0, 1, 2, 3] * (shape[1] // 4)  # every class present
    return lab


def rgb_of(lab: np.ndarray) -> np.ndarray:
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    for k, c in COLOURS.items():
        rgb[lab == k] = c
    rgb[(lab == 3) & (np.arange(lab.shape[1]) % 2 == 0)] = (255, 255, 255)  # uncertain in white too
    return rgb


def make_drive_layout(root: Path, rng, n_train=3, n_test=2, rgb_train=False) -> dict:
    """DRIVE-AV's layout: NN_training.tif, 1st_manual/NN_training.png, mask/NN_training_mask.gif; test/ alike."""
    truth = {}
    for split, first, n, suffix in (("training", 21, n_train, "training"), ("test", 1, n_test, "test")):
        for sub in ("images", "1st_manual", "mask"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(first, first + n):
            case = f"{k:02d}_{suffix}"
            img = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
            lab = random_av(rng)
            fov = np.zeros((24, 20), np.uint8)
            fov[2:-2, 2:-2] = 255
            Image.fromarray(img).save(root / split / "images" / f"{case}.tif")
            label = rgb_of(lab) if (rgb_train and split == "training") else lab
            Image.fromarray(label).save(root / split / "1st_manual" / f"{case}.png")
            Image.fromarray(fov).save(root / split / "mask" / f"{case}_mask.gif")
            truth[case] = (img, lab, (fov > 0).astype(np.uint8))
    return truth


@pytest.mark.parametrize("rgb_train", [False, True])
def test_drive_layout_synthetic(tmp_path, rgb_train):
    truth = make_drive_layout(tmp_path / "src", np.random.default_rng(0), rgb_train=rgb_train)
    out = Dataset711_DRIVE_AV.convert(tmp_path / "src", out_root=tmp_path / "raw")
    assert out == tmp_path / "raw" / "Dataset711_DRIVE_AV"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{k}_training_0000.png" for k in (21, 22, 23)]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["01_test.png", "02_test.png"]
    for case, (img, lab, fov) in truth.items():
        role = "Tr" if "training" in case else "Ts"
        np.testing.assert_array_equal(png(out / f"images{role}" / f"{case}_0000.png"), img)
        np.testing.assert_array_equal(png(out / f"labels{role}" / f"{case}.png"), lab)
        np.testing.assert_array_equal(png(out / f"masks{role}" / f"{case}.png"), fov)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert ds["labels"] == {"background": 0, "artery": 1, "vein": 2, "uncertain": 3}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".png"
    assert not list((tmp_path / "raw").glob(".*tmp*"))


def test_real_drive_rgb_and_index_labels_identical(shared_data, tmp_path):
    src = shared_data / "DRIVE_AV"
    by_index = Dataset711_DRIVE_AV.convert(src, out_root=tmp_path / "index", coding="index")
    by_rgb = Dataset711_DRIVE_AV.convert(src, out_root=tmp_path / "rgb", label_folder="1st_manual_rgb")
    names = sorted(p.name for p in (by_index / "labelsTr").iterdir())
    assert len(names) == 20 and names == sorted(p.name for p in (by_rgb / "labelsTr").iterdir())
    seen = set()
    for name in names:
        a, b = png(by_index / "labelsTr" / name), png(by_rgb / "labelsTr" / name)
        np.testing.assert_array_equal(a, b, err_msg=name)
        seen |= set(np.unique(a).tolist())
    assert seen == {0, 1, 2, 3}
    image = png(by_rgb / "imagesTr" / "21_training_0000.png")
    assert image.shape == (584, 565, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(Image.open(src / "training/images/21_training.tif")))
    assert set(np.unique(png(by_rgb / "masksTr" / "21_training.png")).tolist()) == {0, 1}


@pytest.mark.parametrize("module,n,shape,image", [
    (Dataset712_LES_AV, 4, (1444, 1620), "images/12.png"),
    (Dataset713_HRF_AV, 3, (2336, 3504), "images/01_dr.JPG"),
])
def test_real_les_and_hrf(shared_data, tmp_path, module, n, shape, image):
    src = shared_data / {"LES_AV": "LES-AV", "HRF_AV": "HRF-AV"}[module.NAME]
    out = module.convert(src, out_root=tmp_path)
    labels = sorted((out / "labelsTr").iterdir())
    assert len(labels) == n == len(list((out / "imagesTr").iterdir())) == len(list((out / "masksTr").iterdir()))
    lab = png(labels[0])
    assert lab.shape == shape and set(np.unique(lab).tolist()) == {0, 1, 2, 3}
    case = Path(image).stem
    written = png(out / "imagesTr" / f"{case}_0000.png")
    # JPEG -> PNG keeps the decoded pixels exactly
    np.testing.assert_array_equal(written, np.asarray(Image.open(src / "training" / image).convert("RGB")))
    fov = png(out / "masksTr" / f"{case}.png")
    assert fov.shape == shape and set(np.unique(fov).tolist()) == {0, 1} and 0.3 < fov.mean() < 0.95


def test_decode_rejects_unknown_colour_and_index(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with pytest.raises(ConversionError, match="a.png.*not a RITE code"):
        decode_av_label(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ConversionError, match=r"b.png: label values \[255\] outside"):
        decode_av_label(tmp_path / "b.png")
    with pytest.raises(ConversionError, match="b.png: single-channel"):
        decode_av_label(tmp_path / "b.png", coding="rgb")


def _break_missing(src):
    (src / "training/1st_manual/22_training.png").unlink()
    return "22_training.tif", "missing partner"


def _break_values(src):
    Image.fromarray(np.full((24, 20), 7, np.uint8)).save(src / "training/1st_manual/22_training.png")
    return "1st_manual/22_training.png", r"label values \[7\] outside the scheme"


def _break_size(src):
    Image.fromarray(np.zeros((23, 20), np.uint8)).save(src / "training/1st_manual/22_training.png")
    return "1st_manual/22_training.png", "size mismatch"


def _break_mask_size(src):
    Image.fromarray(np.zeros((24, 21), np.uint8)).save(src / "test/mask/02_test_mask.gif")
    return "02_test_mask.gif", "size mismatch"


def _break_corrupt(src):
    (src / "test/images/01_test.tif").write_bytes(b"II*\x00 truncated")
    return "images/01_test.tif", "unreadable or corrupt"


@pytest.mark.parametrize("breaker", [_break_missing, _break_values, _break_size, _break_mask_size, _break_corrupt])
def test_bad_input_names_file_and_writes_nothing(tmp_path, breaker):
    src = tmp_path / "src"
    make_drive_layout(src, np.random.default_rng(1))
    fragment, problem = breaker(src)
    with pytest.raises(ConversionError, match=problem) as err:
        Dataset711_DRIVE_AV.convert(src, out_root=tmp_path / "raw")
    assert fragment in str(err.value)
    assert list((tmp_path / "raw").iterdir()) == []  # neither the data set nor its temporary folder


def test_existing_dataset_needs_overwrite_and_cli(tmp_path, capsys):
    src = tmp_path / "src"
    make_drive_layout(src, np.random.default_rng(2), n_train=2, n_test=1)
    raw = tmp_path / "raw"
    assert cli_main(["convert", "drive_av", str(src), "-o", str(raw)]) == 0
    capsys.readouterr()
    marker = raw / "Dataset711_DRIVE_AV" / "imagesTr" / "21_training_0000.png"
    before = marker.stat().st_mtime_ns
    assert cli_main(["convert", "drive_av", str(src), "-o", str(raw)]) == 1
    # a user error goes to stderr, where scripts and CI logs look for it; stdout stays empty
    captured = capsys.readouterr()
    assert "Dataset711_DRIVE_AV: data set exists" in captured.err and captured.out == ""
    with pytest.raises(ConversionError, match="overwrite"):
        Dataset711_DRIVE_AV.convert(src, out_root=raw)
    # another name with the same id is a clash too: nnU-Net would not know which one -d 711 means
    with pytest.raises(ConversionError, match="Dataset711_DRIVE_AV: data set exists"):
        Dataset712_LES_AV.convert(src, dataset_id=711, out_root=raw)
    assert marker.stat().st_mtime_ns == before
    # the module's own entry point, as a user runs it, replacing the data set
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext.dataset_conversion.Dataset711_DRIVE_AV", "-i", str(src),
                           "-o", str(raw), "--overwrite", "--coding", "index"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert marker.stat().st_mtime_ns != before and len(list((raw / "Dataset711_DRIVE_AV/imagesTr").iterdir())) == 2


def test_stock_integrity_check_on_real_drive(shared_data, tmp_path, nnunet_env):
    # three real cases keep planning quick; symlinks, the shared files are never copied
    src = tmp_path / "drive3" / "training"
    for sub, pattern in (("images", "{}_training.tif"), ("1st_manual", "{}_training.png"),
                         ("mask", "{}_training_mask.gif")):
        (src / sub).mkdir(parents=True)
        for k in (21, 22, 23):
            (src / sub / pattern.format(k)).symlink_to(shared_data / "DRIVE_AV/training" / sub / pattern.format(k))
    Dataset711_DRIVE_AV.convert(src.parent, out_root=nnunet_env["nnUNet_raw"])
    plan_and_preprocess(711, "2d", nnunet_env, verify=True)
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset711_DRIVE_AV"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"]
    assert len(list((pre / "nnUNetPlans_2d").glob("*.b2nd"))) >= 3


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_test_split_only_synthetic(tmp_path):
    """A source holding only the official test/ split becomes imagesTs/labelsTs/masksTs, for evaluation; the data
    set folder gets the usual permissions (a 0700 staging folder renamed into place would keep others out)."""
    src = tmp_path / "src"
    truth = make_drive_layout(src, np.random.default_rng(6), n_train=0, n_test=2)
    shutil.rmtree(src / "training")
    out = Dataset711_DRIVE_AV.convert(src, out_root=tmp_path / "raw")
    for case, (img, lab, fov) in truth.items():
        np.testing.assert_array_equal(png(out / "imagesTs" / f"{case}_0000.png"), img)
        np.testing.assert_array_equal(png(out / "labelsTs" / f"{case}.png"), lab)
        np.testing.assert_array_equal(png(out / "masksTs" / f"{case}.png"), fov)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs",
                                                     "masksTs"]
    assert not any((out / "imagesTr").iterdir()) and json.loads((out / "dataset.json").read_text())["numTraining"] == 0
    usual = 0o777 & ~_umask()
    for folder in (out, out / "imagesTs"):
        assert stat.S_IMODE(folder.stat().st_mode) == usual, folder

    # test images without any label folder: converted for prediction, no labelsTs
    shutil.rmtree(src / "test" / "1st_manual")
    out = Dataset711_DRIVE_AV.convert(src, out_root=tmp_path / "raw2")
    assert len(list((out / "imagesTs").iterdir())) == 2 and not (out / "labelsTs").exists()
    shutil.rmtree(src / "test")
    with pytest.raises(ConversionError, match="expected a training/ or test/ folder"):
        Dataset711_DRIVE_AV.convert(src, out_root=tmp_path / "raw3")
    assert not (tmp_path / "raw3").exists() or not any((tmp_path / "raw3").iterdir())


def test_real_drive_cases_as_a_test_split(shared_data, tmp_path, capsys):
    """Real DRIVE cases laid out as the official test/ split (links, nothing copied): exact labels and FOV masks in
    labelsTs/masksTs, then scored by `nnunet_ext evaluate` against themselves."""
    src = tmp_path / "drive" / "test"
    for sub, pattern in (("images", "{}_training.tif"), ("1st_manual", "{}_training.png"),
                         ("mask", "{}_training_mask.gif")):
        (src / sub).mkdir(parents=True)
        for k in (24, 25):
            (src / sub / pattern.format(k)).symlink_to(shared_data / "DRIVE_AV/training" / sub / pattern.format(k))
    raw = tmp_path / "raw"
    assert cli_main(["convert", "drive_av", str(src.parent), "-o", str(raw)]) == 0
    out = raw / "Dataset711_DRIVE_AV"
    for k in (24, 25):
        np.testing.assert_array_equal(png(out / "labelsTs" / f"{k}_training.png"),
                                      png(src / "1st_manual" / f"{k}_training.png"))
        assert set(np.unique(png(out / "masksTs" / f"{k}_training.png")).tolist()) == {0, 1}
    evaluation = tmp_path / "eval"
    assert cli_main(["evaluate", "-ref", str(out / "labelsTs"), "-pred", str(out / "labelsTs"), "-o", str(evaluation),
                     "--no-plots", "--no-surface"]) == 0
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["foreground_mean"]["dice"] == 1.0
