import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.phantoms import PHANTOMS, ct3d, fundus2d
from nnunet_ext.phantoms.common import case_rng


def _arrays(folder, pattern):
    out = {}
    for f in sorted(folder.glob(pattern)):
        out[f.name] = (np.asarray(Image.open(f)) if f.suffix == ".png" else
                       sitk.GetArrayFromImage(sitk.ReadImage(str(f))))
    return out


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_same_seed_same_data_other_seed_other_data(name, tmp_path):
    module = PHANTOMS[name]
    kw = {"n_train": 2, "n_test": 1}
    a = module.generate(tmp_path / "a", seed=7, **kw)
    b = module.generate(tmp_path / "b", seed=7, **kw)
    c = module.generate(tmp_path / "c", seed=8, **kw)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        ea, eb, ec = (_arrays(d / sub, "*") for d in (a, b, c))
        assert ea.keys() == eb.keys() == ec.keys() and ea
        for k in ea:
            assert np.array_equal(ea[k], eb[k]), f"{name} {sub}/{k} differs for the same seed"
        assert any(not np.array_equal(ea[k], ec[k]) for k in ea), f"{name} {sub} identical for another seed"
    # a case does not depend on how many cases are generated
    more = module.generate(tmp_path / "more", seed=7, n_train=3, n_test=1)
    first = sorted((a / "labelsTr").iterdir())[0].name
    assert np.array_equal(_arrays(a / "labelsTr", first)[first], _arrays(more / "labelsTr", first)[first])


def test_fundus_phantom_layout_and_structures(tmp_path):
    d = fundus2d.generate(tmp_path, n_train=6, n_test=2, size=96, seed=0)
    dj = json.loads((d / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["file_ending"] == ".png"
    assert dj["labels"] == fundus2d.LABELS and dj["numTraining"] == 6
    images = sorted((d / "imagesTr").glob("*_0000.png"))
    assert len(images) == 6 and len(list((d / "imagesTs").iterdir())) == 2
    img = np.asarray(Image.open(images[0]))
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    counts = np.zeros(4, int)
    for f in (d / "labelsTr").glob("*.png"):
        lab = np.asarray(Image.open(f))
        assert lab.shape == (96, 96) and set(np.unique(lab)) <= {0, 1, 2, 3}
        counts += np.bincount(lab.ravel(), minlength=4)
    assert (counts[1:] > 0).all()
    # very different sizes: thin vessels outnumber lesion pixels, the disc is one compact blob per image
    assert counts[2] > counts[3] and counts[1] > 6 * 80


def test_fundus_lesion_is_darker_than_the_choroid():
    rgb, lab = fundus2d.make_case(case_rng(0, 2))
    if not (lab == 3).any():
        rgb, lab = fundus2d.make_case(case_rng(0, 3))
    fov_bg = (lab == 0) & (rgb.sum(-1) > 0)
    assert rgb[lab == 3].mean() < 0.8 * rgb[fov_bg].mean()
    assert rgb[lab == 1].mean() > rgb[fov_bg].mean()  # bright optic disc


def test_ct_phantom_geometry_intensities_and_size_range(tmp_path):
    d = ct3d.generate(tmp_path, n_train=2, n_test=1, seed=0)
    dj = json.loads((d / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"} and dj["file_ending"] == ".nii.gz"
    img = sitk.ReadImage(str(next((d / "imagesTr").glob("*_0000.nii.gz"))))
    lab = sitk.ReadImage(str(next((d / "labelsTr").glob("*.nii.gz"))))
    assert img.GetSpacing() == pytest.approx(tuple(reversed(ct3d.SPACING_ZYX)))
    assert lab.GetSpacing() == img.GetSpacing() and lab.GetOrigin() == img.GetOrigin()
    hu, seg = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
    assert seg.shape == ct3d.SHAPE_ZYX and set(np.unique(seg)) == {0, 1, 2, 3}
    assert hu.min() < -900 and 300 < hu.max() < 600  # air and bone present, in Hounsfield units
    volumes = np.bincount(seg.ravel(), minlength=4)[1:] * np.prod(ct3d.SPACING_ZYX)
    assert volumes[0] > 5 * volumes[1] > 50 * volumes[2] > 0  # liver >> kidneys >> adrenals
    assert hu[seg == 2].mean() > hu[seg == 1].mean() > hu[seg == 0][hu[seg == 0] > -500].mean()


def test_generate_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    fundus2d.generate(tmp_path, n_train=1, n_test=0)
    with pytest.raises(FileExistsError, match="already exists"):
        fundus2d.generate(tmp_path, n_train=1, n_test=0)
    fundus2d.generate(tmp_path, n_train=2, n_test=0, overwrite=True)
    assert len(list((tmp_path / "Dataset791_PhantomFundus" / "imagesTr").iterdir())) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset791_PhantomFundus"]  # no temporary folders left
