"""Predictions back in the original geometry: the preprocessing order undone, for NIfTI and Dice.

Preprocessing cropped each case to its body box in the original geometry, then resampled it to
the target spacing (data/preprocessing.py). A prediction made on the cached case goes back the
same way in reverse, as nnU-Net does:
    1. class probabilities (C, Z, Y, X) resampled to the cropped original shape with the one
       resampler (data/resample.py): linear, and nearest along the coarse axis when the original
       spacing is anisotropic (ratio > 3);
    2. argmax per voxel (a running maximum over the classes; ties keep the lower class);
    3. the crop undone: the labels land in a zero volume of the original shape at crop_box;
    4. written as NIfTI with the original label map's affine and header, so it overlays on the
       original CT in 3D Slicer / ITK-SNAP.
Steps 1-3 go slab by slab along the axis resampled last (data/resample.py resample_image_slabs),
each slab's labels written straight into the original-shape volume, so no cropped-size float
array is ever whole. On KiTS19's largest case (1059 x 512 x 512, cropped 1059 x 409 x 510) the
whole-volume way held four of them at once (0.82 GiB each): the evaluation peaked there at 3.9 GiB
(bench/largest_case.py); this holds C in-plane-resampled channels (0.13 GiB each there), a slab
and the uint8 labels, and peaks at 1.5 GiB, the same labels bit for bit.

Usage:
    labels = to_original_geometry(probs, props)            # uint8 (Z, Y, X), original shape
    write_prediction("preds/case_00003.nii.gz", labels, props, reference=ref_volume)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.errors import CaseError
from data.nifti import Volume, kits_affine, write_volume
from data.resample import ANISOTROPY_THRESHOLD, resample_image_slabs


def to_original_geometry(probs, props: dict, *, anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Labels (uint8) in the original shape from probabilities (C, Z, Y, X) in the cached geometry."""
    probs = probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    case_id = props.get("case_id", "?")
    if probs.ndim != 4 or tuple(probs.shape[1:]) != tuple(props["resampled_shape"]):
        raise CaseError(case_id, f"prediction shape {tuple(probs.shape)} does not match the cached case "
                        f"(C, {', '.join(map(str, props['resampled_shape']))})")
    full = np.zeros(tuple(props["original_shape"]), np.uint8)
    labels = full[tuple(slice(a, b) for a, b in props["crop_box"])]  # a view: the crop is undone in place
    for region, values in resample_image_slabs(probs, props["spacing"], props["original_spacing"],
                                               new_shape=tuple(props["cropped_shape"]), order=1, order_z=0,
                                               anisotropy_threshold=anisotropy_threshold):
        values = values.numpy()   # a fresh slab: its first channel becomes the running maximum
        best, out = values[0], labels[region]   # out: a view of the zero volume
        for c in range(1, len(values)):
            wins = values[c] > best  # strict: ties (and NaN) keep the lower class
            np.copyto(best, values[c], where=wins)
            out[wins] = c
    return full


def labels_to_probs(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """One-hot (C, Z, Y, X) float32 of a label map: a perfect "prediction", for round-trip checks."""
    labels = np.asarray(labels)
    return np.stack([(labels == c).astype(np.float32) for c in range(n_classes)])


def write_prediction(path, labels: np.ndarray, props: dict, *, reference: Volume | None = None) -> Path:
    """Save labels as NIfTI in the original geometry: the reference's affine and header if given,
    else the affine recorded at preprocessing (original_affine), else KiTS's convention."""
    path = Path(path)
    if tuple(labels.shape) != tuple(props["original_shape"]):
        raise CaseError(props.get("case_id", "?"), f"labels {labels.shape} are not in the original shape "
                        f"{tuple(props['original_shape'])}")
    if reference is not None:
        affine, header = reference.affine, reference.header.copy()
        header.set_data_dtype(np.uint8)
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0  # label values are stored as they are
    else:
        affine = np.asarray(props.get("original_affine") or kits_affine(props["original_spacing"]))
        header = None
    write_volume(path, labels.astype(np.uint8, copy=False), affine, header=header,
                 spacing=None if reference is not None else props["original_spacing"])
    return path
