"""The rest of nnU-Net's workflow with our trainers, on the cpu preset: cross-validation folds with --npz ->
nnUNetv2_find_best_configuration -> nnUNetv2_predict -> nnUNetv2_ensemble of two trainers ->
nnUNetv2_apply_postprocessing; and sharing a model: nnUNetv2_export_model_to_zip -> nnUNetv2_install_pretrained_
model_from_zip into an empty nnUNet_results -> the same prediction.

One with auxiliary modules and buffers (FocusNetV2, narrow, 5 epochs x 2 iterations: every phase once) and one simple
(AVFusionTrainer_debug), on a 48x48 A/V phantom planned with `nnunet_ext plan --preset cpu`. Budgets are the
smallest that run every stage: the test checks the plumbing and the outputs' consistency, not Dice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import results_env
from PIL import Image

from nnunet_ext import stock
from nnunet_ext.phantoms import av2d

pytestmark = pytest.mark.slow

TRAINERS = ("FocusNetV2Trainer_tiny", "AVFusionTrainer_debug")
FOLDS = ("0", "1")


def _cmd(name: str, *args, env: dict) -> str:
    return stock.run([stock.find_command(name), *[str(a) for a in args]], env)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _predict(env: dict, images: Path, out: Path, trainer: str, plans: str, probabilities: bool = False) -> None:
    args = ["-i", images, "-o", out, "-d", av2d.DEFAULT_ID, "-c", "2d", "-tr", trainer, "-p", plans, "-f", *FOLDS,
            "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"]
    _cmd("nnUNetv2_predict", *args, *(["--save_probabilities"] if probabilities else []), env=env)


def test_folds_best_configuration_ensemble_postprocessing_and_shared_model(tmp_path):
    env = results_env(stock.work_environment(tmp_path / "nnunet", "cpu"), tmp_path / "nnunet" / "results")
    raw = av2d.generate(Path(env["nnUNet_raw"]), n_train=10, n_test=2, size=48, seed=3)
    plans = stock.plan(av2d.DEFAULT_ID, "cpu", env, ["2d"])
    assert plans == "nnUNetPlans_cpu"
    for trainer in TRAINERS:
        for fold in FOLDS:
            stock.train(av2d.DEFAULT_ID, "2d", fold, trainer, env, extra=["-p", plans, "--npz"])

    _cmd("nnUNetv2_find_best_configuration", av2d.DEFAULT_ID, "-c", "2d", "-tr", *TRAINERS, "-p", plans,
         "-f", *FOLDS, "-np", "1", env=env)
    results = Path(env["nnUNet_results"]) / raw.name
    info = json.loads((results / "inference_information.json").read_text())
    chosen = info["best_model_or_ensemble"]["selected_model_or_models"]
    assert {m["trainer"] for m in chosen} <= set(TRAINERS) and all(m["plans_identifier"] == plans for m in chosen)
    # each model's cross-validation (folds 0 and 1) was evaluated, and the two-trainer ensemble too
    assert len(info["all_results"]) == 3 and sum(k.startswith("ensemble___") for k in info["all_results"]) == 1

    images = raw / "imagesTs"
    predictions = {t: tmp_path / f"pred_{t}" for t in TRAINERS}
    for trainer, out in predictions.items():
        _predict(env, images, out, trainer, plans, probabilities=True)
    ensemble = tmp_path / "ensemble"
    _cmd("nnUNetv2_ensemble", "-i", *predictions.values(), "-o", ensemble, "-np", "1", "--save_npz", env=env)
    # the ensemble is the argmax of the two trainers' mean class probabilities
    for name, labels in _labels(ensemble).items():
        case = name[:-len(".png")]
        mean = sum(np.load(out / f"{case}.npz")["probabilities"] for out in predictions.values()) / 2
        assert np.array_equal(labels, mean.argmax(0)[0]), case

    # the chosen model (or the ensemble) with the postprocessing find_best_configuration determined for it
    best = info["best_model_or_ensemble"]
    chosen_prediction = ensemble if len(chosen) == 2 else predictions[chosen[0]["trainer"]]
    postprocessed = tmp_path / "postprocessed"
    _cmd("nnUNetv2_apply_postprocessing", "-i", chosen_prediction, "-o", postprocessed, "-pp_pkl_file",
         best["postprocessing_file"], "-np", "1", "-plans_json", best["some_plans_file"],
         "-dataset_json", Path(best["some_plans_file"]).parent / "dataset.json", env=env)
    before, after = _labels(chosen_prediction), _labels(postprocessed)
    assert sorted(after) == sorted(before) == sorted(p.name.replace("_0000", "") for p in images.glob("*.png"))
    for name in before:
        # postprocessing only removes components (sets pixels to background), never adds labels
        changed = after[name] != before[name]
        assert np.all(after[name][changed] == 0), name

    # sharing the FocusNetV2 model (aux modules and buffers in its checkpoints) through a zip
    model_zip = tmp_path / "model.zip"
    _cmd("nnUNetv2_export_model_to_zip", "-d", av2d.DEFAULT_ID, "-o", model_zip, "-c", "2d", "-tr", TRAINERS[0],
         "-p", plans, "-f", *FOLDS, env=env)
    fresh = dict(env, nnUNet_results=str(tmp_path / "fresh_results"))
    Path(fresh["nnUNet_results"]).mkdir()
    _cmd("nnUNetv2_install_pretrained_model_from_zip", model_zip, env=fresh)
    reinstalled = tmp_path / "pred_installed"
    _predict(fresh, images, reinstalled, TRAINERS[0], plans)
    original, again = _labels(predictions[TRAINERS[0]]), _labels(reinstalled)
    assert sorted(again) == sorted(original)
    for name in original:
        assert np.array_equal(again[name], original[name]), name
