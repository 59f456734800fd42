"""Surface metrics per case: normalised surface Dice (NSD), HD95 and ASSD, in mm, from the voxel
grid and its true spacing.

KiTS19's two nested regions, as for Dice (fairness/case_dice.py):
    kidney = label > 0    tumor = label == 2
Columns: nsd_kidney, nsd_tumor, nsd_mean, hd95_kidney, hd95_tumor, hd95_mean, assd_kidney, ...
(`mean` is the nanmean of the two classes, like Dice's).

Definitions (the conventions of MONAI's SurfaceDiceMetric, HausdorffDistanceMetric and
SurfaceDistanceMetric with their defaults; bench/surface_metrics.py compares them):
    surface      the voxels of a mask with a 6-neighbour outside it (mask minus its erosion by
                 the 3D cross); a mask touching the image border has its border voxels on the
                 surface (the grid ends there)
    d(p, S)      Euclidean distance in mm from surface voxel p to the nearest voxel of surface S
    NSD_tau      (#{p in S_pred: d(p, S_ref) <= tau} + #{q in S_ref: d(q, S_pred) <= tau})
                 / (#S_pred + #S_ref): the share of both surfaces within tau of the other, each
                 surface voxel counted once (no surface-area weights)
    HD95         max(95th percentile of d(S_pred, S_ref), 95th percentile of d(S_ref, S_pred)),
                 numpy's linear percentile
    ASSD         the mean of all distances of both directions together

Empty masks (stated like Dice's):
    reference empty, prediction empty      -> NaN for all three (nothing to say)
    exactly one of them empty               -> NSD 0.0 (no surface agrees), HD95 and ASSD NaN
                                               (a distance to nothing does not exist); the
                                               per-case tables count these NaNs
                                               (n_excluded_<column>), as for Dice

The default tolerance is 2 mm: a little over one in-plane voxel at the study's target spacing
(1.62 mm), so a boundary that disagrees by one voxel in-plane, about what two careful readers
disagree by, counts as agreement, and a disagreement of two voxels does not. Set it with
eval.surface_tolerance_mm or evaluate.py --surface-tolerance.

Cost: distances are computed inside the box that holds both masks (plus one voxel), not on the
whole grid, so a 600 x 512 x 512 case costs what its kidneys' box costs. Inside it, scipy's exact
Euclidean feature transform (the nearest surface voxel of every voxel, int32) is kept and the
distances are computed at the other surface's voxels only, with distance_transform_edt's own
formula (so the values are its values, bit for bit): 12 bytes per box voxel (an int32 index per
axis) and a few bool masks, instead of the ~50 bytes of the whole float64 distance map. On KiTS19's
largest case (1059 x 512 x 512) a prediction near the reference costs ~4 s and 0.24 GiB above the
label maps (the distance map: 11 s, 1.2 GiB); a poor one, with false positives all over the body,
makes the box the body (220 M voxels): 3.7 GiB and ~4 minutes (the distance map: 11 GiB and
5 minutes; bench/largest_case.py).

Usage:
    from fairness.surface import surface_metrics, kits_case_surface
    surface_metrics(pred_mask, ref_mask, spacing=(3.0, 0.8, 0.8))    # {"nsd": .., "hd95": .., "assd": ..}
    kits_case_surface(pred=labels, ref=ref_labels, spacing=(3.0, 0.8, 0.8))   # the nine columns
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from fairness.case_dice import TUMOR_LABEL, _as_pair

DEFAULT_TOLERANCE_MM = 2.0
SURFACE_METRICS = ("nsd", "hd95", "assd")
HIGHER_IS_BETTER = {"dice": True, "nsd": True, "hd95": False, "assd": False}
_CROSS = ndimage.generate_binary_structure(3, 1)


def _box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of pred | ref grown by one voxel (clipped to the grid); None if both empty."""
    box = []
    for axis in range(pred.ndim):
        others = tuple(a for a in range(pred.ndim) if a != axis)
        hit = np.flatnonzero(np.any(pred, axis=others) | np.any(ref, axis=others))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, pred.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm), got {spacing}")
    return spacing


