"""Bad input through the user-facing commands: each case must exit non-zero with a message that names the file or
setting and the problem, and leave the output folders exactly as they were (nothing half-written).

Converter internals are checked in the test_conversion_* modules; here every case goes through the command line a
user types (`nnunet_ext ...`, `nnUNetv2_train ...`), as a separate process.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import results_env
from PIL import Image
from test_conversion_3d import make_msd, write
from test_conversion_fundus import make_drive_layout

from nnunet_ext import stock

CLI = [sys.executable, "-m", "nnunet_ext.cli"]


def snapshot(folder: Path) -> dict | None:
    """Every file under folder with its size and modification time: equal snapshots mean nothing was touched."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def assert_refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out[-2000:]}"


# ---------------------------------------------------------------------------------------------------- converters
def _drive_corrupt(src: Path):
    (src / "test/images/01_test.tif").write_bytes(b"II*\x00 truncated")
    return "01_test.tif", "unreadable or corrupt"


def _drive_label_missing(src: Path):
    (src / "training/1st_manual/22_training.png").unlink()
    return "22_training", "missing partner"


def _drive_label_values(src: Path):
    Image.fromarray(np.full((24, 20), 9, np.uint8)).save(src / "training/1st_manual/22_training.png")
    return "22_training.png", "outside the scheme"


def _drive_size(src: Path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(src / "training/1st_manual/21_training.png")
    return "21_training.png", "size mismatch"


def _drive_empty(src: Path):
    shutil.rmtree(src)
    src.mkdir()
    return str(src), ""


@pytest.mark.parametrize("breaker", [_drive_corrupt, _drive_label_missing, _drive_label_values, _drive_size,
                                     _drive_empty])
def test_convert_fundus_bad_input(tmp_path, breaker):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_drive_layout(src, np.random.default_rng(3), n_train=2, n_test=1)
    raw.mkdir()
    (raw / "Dataset001_Other").mkdir()  # someone else's data set: must survive untouched
    before = snapshot(raw)
    fragment, problem = breaker(src)
    assert_refused(run([*CLI, "convert", "drive_av", str(src), "-o", str(raw)]), fragment, problem)
    assert snapshot(raw) == before


def _ct_nan(root: Path):
    arr = np.zeros((6, 8, 10), np.float32)
    arr[2, 3, 4] = np.nan
    arr[1, 1, 1] = np.inf
    write(root / "Task03_Liver/imagesTr/liver_1.nii.gz", arr)
    return "liver_1.nii.gz", "2 NaN/Inf voxels"


def _ct_spacing(root: Path):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "Task03_Liver/labelsTr/liver_0.nii.gz")))
    write(root / "Task03_Liver/labelsTr/liver_0.nii.gz", label, spacing=(0.8, 0.7, 5.0))
    return "liver_0.nii.gz", "geometry mismatch: spacing"


def _ct_truncated(root: Path):
    path = root / "Task03_Liver/imagesTr/liver_0.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return "liver_0.nii.gz", "unreadable or corrupt"


@pytest.mark.parametrize("breaker", [_ct_nan, _ct_spacing, _ct_truncated])
def test_convert_ct_bad_input(tmp_path, breaker):
    make_msd(tmp_path / "src" / "Task03_Liver", "liver")
    raw = tmp_path / "raw"
    raw.mkdir()
    fragment, problem = breaker(tmp_path / "src")
    assert_refused(run([*CLI, "convert", "msd_liver", str(tmp_path / "src" / "Task03_Liver"), "-o", str(raw)]),
                   fragment, problem)
    assert snapshot(raw) == {}


def test_convert_existing_dataset_needs_overwrite(tmp_path):
    src, raw = tmp_path / "src", tmp_path / "raw"
    make_drive_layout(src, np.random.default_rng(4), n_train=2, n_test=1)
    assert run([*CLI, "convert", "drive_av", str(src), "-o", str(raw)]).returncode == 0
    before = snapshot(raw)
    assert_refused(run([*CLI, "convert", "drive_av", str(src), "-o", str(raw)]), "Dataset711", "--overwrite")
    assert snapshot(raw) == before


