"""`nnunet_ext evaluate` and `nnunet_ext compare` from the command line: on a hand-made folder, and on the output of
the stock pipeline (nnUNetv2_predict --save_probabilities)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_evaluation_folder import _assert_real_png, png_folders  # noqa: F401  (fixture reused)

from nnunet_ext.cli import main

REPORT_FILES = ("per_case.csv", "summary.json", "summary.md", "boxplots.png", "overlay_best.png",
                "overlay_median.png", "overlay_worst.png")


def test_cli_evaluate_and_compare_in_process(png_folders, tmp_path, capsys):  # noqa: F811
    raw, labels_dir, images_dir, pred_dir, fov_dir = png_folders
    out = tmp_path / "eval"
    rc = main(["evaluate", "-ref", str(labels_dir), "-pred", str(pred_dir), "-o", str(out), "-djfile",
               str(raw / "dataset.json"), "--images", str(images_dir), "--lesions", "1", "2", "--av", "--fov",
               str(fov_dir), "--regions", "1,2,3", "--size-bins", "0", "50", "inf", "--empty-distance", "nan"])
    assert rc == 0
    assert "| artery" in capsys.readouterr().out
    for name in REPORT_FILES + ("av_per_case.csv", "lesions.csv", "detection_by_size.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["detection"]) == ["artery", "vein"]
    assert list(summary["detection"]["vein"]["by_size"]) == ["[0,50)", "[50,inf)"]
    frame = pd.read_csv(out / "per_case.csv")
    # --empty-distance nan: the missed one-pixel class has no HD95 instead of the diagonal
    assert frame.loc[(frame["case"] == "toy_002") & (frame["class"] == "uncertain"), "hd95"].isna().all()

    assert main(["evaluate", "-ref", str(tmp_path / "nowhere"), "-pred", str(pred_dir), "-djfile",
                 str(raw / "dataset.json")]) == 2
    assert "nowhere: reference folder not found" in capsys.readouterr().err

    rc = main(["compare", str(out), str(out), "-o", str(tmp_path / "cmp"), "--names", "a", "b", "--metrics", "dice"])
    assert rc == 0
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    # a result compared with itself: all differences zero, p = 1 rather than a scipy error
    assert comparison["comparisons"]["b - a"]["artery"]["dice"]["p_value"] == 1.0


@pytest.mark.slow
def test_cli_on_stock_nnunet_prediction(stock_prediction_2d, tmp_path):
    stock_prediction = stock_prediction_2d
    pred_dir = stock_prediction.pred_dir
    npz = sorted(pred_dir.glob("*.npz"))
    assert npz, "the stock prediction was expected with --save_probabilities"
    # the layout this module relies on: (C, 1, H, W) for 2D images, C = number of labels
    probabilities = np.load(npz[0])["probabilities"]
    reference = np.asarray(Image.open(stock_prediction.labels_dir / npz[0].name.replace(".npz", ".png")))
    assert probabilities.shape[1:] == (1, *reference.shape[:2])

    out = tmp_path / "eval"
    command = [sys.executable, "-m", "nnunet_ext.cli", "evaluate", "-ref", str(stock_prediction.labels_dir), "-pred",
               str(pred_dir), "-o", str(out), "--images", str(stock_prediction.images_dir), "--lesions", "1",
               "--av"]
    done = subprocess.run(command, env=stock_prediction.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in REPORT_FILES + ("av_per_case.csv", "lesions.csv", "detection_by_size.png"):
        assert (out / name).is_file(), name
    for name in ("boxplots", "overlay_best", "overlay_median", "overlay_worst", "detection_by_size"):
        _assert_real_png(out / f"{name}.png")
    frame = pd.read_csv(out / "per_case.csv")
    n_cases = len(list(stock_prediction.labels_dir.glob("*.png")))
    assert frame["case"].nunique() == n_cases and frame["dice"].between(0, 1).all()
    assert frame["auc_roc"].notna().any() and frame["mse"].between(0, 1).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == n_cases and summary["av_protocol"]["weighted"]["auc_roc"]["n"] >= 1

    compared = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "nnunet_ext.cli", "compare", str(out), str(out), "--names", "stock",
                           "again", "-o", str(compared)], env=stock_prediction.env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_real_png(compared / "comparison_dice.png")


def test_cli_nsd_method_surface(png_folders, tmp_path, capsys):  # noqa: F811
    """--nsd-method surface reaches the metric: the area-weighted NSD of each row, the other metrics unchanged."""
    from nnunet_ext.evaluation.metrics import surface_metrics

    raw, labels_dir, _, pred_dir, _ = png_folders
    frames = {}
    for method in ("voxel", "surface"):
        out = tmp_path / method
        assert main(["evaluate", "-ref", str(labels_dir), "-pred", str(pred_dir), "-o", str(out), "--no-plots",
                     "--nsd-method", method, "--nsd-tolerance", "0.5", "--classes", "1", "2"]) == 0
        assert json.loads((out / "summary.json").read_text())["settings"]["nsd_method"] == method
        frames[method] = pd.read_csv(out / "per_case.csv").set_index(["case", "class"])
    reference = np.asarray(Image.open(labels_dir / "toy_002.png"))
    prediction = np.asarray(Image.open(pred_dir / "toy_002.png"))
    expected = surface_metrics(reference == 2, prediction == 2, (1.0, 1.0), 0.5, nsd_method="surface")["nsd"]
    assert frames["surface"].loc[("toy_002", "vein"), "nsd"] == pytest.approx(expected)
    assert frames["surface"].loc[("toy_002", "vein"), "nsd"] != frames["voxel"].loc[("toy_002", "vein"), "nsd"]
    assert (frames["surface"]["hd95"] == frames["voxel"]["hd95"]).all()
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "-ref", "r", "-pred", "p", "--nsd-method", "area"])
    assert exited.value.code == 2 and "invalid choice: 'area'" in capsys.readouterr().err
