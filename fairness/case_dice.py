"""Per-case Dice, KiTS19's official way.

KiTS19 scores two nested regions per case, not the raw labels (SPEC "Metrics"):
    kidney = label > 0    kidney and tumor together
    tumor  = label == 2
    mean   = (kidney + tumor) / 2
All values are fractions in [0, 1]; converting to % is left to the reporting code.

Empty masks (the rule every group table relies on):
    reference empty, prediction empty      -> NaN  the case has nothing to say about this class:
                                                   group means skip it, and `group_table`
                                                   counts it in n_excluded_<metric>
    reference empty, prediction not empty  -> 0.0  a false positive on, e.g., a tumor-free case
                                                   is a failure, not a free pass
    reference not empty, prediction empty  -> 0.0  (what the formula gives anyway)
KiTS19's own script has a 0 branch for the first row (a ZeroDivisionError handler that numpy's
0/0 never triggers); we use NaN because a 0 there would drag down the group of every tumor-free
case although the model did nothing wrong.

Case mean: the mean of the classes that are not NaN (nanmean), i.e. (kidney + tumor) / 2 when
both exist, the one available value when the other is NaN, and NaN only when both are NaN.

Inputs are integer (or bool) arrays, numpy or torch, of the same shape. Floating arrays are
refused: a probability map or a linearly resampled label map is not a label map, and comparing
it with 0 or 2 would give a number that looks right and is not.

The voxel counts behind the two Dice values (`kits_case_counts`: per class TP, FP, FN and the
grid's voxel count, TN = voxels - TP - FP - FN) travel in the per-case table too, so that
nnU-Net's summary.json (data/nnunet.py) can be written from it and read back without the label
maps. Dice from counts is 2 TP / (2 TP + FP + FN), nnU-Net's formula; it is the same number as
2 |P and R| / (|P| + |R|), and nnU-Net's empty-mask rule (TP + FP + FN = 0 -> NaN) is ours.

Usage:
    from fairness.case_dice import dice, kits_case_dice, kits_case_scores
    kits_case_dice(pred=pred_labels, ref=ref_labels)  # {"kidney": 0.95, "tumor": 0.81, "mean": 0.88}
    kits_case_scores(pred=pred_labels, ref=ref_labels)  # the same + kidney_tp, ..., tumor_fn, voxels
    dice(pred_mask=pred_labels == 2, ref_mask=ref_labels == 2)  # one pair of binary masks
    dice_from_counts(tp=90, fp=10, fn=0)              # 2 * 90 / 190
"""
from __future__ import annotations

import math

import numpy as np

TUMOR_LABEL = 2


METRICS = ("kidney", "tumor", "mean")   # the per-case columns kits_case_dice gives, in table order
COUNTS = ("kidney_tp", "kidney_fp", "kidney_fn", "tumor_tp", "tumor_fp", "tumor_fn", "voxels")   # kits_case_counts
CLASSES = ("kidney", "tumor")

def _as_array(x, name: str) -> np.ndarray:
    """A numpy view of a numpy array or torch tensor, refusing non-integer data."""
    if hasattr(x, "detach"):  # torch.Tensor, recognised without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biu":
        raise TypeError(
            f"{name} must hold integer or bool labels, got dtype {arr.dtype} "
            "(cast a label map with .astype(np.uint8); threshold or argmax a probability map first)"
        )
    return arr


def _as_pair(pred, ref, pred_name: str, ref_name: str) -> tuple[np.ndarray, np.ndarray]:
    pred_arr = _as_array(pred, pred_name)
    ref_arr = _as_array(ref, ref_name)
    if pred_arr.shape != ref_arr.shape:
        raise ValueError(
            f"{pred_name} shape {tuple(pred_arr.shape)} differs from {ref_name} shape {tuple(ref_arr.shape)}"
        )
    return pred_arr, ref_arr


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """2 TP / (2 TP + FP + FN); NaN when the class is empty in both masks (TP + FP + FN = 0)."""
    total = 2 * tp + fp + fn
    if total == 0:
        return math.nan
    return 2.0 * tp / total


def dice(pred_mask, ref_mask) -> float:
    """Dice of two binary masks (bool, or integer where nonzero is foreground), in [0, 1].

    NaN when both masks are empty; 0.0 when exactly one is (see the module docstring).
    """
    pred, ref = _as_pair(pred_mask, ref_mask, "pred_mask", "ref_mask")
    pred = pred if pred.dtype == bool else pred != 0
    ref = ref if ref.dtype == bool else ref != 0
    tp = int(np.count_nonzero(np.logical_and(pred, ref)))
    return dice_from_counts(tp=tp, fp=int(np.count_nonzero(pred)) - tp, fn=int(np.count_nonzero(ref)) - tp)


def case_mean(kidney: float, tumor: float) -> float:
    """The case mean: the mean of the non-NaN class values, NaN when both are NaN."""
    present = [v for v in (kidney, tumor) if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def kits_case_counts(pred, ref) -> dict[str, int]:
    """Voxel counts of both KiTS19 classes: {"kidney_tp", "kidney_fp", "kidney_fn", "tumor_tp",
    "tumor_fp", "tumor_fn", "voxels"}; kidney compares label > 0, tumor label == 2."""
    pred, ref = _as_pair(pred, ref, "pred", "ref")
    # Three bool buffers reused for both classes: a 500x512x512 case then needs ~400 MB of
    # scratch instead of a fresh temporary per comparison, and count_nonzero on bool is the
    # fastest count numpy has.
    pred_in = np.empty(pred.shape, dtype=bool)
    ref_in = np.empty(pred.shape, dtype=bool)
    both_in = np.empty(pred.shape, dtype=bool)
    counts: dict[str, int] = {}
    for name, compare, value in (("kidney", np.greater, 0), ("tumor", np.equal, TUMOR_LABEL)):
        compare(pred, value, out=pred_in)
        compare(ref, value, out=ref_in)
        np.logical_and(pred_in, ref_in, out=both_in)
        tp = int(np.count_nonzero(both_in))
        counts[f"{name}_tp"] = tp
        counts[f"{name}_fp"] = int(np.count_nonzero(pred_in)) - tp
        counts[f"{name}_fn"] = int(np.count_nonzero(ref_in)) - tp
    counts["voxels"] = int(pred.size)
    return counts


def kits_dice_from_counts(counts) -> dict[str, float]:
    """{"kidney", "tumor", "mean"} from the counts of `kits_case_counts` (a dict or a table row)."""
    scores = {name: dice_from_counts(tp=counts[f"{name}_tp"], fp=counts[f"{name}_fp"], fn=counts[f"{name}_fn"])
              for name in CLASSES}
    scores["mean"] = case_mean(kidney=scores["kidney"], tumor=scores["tumor"])
    return scores


def kits_case_dice(pred, ref) -> dict[str, float]:
    """KiTS19 Dice of one case: {"kidney": ..., "tumor": ..., "mean": ...}, fractions in [0, 1].

    `pred` and `ref` are integer label maps (0 background, 1 kidney, 2 tumor) of the same shape.
    kidney compares label > 0, tumor compares label == 2; a class empty in both gives NaN, a
    class empty only in the reference gives 0.0; mean is the nanmean of the two classes.
    """
    return kits_dice_from_counts(kits_case_counts(pred, ref))


def kits_case_scores(pred, ref) -> dict[str, float]:
    """`kits_case_dice` and the `kits_case_counts` it comes from, in one pass: a per-case row."""
    counts = kits_case_counts(pred, ref)
    return {**kits_dice_from_counts(counts), **counts}