# ---------------------------------------------------------------------------------------------------- evaluation
def _label_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def label_folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for case in ("a", "b"):
        lab = np.zeros((16, 16), np.uint8)
        lab[4:9, 4:9] = 1
        _label_png(ref / f"{case}.png", lab)
        _label_png(pred / f"{case}.png", lab)
    (ref / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}))
    return ref, pred


def test_evaluate_prediction_of_other_size(label_folders, tmp_path):
    ref, pred = label_folders
    _label_png(pred / "b.png", np.zeros((16, 12), np.uint8))
    out = tmp_path / "eval"
    assert_refused(run([*CLI, "evaluate", "-ref", str(ref), "-pred", str(pred), "-o", str(out)]), "b", "shape")
    assert not out.exists()


def test_evaluate_missing_prediction_folder(label_folders, tmp_path):
    ref, _ = label_folders
    out = tmp_path / "eval"
    assert_refused(run([*CLI, "evaluate", "-ref", str(ref), "-pred", str(tmp_path / "nope"), "-o", str(out)]),
                   "nope")
    assert not out.exists()


# -------------------------------------------------------------------------------------------- demo and trainers
def test_demo_unknown_trainer_and_phantom(tmp_path):
    work = tmp_path / "work"
    assert_refused(run([*CLI, "demo", "--trainer", "NoSuchTrainer", "--work-dir", str(work)]), "NoSuchTrainer",
                   "not found")
    proc = run([*CLI, "demo", "--phantom", "nope", "--work-dir", str(work)])
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
    assert not work.exists()


@pytest.mark.parametrize(("trainer", "missing"), [("AVFusionTrainer", "artery"), ("FreeTumorTrainer", "organ"),
                                                   ("WeakCycleTrainer", "ignore label")])
def test_trainer_on_a_data_set_without_the_classes_it_needs(fundus_preprocessed, tmp_path, trainer, missing):
    """Stock nnUNetv2_train refuses at start-up, names the data set and the missing classes, writes no fold folder
    (the fundus phantom has optic disc, vessel and lesion: no artery/vein, no organ for tumour synthesis, no weak
    labels)."""
    f = fundus_preprocessed
    results = tmp_path / "results"
    results.mkdir()
    env = results_env(f.env, results)
    proc = run([stock.find_command("nnUNetv2_train"), str(f.dataset_id), "2d", "0", "-tr", trainer,
                "-device", "cpu"], env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Dataset791_PhantomFundus" in out and missing in out, out[-2000:]
    assert snapshot(results) == {}


@pytest.mark.parametrize(("dataset", "extra_env", "fragments"), [
    ("tumour", {}, ["Dataset794_PhantomTumor has 1 foreground class(es)", "needs several organs"]),
    ("fundus", {"nnUNet_ext_focusnet_small_organs": "optic_nerve"},
     ["Dataset791_PhantomFundus", "nnUNet_ext_focusnet_small_organs=optic_nerve", "'optic_nerve' is not a foreground "
      "label"]),
])
def test_focusnet_without_small_organs(request, tmp_path, dataset, extra_env, fragments):
    """FocusNetV2Trainer on a data set with a single class, or with a small-organ override naming no class of it."""
    data = request.getfixturevalue(f"{dataset}_preprocessed")
    configuration = "2d"
    results = tmp_path / "results"
    results.mkdir()
    env = results_env(data.env, results, **extra_env)
    proc = run([stock.find_command("nnUNetv2_train"), str(data.dataset_id), configuration, "0", "-tr",
                "FocusNetV2Trainer", "-device", "cpu"], env=env)
    out = proc.stdout + proc.stderr
    # the stock launcher prints the traceback; the error's own line names the data set and the problem
    assert proc.returncode != 0 and all(f in out.strip().splitlines()[-1] for f in fragments), out[-2000:]
    assert snapshot(results) == {}
