"""The stock nnUNetv2_train and nnUNetv2_predict find our trainers by name through nnUNet_extTrainer."""

import numpy as np
import pytest
from PIL import Image

from nnunet_ext import stock
from nnunet_ext.paths import TRAINERS_DIR


def test_stock_train_and_predict_find_our_trainer(stock_prediction_2d):
    p = stock_prediction_2d
    expected = f"Using trainer 'nnUNetTrainer_debug' from: {TRAINERS_DIR}"
    assert expected in p.train_log
    assert expected in p.predict_log
    fold = p.results_dir / p.raw_dir.name / "nnUNetTrainer_debug__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert not list(fold.glob("*.tmp*"))  # atomic checkpoint writes leave no temporary files
    for label in p.labels_dir.glob("*.png"):
        pred = np.asarray(Image.open(p.pred_dir / label.name))
        assert pred.shape == np.asarray(Image.open(label)).shape
        assert set(np.unique(pred)) <= {0, 1, 2, 3}
        probabilities = np.load(p.pred_dir / label.name.replace(".png", ".npz"))["probabilities"]
        assert probabilities.shape[0] == 4 and np.allclose(probabilities.sum(0), 1, atol=1e-3)


def test_unknown_trainer_and_missing_search_path_fail_clearly(fundus_preprocessed, tmp_path):
    f = fundus_preprocessed
    env = dict(f.env, nnUNet_results=str(tmp_path))
    with pytest.raises(stock.StockCommandError, match="Could not find requested nnunet trainer NoSuchTrainer"):
        stock.train(f.dataset_id, "2d", 0, "NoSuchTrainer", env)
    # without nnUNet_extTrainer nnU-Net cannot see our trainers: the variable is what plugs them in
    del env["nnUNet_extTrainer"]
    with pytest.raises(stock.StockCommandError, match="Could not find requested nnunet trainer nnUNetTrainer_debug"):
        stock.train(f.dataset_id, "2d", 0, "nnUNetTrainer_debug", env)
