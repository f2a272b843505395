"""Bad input through the user-facing commands: each case must exit non-zero with a message on stderr that names the
file or setting and the problem, and leave the output folders exactly as they were (nothing half-written).

Converter internals are checked in the test_conversion_* modules; here every case goes through the command line a
user types (`nnunet_ext ...`, `nnUNetv2_train ...`): as a separate process, or, for the many `evaluate` and `convert`
cases that only differ in their input files, through `nnunet_ext.cli.main` in this process (the console script's
entry point; a new interpreter per case would cost seconds each), with one case of each run as a process too.
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
from nnunet_ext.cli import main as cli_main

CLI = [sys.executable, "-m", "nnunet_ext.cli"]


def snapshot(folder: Path) -> dict | None:
    """Every file under folder with its size and modification time: equal snapshots mean nothing was touched."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def run_in_process(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """`nnunet_ext ARGV` through the console script's entry point in this process; an exception escaping it (what
    a user would see as a traceback) fails the test."""
    capsys.readouterr()
    code = cli_main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["nnunet_ext", *argv], code, captured.out, captured.err)


def assert_refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        # user errors go to stderr, where scripts and CI logs look for them
        assert fragment in proc.stderr, f"{fragment!r} not in stderr:\n{proc.stderr[-2000:]}"


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


def test_convert_output_is_a_file(tmp_path, capsys):
    src, raw = tmp_path / "src", tmp_path / "raw.txt"
    make_drive_layout(src, np.random.default_rng(5), n_train=1, n_test=0)
    raw.write_text("not a folder")
    before = snapshot(tmp_path)
    proc = run_in_process(["convert", "drive_av", str(src), "-o", str(raw)], capsys)
    assert_refused(proc, f"{raw}: not a folder", "-o")
    assert proc.returncode == 1 and proc.stdout == "" and snapshot(tmp_path) == before
    # a folder below that file cannot be made either: the file system's error, as a message
    proc = run_in_process(["convert", "drive_av", str(src), "-o", str(raw / "sub")], capsys)
    assert_refused(proc, str(raw / "sub"), "Not a directory")
    assert snapshot(tmp_path) == before
    # the same as a separate process: exit code and stderr as the shell sees them
    proc = run([*CLI, "convert", "drive_av", str(src), "-o", str(raw)])
    assert_refused(proc, f"{raw}: not a folder")
    assert proc.returncode == 1 and proc.stdout == "" and snapshot(tmp_path) == before


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


# ---------------------------------------------------------------------------------- evaluation: broken predictions
SPACING_XYZ = (0.8, 0.8, 2.5)
NIFTI_LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _write_nifti(path: Path, arr: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0),
                 direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)) -> None:
    image = sitk.GetImageFromArray(arr.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)


def _liver(shift: int = 0) -> np.ndarray:
    arr = np.zeros((12, 40, 40), np.uint8)
    arr[2:10, 8 + shift:32 + shift, 6:30] = 1
    # a ragged tumour: the file compresses less, so that cutting it in half cuts the voxels, not the header
    arr[4:7, 14:20, 12:18] = np.random.default_rng(shift).choice([1, 2], (3, 6, 6))
    return arr


@pytest.fixture
def nifti_folders(tmp_path):
    """A raw data set's labelsTs (two 3D cases) and a prediction folder as nnUNetv2_predict leaves it (with
    dataset.json); -o goes to tmp_path/eval."""
    raw, pred = tmp_path / "Dataset900_Liver", tmp_path / "pred"
    (raw / "labelsTs").mkdir(parents=True)
    pred.mkdir()
    for name, shift in (("case_0", 0), ("case_1", 2)):
        _write_nifti(raw / "labelsTs" / f"{name}.nii.gz", _liver())
        _write_nifti(pred / f"{name}.nii.gz", _liver(shift))
    dataset = {"channel_names": {"0": "CT"}, "labels": NIFTI_LABELS, "numTraining": 0, "file_ending": ".nii.gz"}
    for folder in (raw, pred):
        (folder / "dataset.json").write_text(json.dumps(dataset))
    return raw / "labelsTs", pred, tmp_path / "eval"


def _truncated(ref: Path, pred: Path):
    # SimpleITK reads this file without complaint, the missing slices as zeros
    path = pred / "case_1.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [], ["case_1.nii.gz: truncated or corrupt file", "Compressed file ended before the end-of-stream"]


def _truncated_header(ref: Path, pred: Path):
    path = pred / "case_1.nii.gz"
    path.write_bytes(path.read_bytes()[:30])
    return [], ["case_1.nii.gz: truncated or corrupt file: no readable NIfTI header"]


def _corrupt_gzip(ref: Path, pred: Path):
    path = pred / "case_0.nii.gz"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the gzip trailer's checksum: the voxels decompress, but not to what was written
    path.write_bytes(bytes(data))
    return [], ["case_0.nii.gz: truncated or corrupt file", "CRC check failed"]


def _missing_prediction(ref: Path, pred: Path):
    (pred / "case_1.nii.gz").unlink()
    return [], [f"{pred}: no prediction for 1 of 2 reference cases in {ref}: case_1", "--allow-missing"]


def _undeclared_labels(ref: Path, pred: Path):
    arr = _liver()
    arr[0, 0, :3] = (7, 9, 9)
    _write_nifti(pred / "case_0.nii.gz", arr)
    return [], ["case_0.nii.gz: label values [7, 9] are not in", "dataset.json (labels [0, 1, 2])"]


def _other_spacing(ref: Path, pred: Path):
    _write_nifti(pred / "case_1.nii.gz", _liver(2), spacing=(0.8, 0.8, 5.0))
    # nnU-Net's axis order (z, y, x)
    return [], ["case_1.nii.gz: spacing (5.0, 0.8, 0.8) differs from the reference's (2.5, 0.8, 0.8)",
                "--ignore-geometry"]


def _other_origin(ref: Path, pred: Path):
    _write_nifti(pred / "case_0.nii.gz", _liver(), origin=(0.0, 0.0, 10.0))
    return [], ["case_0.nii.gz: origin (0.0, 0.0, 10.0) differs from the reference's (0.0, 0.0, 0.0)"]


def _other_direction(ref: Path, pred: Path):
    _write_nifti(pred / "case_0.nii.gz", _liver(), direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    return [], ["case_0.nii.gz: direction (-1.0, 0.0, 0.0", "differs from the reference's (1.0, 0.0, 0.0"]


def _too_few_channels(ref: Path, pred: Path):
    # dataset.json declares background, liver, tumour: 3 channels; this file has 2
    np.savez_compressed(pred / "case_0.npz", probabilities=np.full((2, 12, 40, 40), 0.5, np.float32))
    return [], ["case_0.npz: 2 probability channels", "dataset.json needs 3"]


def _pred_typo(ref: Path, pred: Path):
    return ["-pred", str(pred) + "_typo"], [f"{pred}_typo: prediction folder not found"]


def _ref_typo(ref: Path, pred: Path):
    return ["-ref", str(ref) + "_typo"], [f"{ref}_typo: reference folder not found"]


def _bad_dataset_json(ref: Path, pred: Path):
    (pred / "dataset.json").write_text('{"labels": {"background": 0, "liver": 1},')
    return [], [f"{pred / 'dataset.json'}: not valid JSON"]


def _output_is_a_file(ref: Path, pred: Path):
    out = pred.parent / "eval"
    out.write_text("my notes")
    return [], [f"{out}: exists and is not a folder"]


@pytest.mark.parametrize("breaker", [_truncated, _truncated_header, _corrupt_gzip, _missing_prediction,
                                     _undeclared_labels, _other_spacing, _other_origin, _other_direction,
                                     _too_few_channels, _pred_typo, _ref_typo, _bad_dataset_json, _output_is_a_file])
def test_evaluate_refuses_broken_predictions(nifti_folders, capsys, breaker):
    ref, pred, out = nifti_folders
    overrides, fragments = breaker(ref, pred)
    before = snapshot(pred.parent)
    argv = ["evaluate", "-ref", str(ref), "-pred", str(pred), "-o", str(out)]
    for i in range(0, len(overrides), 2):
        argv[argv.index(overrides[i]) + 1] = overrides[i + 1]
    proc = run_in_process(argv, capsys)
    assert_refused(proc, *fragments)
    assert proc.returncode == 2 and proc.stdout == ""
    assert snapshot(pred.parent) == before  # no output folder, no staging folder, nothing changed


def test_evaluate_truncated_prediction_as_a_process(nifti_folders):
    ref, pred, out = nifti_folders
    _truncated(ref, pred)
    before = snapshot(pred.parent)
    proc = run([*CLI, "evaluate", "-ref", str(ref), "-pred", str(pred), "-o", str(out)])
    assert_refused(proc, "case_1.nii.gz: truncated or corrupt file")
    assert proc.returncode == 2 and "Dice" not in proc.stdout and snapshot(pred.parent) == before


def test_evaluate_flags_score_what_the_defaults_refuse(nifti_folders, capsys):
    """--allow-missing scores the cases that have a prediction and names the others in the report;
    --ignore-geometry scores a prediction on another spacing with the reference's."""
    ref, pred, out = nifti_folders
    _missing_prediction(ref, pred)
    _other_origin(ref, pred)
    proc = run_in_process(["evaluate", "-ref", str(ref), "-pred", str(pred), "-o", str(out), "--allow-missing",
                           "--ignore-geometry", "--no-plots"], capsys)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["missing_predictions"] == ["case_1"]
    assert summary["settings"]["allow_missing"] is True and summary["settings"]["ignore_geometry"] is True
    # case_0 is the reference itself, moved 10 mm by its origin only: voxel for voxel a perfect match
    assert summary["per_class"]["liver"]["dice"]["mean"] == 1.0
    assert "1 reference cases have no prediction" in (out / "summary.md").read_text()


def test_evaluate_zero_byte_png_prediction(label_folders, tmp_path, capsys):
    ref, pred = label_folders
    (pred / "b.png").write_bytes(b"")
    out = tmp_path / "eval"
    before = snapshot(tmp_path)
    proc = run_in_process(["evaluate", "-ref", str(ref), "-pred", str(pred), "-o", str(out)], capsys)
    assert_refused(proc, f"{pred / 'b.png'}: unreadable or corrupt")
    assert proc.returncode == 2 and snapshot(tmp_path) == before
