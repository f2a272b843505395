import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnunet_ext import stock
from nnunet_ext.phantoms import abdomen3d, av2d, fundus2d, hn3d, tumor2d, weak2d

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TEST_TRAINERS = Path(__file__).resolve().parent / "ext_trainers"
# the test trainers import their helpers (kill_switch) as top-level modules, as nnU-Net's trainer search imports them
# from nnUNet_extTrainer: importable in process too, whichever test module runs first or alone
if str(TEST_TRAINERS) not in sys.path:
    sys.path.insert(0, str(TEST_TRAINERS))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples beside the checkout (../shared/data). Required in CI, optional elsewhere."""
    if not SHARED_DATA.is_dir():
        message = f"real data samples not found at {SHARED_DATA}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: they must be there)")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def nnunet_env(tmp_path) -> dict:
    """A process environment whose nnUNet_raw/preprocessed/results live in this test's tmp_path, CPU settings."""
    return stock.work_environment(tmp_path / "nnunet", device="cpu")


def _preprocessed(tmp_path_factory, folder: str, phantom, configuration: str, **generate) -> SimpleNamespace:
    """A phantom generated into its own nnUNet_raw and run through the stock plan_and_preprocess."""
    root = tmp_path_factory.mktemp(folder)
    env = stock.work_environment(root / "nnunet", device="cpu")
    raw = phantom.generate(Path(env["nnUNet_raw"]), **generate)
    stock.plan_and_preprocess(phantom.DEFAULT_ID, configuration, env)
    return SimpleNamespace(dataset_id=phantom.DEFAULT_ID, raw_dir=raw, env=env, root=root, configuration=configuration,
                           preprocessed=Path(env["nnUNet_preprocessed"]) / raw.name)


@pytest.fixture(scope="session")
def fundus_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """A small fundus phantom (64x64, 8 training and 2 test cases) through the stock plan_and_preprocess (2d).

    Tests that train on it get their own nnUNet_results through `results_env` so they never see each other's runs.
    """
    return _preprocessed(tmp_path_factory, "fundus", fundus2d, "2d", n_train=8, n_test=2, size=64, seed=1)


@pytest.fixture(scope="session")
def av_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """The A/V phantom (64x64, 8 training and 2 test cases) through the stock plan_and_preprocess (2d)."""
    return _preprocessed(tmp_path_factory, "av", av2d, "2d", n_train=8, n_test=2, size=64, seed=1)


@pytest.fixture(scope="session")
def hn_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """The head-and-neck phantom (8 training cases, 1 test case) through the stock plan_and_preprocess (3d_fullres)."""
    return _preprocessed(tmp_path_factory, "hn", hn3d, "3d_fullres", n_train=8, n_test=1, seed=1)


@pytest.fixture(scope="session")
def tumour_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """The tumour phantom (64x64, 8 training and 2 test cases) through the stock plan_and_preprocess (2d)."""
    return _preprocessed(tmp_path_factory, "tumour", tumor2d, "2d", n_train=8, n_test=2, size=64, seed=1)


@pytest.fixture(scope="session")
def weak_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """The weak phantom (32x32: 4 disease + 4 normal training cases, 2 fully labelled validation cases, 2 test
    cases) through the stock plan_and_preprocess (2d)."""
    return _preprocessed(tmp_path_factory, "weak", weak2d, "2d", n_train=8, n_test=2, n_val=2, size=32, seed=1)


@pytest.fixture(scope="session")
def weak_distractor_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """The weak phantom's distractors variant (32x32: 8 disease + 8 normal training cases, 2 validation cases),
    where bright ridges and dark spots in every image defeat an intensity prior, through the stock planning."""
    root = tmp_path_factory.mktemp("weak_distractors")
    env = stock.work_environment(root / "nnunet", device="cpu")
    raw = weak2d.generate(Path(env["nnUNet_raw"]), n_train=16, n_test=2, n_val=2, size=32, seed=2, distractors=True)
    stock.plan_and_preprocess(weak2d.DISTRACTOR_ID, "2d", env)
    return SimpleNamespace(dataset_id=weak2d.DISTRACTOR_ID, raw_dir=raw, env=env, root=root, configuration="2d",
                           preprocessed=Path(env["nnUNet_preprocessed"]) / raw.name)


@pytest.fixture(scope="session")
def abdomen_preprocessed(tmp_path_factory) -> SimpleNamespace:
    """abdomen3d (16x48x48, 8 training cases, 2 with tumours; 2 test cases) through the stock planning."""
    return _preprocessed(tmp_path_factory, "freetumor", abdomen3d, "3d_fullres", n_train=8, n_test=2,
                         shape=(16, 48, 48), seed=0)


def build_trainer(cls, pre: SimpleNamespace, tmp_path: Path, monkeypatch, configuration: str | None = None,
                  fold: int = 0, *, plans: dict | None = None, dataset_json: dict | None = None, **env: str):
    """An un-initialized `cls` on a preprocessed phantom fixture, built in process on the CPU as nnUNetv2_train builds
    it (plans with continue_training False, as without --c).

    The environment (through monkeypatch, so undone after the test): nnUNet_raw and nnUNet_preprocessed of the
    fixture, a private nnUNet_results = tmp_path/results (a test sees only its own runs), single-process data
    augmentation, then **env (nnUNet_ext_seed="0", ...). nnunetv2 2.8 reads these variables when it uses them
    (nnunetv2.paths holds lazy _EnvPath objects), so no module attribute needs patching. configuration: the fixture's
    own by default; plans / dataset_json: modified copies to use instead of the fixture's files."""
    import torch

    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(k, pre.env[k])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    if plans is None:
        plans = json.loads((pre.preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    if dataset_json is None:
        dataset_json = json.loads((pre.preprocessed / "dataset.json").read_text())
    return cls(plans, configuration or pre.configuration, fold, dataset_json, torch.device("cpu"))


def results_env(base: dict, results: Path, **extra: str) -> dict:
    """base with its own nnUNet_results, single-process data augmentation, the test trainers findable."""
    env = dict(base, nnUNet_results=str(results), nnUNet_n_proc_DA="0", **extra)
    env["nnUNet_extTrainer"] = os.pathsep.join([base["nnUNet_extTrainer"], str(TEST_TRAINERS)])
    return env


@pytest.fixture(scope="session")
def stock_prediction_2d(fundus_preprocessed) -> SimpleNamespace:
    """Stock nnUNetv2_train with our nnUNetTrainer_debug (fold 0), then stock nnUNetv2_predict --save_probabilities
    on the held-out images: a real nnU-Net prediction folder for evaluation tests."""
    f = fundus_preprocessed
    env = results_env(f.env, f.root / "results_stock_prediction")
    train_log = stock.train(f.dataset_id, "2d", 0, "nnUNetTrainer_debug", env)
    pred_dir = f.root / "predictions_debug"
    predict_log = stock.predict(f.raw_dir / "imagesTs", pred_dir, f.dataset_id, "2d", "nnUNetTrainer_debug", env,
                                save_probabilities=True)
    return SimpleNamespace(dataset_id=f.dataset_id, raw_dir=f.raw_dir, images_dir=f.raw_dir / "imagesTs",
                           labels_dir=f.raw_dir / "labelsTs", pred_dir=pred_dir, env=env,
                           results_dir=Path(env["nnUNet_results"]), train_log=train_log, predict_log=predict_log)
