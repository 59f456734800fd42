"""KiTS19 per-case Dice: hand-computed values on tiny label maps, empty-mask rules, inputs."""
import math
import warnings

import numpy as np
import pytest
import torch

from fairness.case_dice import dice, dice_from_counts, kits_case_counts, kits_case_dice, kits_case_scores


def _case():
    """A 2x3x3 case whose Dice values are worked out by hand below."""
    ref = np.zeros((2, 3, 3), dtype=np.uint8)
    ref[0, 0, :] = 1          # 3 kidney voxels
    ref[0, 1, 0:2] = 2        # 2 tumor voxels -> ref > 0 has 5 voxels
    pred = np.zeros((2, 3, 3), dtype=np.uint8)
    pred[0, 0, 0:2] = 1       # 2 of the 3 kidney voxels
    pred[0, 1, 0] = 2         # 1 of the 2 tumor voxels
    pred[1, 2, 2] = 2         # a false-positive tumor voxel -> pred > 0 has 4 voxels
    return pred, ref


def test_hand_computed_case():
    pred, ref = _case()
    scores = kits_case_dice(pred=pred, ref=ref)
    # kidney: |pred>0 & ref>0| = 3, |pred>0| = 4, |ref>0| = 5 -> 2*3/9
    assert scores["kidney"] == pytest.approx(2 / 3)
    # tumor: |both| = 1, |pred==2| = 2, |ref==2| = 2 -> 2*1/4
    assert scores["tumor"] == pytest.approx(0.5)
    assert scores["mean"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert set(scores) == {"kidney", "tumor", "mean"}


def test_hand_computed_counts_behind_the_dice():
    pred, ref = _case()
    counts = kits_case_counts(pred=pred, ref=ref)
    # kidney: 3 in both, pred>0 has 4 (1 FP: the stray tumor voxel), ref>0 has 5 (2 FN)
    # tumor: 1 in both, 1 FP, 1 FN; the grid has 18 voxels
    assert counts == {"kidney_tp": 3, "kidney_fp": 1, "kidney_fn": 2, "tumor_tp": 1, "tumor_fp": 1, "tumor_fn": 1,
                      "voxels": 18}
    scores = kits_case_scores(pred=pred, ref=ref)
    assert scores == {**kits_case_dice(pred=pred, ref=ref), **counts}
    assert dice_from_counts(tp=3, fp=1, fn=2) == scores["kidney"] == 2 * 3 / (4 + 5)   # nnU-Net's formula, same float
    assert math.isnan(dice_from_counts(tp=0, fp=0, fn=0)) and dice_from_counts(tp=0, fp=3, fn=0) == 0.0


def test_kidney_region_includes_tumor():
    ref = np.zeros((2, 3, 3), dtype=np.int64)
    ref[0] = 1
    pred = np.where(ref == 1, 2, 0)  # every kidney voxel called tumor
    scores = kits_case_dice(pred=pred, ref=ref)
    assert scores["kidney"] == 1.0   # label > 0 on both sides: a perfect kidney+tumor region
    assert scores["tumor"] == 0.0    # reference has no tumor, prediction does: a failure
    assert scores["mean"] == 0.5


def test_tumor_free_case_both_empty_is_nan_and_mean_uses_kidney_only():
    ref = np.zeros((2, 3, 3), dtype=np.uint8)
    ref[1, :, 1] = 1
    pred = ref.copy()
    pred[1, 0, 1] = 0  # 2 of 3 kidney voxels
    scores = kits_case_dice(pred=pred, ref=ref)
    assert scores["kidney"] == pytest.approx(2 * 2 / (2 + 3))
    assert math.isnan(scores["tumor"])
    assert scores["mean"] == pytest.approx(0.8)  # nanmean: the kidney value alone


def test_tumor_free_reference_with_predicted_tumor_is_zero():
    ref = np.zeros((2, 3, 3), dtype=np.uint8)
    ref[1, :, 1] = 1
    pred = ref.copy()
    pred[0, 0, 0] = 2  # false-positive tumor outside the kidney
    scores = kits_case_dice(pred=pred, ref=ref)
    assert scores["tumor"] == 0.0
    assert scores["kidney"] == pytest.approx(2 * 3 / (4 + 3))
    assert scores["mean"] == pytest.approx((6 / 7 + 0.0) / 2)


def test_all_empty_case_is_all_nan_without_numpy_warnings():
    empty = np.zeros((2, 3, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = kits_case_dice(pred=empty, ref=empty)
    assert all(math.isnan(v) for v in scores.values())


def test_reference_present_prediction_empty_is_zero():
    pred, ref = _case()
    scores = kits_case_dice(pred=np.zeros_like(pred), ref=ref)
    assert scores == {"kidney": 0.0, "tumor": 0.0, "mean": 0.0}


def test_binary_dice_rules():
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[0, 1, 1, 1]], dtype=bool)
    assert dice(pred_mask=a, ref_mask=b) == pytest.approx(2 * 1 / (2 + 3))
    assert dice(pred_mask=a.astype(np.int32), ref_mask=b.astype(np.uint8)) == pytest.approx(0.4)
    assert dice(pred_mask=a, ref_mask=a) == 1.0
    assert math.isnan(dice(pred_mask=np.zeros(4, bool), ref_mask=np.zeros(4, bool)))
    assert dice(pred_mask=np.ones(4, bool), ref_mask=np.zeros(4, bool)) == 0.0
    assert dice(pred_mask=np.zeros(4, bool), ref_mask=np.ones(4, bool)) == 0.0


def test_torch_tensors_accepted():
    pred, ref = _case()
    expected = kits_case_dice(pred=pred, ref=ref)
    assert kits_case_dice(pred=torch.from_numpy(pred).long(), ref=torch.from_numpy(ref)) == expected
    assert kits_case_dice(pred=torch.from_numpy(pred), ref=ref) == expected  # mixed is fine
    mask = torch.tensor([True, True, False])
    assert dice(pred_mask=mask, ref_mask=torch.tensor([True, False, False])) == pytest.approx(2 / 3)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(2, 3, 4\)"):
        kits_case_dice(pred=np.zeros((2, 3, 3), np.uint8), ref=np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        dice(pred_mask=np.zeros(3, bool), ref_mask=np.zeros(4, bool))


def test_float_labels_refused():
    pred, ref = _case()
    with pytest.raises(TypeError, match="float"):
        kits_case_dice(pred=pred.astype(np.float32), ref=ref)
    with pytest.raises(TypeError, match="float"):
        dice(pred_mask=torch.rand(3), ref_mask=np.zeros(3, bool))


def test_matches_reference_formula_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred = rng.integers(0, 3, size=(8, 16, 16), dtype=np.uint8)
        ref = rng.integers(0, 3, size=(8, 16, 16), dtype=np.uint8)
        scores = kits_case_dice(pred=pred, ref=ref)
        for name, region in (("kidney", lambda x: x > 0), ("tumor", lambda x: x == 2)):
            p, r = region(pred).astype(float), region(ref).astype(float)
            assert scores[name] == pytest.approx(2 * (p * r).sum() / (p.sum() + r.sum()))
            assert 0.0 <= scores[name] <= 1.0
