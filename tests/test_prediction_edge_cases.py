"""Stock nnUNetv2_predict on inputs unlike the training patches: much larger than the patch, and with no foreground.
(The 4304x4306 fundus photograph is predicted in the FTSegNet benchmark; a single-slice 3D case in the 3D trainer
tests.)"""

import numpy as np
from PIL import Image

from nnunet_ext import stock
from nnunet_ext.evaluation.evaluate import evaluate_folder
from nnunet_ext.phantoms import fundus2d


def test_large_and_empty_images_through_stock_predict(stock_prediction_2d, tmp_path):
    s = stock_prediction_2d
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "pred"
    images.mkdir()
    labels.mkdir()
    rgb, label = fundus2d.make_case(np.random.default_rng(5), size=320)  # 5x the 64x64 training patch
    Image.fromarray(rgb).save(images / "large_0000.png")
    Image.fromarray(label).save(labels / "large.png")
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(images / "empty_0000.png")  # nothing but background
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(labels / "empty.png")
    stock.predict(images, out, s.dataset_id, "2d", "nnUNetTrainer_debug", s.env)

    large = np.asarray(Image.open(out / "large.png"))
    empty = np.asarray(Image.open(out / "empty.png"))
    assert large.shape == (320, 320) and empty.shape == (64, 80)
    for prediction in (large, empty):
        assert set(np.unique(prediction)) <= set(fundus2d.LABELS.values())
    # (how empty the black image comes out depends on training: a 2x5-iteration model still marks ~10% of it)

    metrics = evaluate_folder(labels, out, tmp_path / "evaluation", dataset_json=s.raw_dir / "dataset.json",
                              plots=False, progress=False)
    assert metrics["n_cases"] == 2  # an empty reference is evaluated, not a crash