def surface_distances(pred_mask, ref_mask, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(distances in mm from each prediction surface voxel to the reference surface, and from each
    reference surface voxel to the prediction surface); both masks must be non-empty."""
    pred, ref = _as_pair(pred_mask, ref_mask, "pred_mask", "ref_mask")
    pred = pred if pred.dtype == bool else pred != 0
    ref = ref if ref.dtype == bool else ref != 0
    spacing = _check_spacing(spacing, pred.ndim)
    box = _box(pred, ref)
    if box is None or not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    # every surface voxel lies in the box, so the distance transform there is exact
    s_pred, s_ref = _surface(pred[box]), _surface(ref[box])
    return _nearest_distances(s_ref, s_pred, spacing), _nearest_distances(s_pred, s_ref, spacing)


def _nearest_distances(features: np.ndarray, queries: np.ndarray, spacing, rows: int = 16) -> np.ndarray:
    """distance_transform_edt(~features, sampling=spacing)[queries], without the distance map.

    The feature transform (each voxel's nearest feature voxel) is all of the transform that needs
    the whole box; the distances are then taken at the query voxels only, a few rows of the first
    axis at a time, with distance_transform_edt's arithmetic (int offset -> float64, times the
    spacing, squared, summed over the axes in order, sqrt), so they equal its values bit for bit.
    """
    ft = ndimage.distance_transform_edt(~features, sampling=spacing, return_distances=False, return_indices=True)
    out = np.empty(int(np.count_nonzero(queries)), dtype=np.float64)
    done = 0
    for start in range(0, queries.shape[0], rows):
        where = np.nonzero(queries[start:start + rows])
        if where[0].size == 0:
            continue
        total = None
        for axis, step in enumerate(spacing):
            at = where[axis] + start if axis == 0 else where[axis]
            offset = (ft[axis, start:start + rows][where] - at).astype(np.float64)
            offset *= step
            offset *= offset
            total = offset if total is None else np.add(total, offset, out=total)
        out[done:done + total.size] = np.sqrt(total)
        done += total.size
    return out


def surface_metrics(pred_mask, ref_mask, spacing, tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict[str, float]:
    """{"nsd", "hd95", "assd"} of two binary masks; see the module docstring for the empty rules."""
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"the surface tolerance is a distance >= 0 in mm, got {tolerance_mm!r}")
    pred, ref = _as_pair(pred_mask, ref_mask, "pred_mask", "ref_mask")
    _check_spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(np.any(pred)), bool(np.any(ref))
    if not has_pred and not has_ref:
        return {"nsd": math.nan, "hd95": math.nan, "assd": math.nan}
    if not (has_pred and has_ref):
        return {"nsd": 0.0, "hd95": math.nan, "assd": math.nan}
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    within = np.count_nonzero(to_ref <= tolerance_mm) + np.count_nonzero(to_pred <= tolerance_mm)
    n = to_ref.size + to_pred.size
    return {"nsd": float(within / n),
            "hd95": float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))),
            "assd": float((to_ref.sum() + to_pred.sum()) / n)}


def kits_case_surface(pred, ref, spacing, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                      metrics=SURFACE_METRICS) -> dict[str, float]:
    """The surface metrics of one case by KiTS19 region: {"nsd_kidney", "nsd_tumor", "nsd_mean", ...}."""
    unknown = sorted(set(metrics) - set(SURFACE_METRICS))
    if unknown:
        raise ValueError(f"unknown surface metric(s) {unknown}; valid: {list(SURFACE_METRICS)}")
    pred, ref = _as_pair(pred, ref, "pred", "ref")
    # Both regions lie in the box of the kidney region (tumor is inside it), so the class masks are
    # made there, not on the whole grid; each class's own box (surface_metrics) is inside it.
    signed = "i" in (pred.dtype.kind, ref.dtype.kind)   # else nonzero is > 0: no full-size temporaries
    box = _box(pred > 0, ref > 0) if signed else _box(pred, ref)
    if box is not None:
        pred, ref = pred[box], ref[box]
    out: dict[str, float] = {}
    per_class = {"kidney": surface_metrics(pred > 0, ref > 0, spacing, tolerance_mm),
                 "tumor": surface_metrics(pred == TUMOR_LABEL, ref == TUMOR_LABEL, spacing, tolerance_mm)}
    for metric in metrics:
        values = [per_class[c][metric] for c in ("kidney", "tumor")]
        out[f"{metric}_kidney"], out[f"{metric}_tumor"] = values
        present = [v for v in values if not math.isnan(v)]
        out[f"{metric}_mean"] = sum(present) / len(present) if present else math.nan
    return out
