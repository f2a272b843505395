"""Metrics against values worked out by hand on small arrays, and AUC against scikit-learn."""

import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from nnunet_ext.evaluation.av_protocol import av_protocol_case, summarise_av
from nnunet_ext.evaluation.detection import lesion_detection, pool_detection
from nnunet_ext.evaluation.metrics import (
    auc_pr,
    auc_roc,
    image_diagonal,
    overlap_metrics,
    probability_metrics,
    region_mask,
    squeeze_spatial,
    surface_metrics,
    window_measures,
)


def test_overlap_hand_computed():
    ref = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    pred = np.array([0, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    m = overlap_metrics(ref, pred)
    # tp 2, fp 1, fn 1, tn 4
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(6 / 8)


def test_overlap_ignore_and_regions():
    seg_ref = np.array([0, 1, 2, 2, 3, 9])
    seg_pred = np.array([0, 1, 1, 2, 0, 2])
    ignore = seg_ref == 9
    m = overlap_metrics(region_mask(seg_ref, (1, 2)), region_mask(seg_pred, (1, 2)), ignore)
    # region {1,2}: ref at 1,2,3; pred at 1,2,3 (index 5 is ignored)
    assert m["dice"] == 1.0 and m["fp"] == 0 and m["tn"] == 2
    m = overlap_metrics(region_mask(seg_ref, 2), region_mask(seg_pred, 2), ignore)
    assert m["dice"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


def test_empty_conventions():
    empty = np.zeros((4, 5), dtype=bool)
    one = empty.copy()
    one[1, 1] = True
    m = overlap_metrics(empty, empty)
    assert m["dice"] == m["iou"] == m["sensitivity"] == m["precision"] == 1.0
    assert surface_metrics(empty, empty, (1.0, 1.0)) == {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}

    missed = overlap_metrics(one, empty)
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0 and math.isnan(missed["precision"])
    hallucinated = overlap_metrics(empty, one)
    assert hallucinated["dice"] == 0.0 and hallucinated["precision"] == 0.0
    assert math.isnan(hallucinated["sensitivity"])

    diagonal = math.hypot(3 * 2.0, 4 * 0.5)
    assert image_diagonal((4, 5), (2.0, 0.5)) == pytest.approx(diagonal)
    for ref, pred in ((one, empty), (empty, one)):
        s = surface_metrics(ref, pred, (2.0, 0.5))
        assert s["hd95"] == pytest.approx(diagonal) and s["assd"] == pytest.approx(diagonal) and s["nsd"] == 0.0
        s = surface_metrics(ref, pred, (2.0, 0.5), empty_distance=float("nan"))
        assert math.isnan(s["hd95"]) and s["nsd"] == 0.0


def test_single_voxel_objects_anisotropic():
    ref = np.zeros((5, 8), dtype=bool)
    pred = ref.copy()
    ref[2, 2] = True
    pred[2, 5] = True
    # three columns apart at 0.5 mm
    s = surface_metrics(ref, pred, (2.0, 0.5), nsd_tolerance_mm=1.0)
    assert s["hd95"] == pytest.approx(1.5) and s["assd"] == pytest.approx(1.5) and s["nsd"] == 0.0
    assert surface_metrics(ref, pred, (2.0, 0.5), nsd_tolerance_mm=1.5)["nsd"] == 1.0
    pred[:] = False
    pred[4, 2] = True
    # two rows apart at 2 mm
    assert surface_metrics(ref, pred, (2.0, 0.5))["hd95"] == pytest.approx(4.0)

    # a single voxel in the corner of a 3D image, found exactly
    ref3 = np.zeros((3, 3, 3), dtype=bool)
    ref3[0, 0, 0] = True
    s = surface_metrics(ref3, ref3.copy(), (3.0, 1.0, 1.0))
    assert s == {"hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    assert overlap_metrics(ref3, ref3)["dice"] == 1.0


@pytest.mark.parametrize("row_spacing, expected", [(1.0, 1.0), (2.0, 2.0)])
def test_surface_blocks_hand_computed(row_spacing, expected):
    # reference 4x4 block, prediction one row longer: 12 + 14 surface pixels. The reference's last row has two
    # pixels inside the prediction, whose nearest prediction surface is one column (1 mm) away; the prediction's
    # extra row of 4 pixels is one row (row_spacing) from the reference's surface.
    ref = np.zeros((10, 10), dtype=bool)
    pred = ref.copy()
    ref[0:4, 0:4] = True
    pred[0:5, 0:4] = True
    s = surface_metrics(ref, pred, (row_spacing, 1.0), nsd_tolerance_mm=0.5)
    assert s["hd95"] == pytest.approx(expected)
    assert s["assd"] == pytest.approx((2 * 1.0 + 4 * row_spacing) / 26)
    assert s["nsd"] == pytest.approx(20 / 26)


def test_surface_nsd_hand_computed_2d():
    """--nsd-method surface on the blocks above: the boundary runs through the windows between pixel centres, a
    straight piece 1 mm long, a corner cut d = sqrt(2)/2. Reference 4x4: 12 straight + 4 corners; the 3 straight
    pieces of its bottom side are 1 mm from the prediction's boundary. Prediction 4x5: 14 straight + 4 corners; its
    bottom side (3 straight, 2 corners) is 1 mm from the reference's boundary."""
    ref = np.zeros((10, 10), dtype=bool)
    pred = ref.copy()
    ref[0:4, 0:4] = True
    pred[0:5, 0:4] = True
    d = math.sqrt(2) / 2
    s = surface_metrics(ref, pred, (1.0, 1.0), nsd_tolerance_mm=0.5, nsd_method="surface")
    assert s["nsd"] == pytest.approx(((12 + 4 * d - 3) + (14 + 4 * d - 3 - 2 * d)) / (12 + 4 * d + 14 + 4 * d))
    assert surface_metrics(ref, pred, (1.0, 1.0), nsd_tolerance_mm=1.0, nsd_method="surface")["nsd"] == 1.0
    # the other metrics do not depend on the NSD method
    voxel = surface_metrics(ref, pred, (1.0, 1.0), nsd_tolerance_mm=0.5)
    assert voxel["nsd"] == pytest.approx(20 / 26) and voxel["hd95"] == s["hd95"] and voxel["assd"] == s["assd"]
    with pytest.raises(ValueError, match="nsd_method must be one of"):
        surface_metrics(ref, pred, (1.0, 1.0), nsd_method="area")


def test_surface_nsd_hand_computed_3d():
    """Two single voxels two columns apart: each is enclosed by the 8 windows around its centre (an octahedron of 8
    equal triangles at any spacing); the 4 windows on the facing side are 1 mm from the other's, the other 4 are
    2 mm away. Counting voxels, both voxels are 2 mm apart: NSD 0 below 2 mm."""
    ref = np.zeros((5, 5, 7), dtype=bool)
    pred = ref.copy()
    ref[2, 2, 2] = True
    pred[2, 2, 4] = True
    for tolerance, by_area, by_voxel in ((0.9, 0.0, 0.0), (1.0, 0.5, 0.0), (1.9, 0.5, 0.0), (2.0, 1.0, 1.0)):
        assert surface_metrics(ref, pred, (2.0, 1.0, 1.0), tolerance, nsd_method="surface")["nsd"] == by_area
        assert surface_metrics(ref, pred, (2.0, 1.0, 1.0), tolerance)["nsd"] == by_voxel


def test_window_measures_hand_computed():
    """Areas of the marching-cubes pieces: a corner cut is a triangle with area vector (1/8, 1/8, 1/8) at unit
    spacing, a face (4 corners on one side) a rectangle between edge midpoints, an edge (2 corners) a rectangle
    along it, tilted 45 degrees at unit spacing."""
    s0, s1, s2 = 2.0, 0.5, 3.0
    areas = window_measures((s0, s1, s2))
    # corner i is bit i, corners in (axis 0, axis 1, axis 2) order: bit 0 = (0,0,0), bit 4 = (1,0,0), bit 1 = (0,0,1)
    assert areas[0b00000001] == pytest.approx(math.hypot(s1 * s2, s0 * s2, s0 * s1) / 8)
    assert areas[0b11111110] == pytest.approx(areas[0b00000001])
    assert areas[0b00001111] == pytest.approx(s1 * s2)  # the four corners with axis-0 coordinate 0: a plane across
    assert areas[0b00010001] == pytest.approx(s0 * math.hypot(s1, s2) / 2)  # the two corners of an axis-0 edge
    assert areas[0] == areas[255] == 0
    lengths = window_measures((2.0, 0.5))
    assert list(lengths[[0b0001, 0b0011, 0b0101, 0b0110, 0b1111]]) == pytest.approx(
        [math.hypot(2.0, 0.5) / 2, 0.5, 2.0, math.hypot(2.0, 0.5), 0])


def test_surface_nsd_matches_monai_subvoxels():
    """The area-weighted NSD against MONAI's compute_surface_dice(use_subvoxels=True), DeepMind's method, on rough
    anisotropic shapes in 2D and 3D (MONAI is a bench extra, not a dependency)."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(2)
    for shape in ((16, 20, 14), (36, 30)):
        spacing = tuple(rng.uniform(0.5, 3.0, len(shape)))
        grid = np.indices(shape).astype(float) - (np.array(shape) / 2).reshape(-1, *[1] * len(shape))
        r = np.sqrt(sum((g * sp) ** 2 for g, sp in zip(grid, spacing, strict=True)))
        ref = r < 9
        pred = (r + rng.normal(0, 1.5, r.shape)) < 9.5
        for tolerance in (0.5, 2.0):
            ours = surface_metrics(ref, pred, spacing, tolerance, nsd_method="surface")["nsd"]
            one_hot = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32)) for m in (pred, ref)]
            theirs = float(monai_metrics.compute_surface_dice(*one_hot, [tolerance], spacing=spacing,
                                                              use_subvoxels=True)[0, 0])
            assert ours == pytest.approx(theirs, abs=1e-6)


def _brute_force_surface(ref, pred, spacing, tolerance):
    def points(mask):
        surface = mask & ~binary_erosion(mask, border_value=0)
        return np.argwhere(surface) * np.asarray(spacing)

    d = cdist(points(ref), points(pred))
    a, b = d.min(axis=1), d.min(axis=0)
    pooled = np.r_[a, b]
    return max(np.percentile(a, 95), np.percentile(b, 95)), pooled.mean(), np.mean(pooled <= tolerance)


def test_surface_matches_brute_force_3d():
    rng = np.random.default_rng(0)
    grid = np.indices((18, 20, 16)).astype(float)
    centre = np.array([9, 10, 8])[:, None, None, None]
    r = np.sqrt((((grid - centre) * np.array([2.5, 1, 1])[:, None, None, None]) ** 2).sum(0))
    ref = r < 7
    pred = (r + rng.normal(0, 1.2, r.shape)) < 7.5
    pred[0, 0, :3] = True  # a stray blob on the image edge
    spacing = (2.5, 0.8, 1.1)
    s = surface_metrics(ref, pred, spacing, nsd_tolerance_mm=2.0)
    hd95, assd, nsd = _brute_force_surface(ref, pred, spacing, 2.0)
    assert s["hd95"] == pytest.approx(hd95) and s["assd"] == pytest.approx(assd) and s["nsd"] == pytest.approx(nsd)


def test_probability_metrics_hand_and_sklearn():
    target = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8])
    m = probability_metrics(target, score)
    assert m["auc_roc"] == pytest.approx(0.75)
    assert m["auc_pr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["mse"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert math.isnan(auc_roc(np.zeros(3), np.ones(3))) and math.isnan(auc_pr(np.zeros(3), np.ones(3)))

    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    target = rng.random(3000) < 0.2
    # rounded scores: many ties, which is where hand-rolled AUCs usually go wrong
    score = np.round(np.clip(target * 0.3 + rng.random(3000) * 0.7, 0, 1), 2)
    assert auc_roc(target, score) == pytest.approx(sklearn_metrics.roc_auc_score(target, score), abs=1e-12)
    assert auc_pr(target, score) == pytest.approx(sklearn_metrics.average_precision_score(target, score), abs=1e-12)


def test_squeeze_spatial_drops_nnunet_dummy_axis():
    seg = np.zeros((1, 6, 7))
    out, spacing = squeeze_spatial(seg, (999.0, 1.0, 1.0))
    assert out.shape == (6, 7) and spacing == (1.0, 1.0)
    probs = np.zeros((4, 1, 6, 7))
    out, spacing = squeeze_spatial(probs, (999.0, 1.0, 1.0), keep_leading=1)
    assert out.shape == (4, 6, 7) and spacing == (1.0, 1.0)


def test_lesion_detection_hand_computed():
    ref = np.zeros((20, 20), dtype=bool)
    ref[1:3, 1:3] = True      # A, 4 px, found exactly
    ref[10, 10] = True        # B, 1 px, missed
    ref[15:18, 15:18] = True  # C, 9 px, one pixel of it found: IoU 1/9
    pred = np.zeros_like(ref)
    pred[1:3, 1:3] = True
    pred[16, 16] = True
    pred[5, 15:17] = True     # a false positive
    spacing = (0.5, 0.5)
    bins = (0, 1, 2, float("inf"))
    d = lesion_detection(ref, pred, spacing, iou_threshold=0.1, size_bins=bins)
    assert (d["n_ref_lesions"], d["n_pred_lesions"], d["n_detected"], d["false_positives"]) == (3, 3, 2, 1)
    assert d["lesion_sensitivity"] == pytest.approx(2 / 3) and d["lesion_precision"] == pytest.approx(2 / 3)
    assert d["lesion_f1"] == pytest.approx(2 / 3)
    assert sorted(x["size"] for x in d["lesions"]) == [0.25, 1.0, 2.25]
    assert d["by_size"] == {"[0,1)": {"n_lesions": 1, "n_detected": 0}, "[1,2)": {"n_lesions": 1, "n_detected": 1},
                            "[2,inf)": {"n_lesions": 1, "n_detected": 1}}
    strict = lesion_detection(ref, pred, spacing, iou_threshold=0.5, size_bins=bins)
    assert strict["n_detected"] == 1 and strict["false_positives"] == 2

    pooled = pool_detection([d, strict])
    assert pooled["n_ref_lesions"] == 6 and pooled["lesion_sensitivity"] == pytest.approx(3 / 6)
    assert pooled["false_positives_per_case"] == pytest.approx(1.5)
    assert pooled["by_size"]["[2,inf)"]["sensitivity"] == pytest.approx(0.5)


def test_lesion_split_in_two_is_one_detection_no_false_positive():
    ref = np.zeros((3, 8), dtype=bool)
    ref[1, 1:7] = True
    pred = np.zeros_like(ref)
    pred[1, 1:3] = True
    pred[1, 5:7] = True
    d = lesion_detection(ref, pred, (1.0, 1.0), iou_threshold=0.5)
    assert d["n_detected"] == 1 and d["lesions"][0]["iou"] == pytest.approx(4 / 6)
    assert d["n_pred_lesions"] == 2 and d["false_positives"] == 0 and d["lesion_f1"] == 1.0
    empty = lesion_detection(np.zeros_like(ref), np.zeros_like(ref), (1.0, 1.0))
    assert empty["lesion_f1"] == 1.0 and math.isnan(empty["lesion_sensitivity"])

    # unequal pieces of a 10 px lesion, 3 and 4 px: IoU with the union of the pieces 7/10; both pieces touch the
    # detected lesion and count as true positives, though each alone has IoU 0.3 or 0.4
    ref = np.zeros((3, 12), dtype=bool)
    ref[1, 0:10] = True
    pred = np.zeros_like(ref)
    pred[1, 0:3] = True
    pred[1, 6:10] = True
    d = lesion_detection(ref, pred, (1.0, 1.0), iou_threshold=0.5)
    assert d["lesions"][0]["iou"] == pytest.approx(0.7)
    assert (d["n_detected"], d["n_pred_lesions"], d["n_true_positive_pred"], d["false_positives"]) == (1, 2, 2, 0)
    assert d["lesion_sensitivity"] == d["lesion_precision"] == d["lesion_f1"] == 1.0
    strict = lesion_detection(ref, pred, (1.0, 1.0), iou_threshold=0.8)
    assert (strict["n_detected"], strict["false_positives"]) == (0, 2)
    assert strict["lesion_sensitivity"] == strict["lesion_precision"] == strict["lesion_f1"] == 0.0


def test_av_protocol_weighted_inside_fov():
    ref = np.array([[1, 1, 2, 2], [3, 0, 0, 0]])
    pred = np.array([[1, 0, 2, 0], [3, 0, 0, 0]])
    fov = np.ones_like(ref, dtype=bool)
    fov[:, 3] = False  # the vein pixel at (0, 3) is outside and must not count as missed
    probs = np.stack([pred == k for k in range(4)]).astype(float)
    r = av_protocol_case(ref, pred, probs, fov)
    assert r["per_class"]["artery"]["sensitivity"] == 0.5 and r["per_class"]["vein"]["sensitivity"] == 1.0
    assert [r["per_class"][c]["n_pixels"] for c in ("artery", "vein", "uncertain")] == [2, 1, 1]
    assert r["weighted"]["sensitivity"] == pytest.approx((0.5 * 2 + 1 + 1) / 4)
    assert r["weighted"]["f1"] == pytest.approx((2 / 3 * 2 + 1 + 1) / 4)
    # artery: positives score {1, 0}, negatives {0, 0, 0, 0}: 4 wins and 4 ties of 8 pairs
    assert r["per_class"]["artery"]["auc_roc"] == pytest.approx(0.75)
    assert r["per_class"]["artery"]["mse"] == pytest.approx(1 / 6)
    s = summarise_av([r, r])
    assert s["weighted"]["sensitivity"]["mean"] == pytest.approx(0.75) and s["weighted"]["sensitivity"]["std"] == 0


def test_lesions_touching_at_a_corner_are_one_lesion():
    """Full connectivity: two squares meeting at one corner (8-connected in 2D), two cubes meeting at one vertex
    (26-connected in 3D) are one lesion; finding one of the two halves is IoU 4/8 (2D) or 8/16 (3D)."""
    ref = np.zeros((8, 8), dtype=bool)
    ref[1:3, 1:3] = True
    ref[3:5, 3:5] = True
    pred = np.zeros_like(ref)
    pred[1:3, 1:3] = True
    d = lesion_detection(ref, pred, (0.5, 2.0), iou_threshold=0.5, size_bins=(0, 8, float("inf")))
    assert (d["n_ref_lesions"], d["n_pred_lesions"], d["n_detected"], d["false_positives"]) == (1, 1, 1, 0)
    assert d["lesions"] == [{"size": 8.0, "iou": 0.5, "detected": True}]  # 8 px of 0.5 x 2 mm
    assert d["by_size"] == {"[0,8)": {"n_lesions": 0, "n_detected": 0}, "[8,inf)": {"n_lesions": 1, "n_detected": 1}}
    strict = lesion_detection(ref, pred, (0.5, 2.0), iou_threshold=0.6)
    # the lesion is missed, and the prediction (IoU 0.5 with it) is then a false positive
    assert (strict["n_detected"], strict["false_positives"], strict["lesion_f1"]) == (0, 1, 0.0)

    ref3 = np.zeros((6, 6, 6), dtype=bool)
    ref3[0:2, 0:2, 0:2] = True
    ref3[2:4, 2:4, 2:4] = True
    pred3 = np.zeros_like(ref3)
    pred3[2:4, 2:4, 2:4] = True
    d = lesion_detection(ref3, pred3, (3.0, 1.0, 1.0), iou_threshold=0.5)
    assert d["n_ref_lesions"] == 1 and d["lesions"] == [{"size": 48.0, "iou": 0.5, "detected": True}]
    # sharing only an edge or a face would be one lesion too; apart by one voxel, two
    ref3[2:4, 2:4, 2:4] = False
    ref3[3:5, 3:5, 3:5] = True
    assert lesion_detection(ref3, ref3, (1.0, 1.0, 1.0))["n_ref_lesions"] == 2


def test_lesions_merged_by_the_prediction_hand_computed():
    """Two lesions of 4 px predicted as one 10 px blob spanning both: each lesion has IoU 4/10 with it, the blob
    8/10 with the two lesions together."""
    ref = np.zeros((4, 8), dtype=bool)
    ref[1:3, 1:3] = True
    ref[1:3, 5:7] = True
    pred = ref.copy()
    pred[1, 3:5] = True  # a two-pixel bridge
    d = lesion_detection(ref, pred, (1.0, 1.0), iou_threshold=0.3)
    assert [x["iou"] for x in d["lesions"]] == [pytest.approx(0.4), pytest.approx(0.4)]
    assert (d["n_ref_lesions"], d["n_detected"], d["n_pred_lesions"], d["false_positives"]) == (2, 2, 1, 0)
    assert d["lesion_f1"] == 1.0
    strict = lesion_detection(ref, pred, (1.0, 1.0), iou_threshold=0.5)
    # neither lesion reaches 0.5 alone, but the blob's IoU with both (0.8) makes it no false positive
    assert (strict["n_detected"], strict["n_true_positive_pred"], strict["false_positives"]) == (0, 1, 0)
    assert strict["lesion_sensitivity"] == 0.0 and strict["lesion_precision"] == 1.0 and strict["lesion_f1"] == 0.0

    # a big and a one-pixel lesion bridged into one blob: the big one is found (9/12), the small one is not (1/12)
    ref = np.zeros((3, 7), dtype=bool)
    ref[0:3, 0:3] = True
    ref[1, 5] = True
    pred = ref.copy()
    pred[1, 3:5] = True
    d = lesion_detection(ref, pred, (1.0, 1.0), iou_threshold=0.1, size_bins=(0, 2, float("inf")))
    assert sorted((x["size"], x["iou"], x["detected"]) for x in d["lesions"]) == [
        (1.0, pytest.approx(1 / 12), False), (9.0, pytest.approx(9 / 12), True)]
    assert d["lesion_sensitivity"] == 0.5 and d["lesion_precision"] == 1.0 and d["lesion_f1"] == pytest.approx(2 / 3)
    assert d["by_size"] == {"[0,2)": {"n_lesions": 1, "n_detected": 0}, "[2,inf)": {"n_lesions": 1, "n_detected": 1}}

    # pooled over the cases: lesions and components are counted, not per-case scores averaged
    pooled = pool_detection([strict, d])
    assert pooled["n_ref_lesions"] == 4 and pooled["n_detected"] == 1 and pooled["lesion_sensitivity"] == 0.25
    assert pooled["lesion_precision"] == 1.0 and pooled["false_positives_per_case"] == 0.0
