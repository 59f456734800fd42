"""Bias mechanisms acting on label maps (data/bias.py says which case gets what): thicker slices
(nearest-slice resampling), tumors shrunk or grown about their centre, and label noise (boundary
voxels flipped), with the Dice of the written labels against the true ones.

    thick = resample_z_nearest(labels, z_mm=1.0, new_z_mm=5.0)
    smaller, achieved = scale_tumor(labels, spacing, 0.1)
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from data.synthetic_ct import random_field

def resample_z_nearest(labels: np.ndarray, z_mm: float, new_z_mm: float) -> np.ndarray:
    """slice_mm on a label map: max(1, round(nz * z_mm / new_z_mm)) slices, slice j taken from
    the original slice nearest to j * new_z_mm (slice 0 stays in place; nearest, never blended)."""
    nz = labels.shape[0]
    n_new = max(1, int(round(nz * z_mm / new_z_mm)))
    idx = np.minimum(np.floor(np.arange(n_new) * (new_z_mm / z_mm) + 0.5).astype(np.intp), nz - 1)
    return np.ascontiguousarray(labels[idx])


def _bbox(mask: np.ndarray, margin, shape) -> tuple[slice, ...] | None:
    """Index box of a mask's True voxels grown by margin (per axis), or None when empty."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hits):
            return None
        box.append(slice(max(0, int(hits[0]) - margin[axis]), min(shape[axis], int(hits[-1]) + 1 + margin[axis])))
    return tuple(box)


def scale_tumor(labels: np.ndarray, spacing, factor: float) -> tuple[np.ndarray, float]:
    """tumor_scale on a real label map: each tumor (connected component of label 2) of n voxels
    keeps or gains max(1, round(factor * n)) voxels; returns (new labels, new / old tumor voxels).

    factor < 1: the tumor shrinks concentrically: its voxels deepest below its surface (distance
    in mm) stay tumor; each vacated voxel takes the label of the nearest non-tumor voxel of the
    original map (kidney where the tumor bordered kidney, background where it bulged out).
    factor > 1: it grows into the kidney only: the kidney voxels nearest to it (mm) become tumor,
    as many as there are (the ratio then falls short; it is returned)."""
    out = labels.copy()
    tumor = labels == 2
    n_old = int(np.count_nonzero(tumor))
    sp = np.asarray(spacing, dtype=np.float64)
    if n_old == 0 or factor == 1.0:
        return out, 1.0
    box = _bbox(tumor, [1, 1, 1], labels.shape)
    comps, n_comp = ndimage.label(tumor[box])
    for c in range(1, n_comp + 1):
        comp = comps == c
        n = int(np.count_nonzero(comp))
        keep = max(1, int(round(factor * n)))
        if keep < n:
            sub = _bbox(comp, [1, 1, 1], comp.shape)
            cm, lab = comp[sub], labels[box][sub]
            depth = ndimage.distance_transform_edt(cm, sampling=sp)
            order = np.argsort(-depth[cm], kind="stable")
            gone = np.zeros(int(cm.sum()), dtype=bool)
            gone[order[keep:]] = True
            vacated = np.zeros_like(cm)
            vacated[cm] = gone
            _, nearest = ndimage.distance_transform_edt(lab == 2, sampling=sp, return_indices=True)
            view = out[box][sub]
            view[vacated] = lab[tuple(i[vacated] for i in nearest)]
        elif keep > n:
            r_mm = (3.0 * n * float(np.prod(sp)) / (4.0 * math.pi)) ** (1.0 / 3.0)
            reach = [int(math.ceil(2.0 * r_mm * (factor ** (1.0 / 3.0) - 1.0) / s)) + 2 for s in sp]
            cb = _bbox(comp, [0, 0, 0], comp.shape)
            whole = tuple(slice(max(0, b.start + q.start - m), min(size, b.start + q.stop + m))
                          for b, q, m, size in zip(box, cb, reach, labels.shape))
            cm = np.zeros(tuple(w.stop - w.start for w in whole), dtype=bool)
            cm[tuple(slice(b.start + q.start - w.start, b.start + q.stop - w.start)
                     for b, q, w in zip(box, cb, whole))] = comp[cb]
            dist = ndimage.distance_transform_edt(~cm, sampling=sp)
            cand = np.flatnonzero(labels[whole] == 1)
            take = cand[np.argsort(dist.ravel()[cand], kind="stable")[:keep - n]]
            view = out[whole]
            idx = np.unravel_index(take, view.shape)
            view[idx] = 2
    return out, float(np.count_nonzero(out == 2)) / n_old


def jitter_labels(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """label_noise: the kidney outline (label > 0) and the tumor outline (label 2) each moved
    along the in-plane normal by d(x) = k * tanh(g(x)) voxels, g a smooth unit-variance random
    field (correlation ~8 voxels in-plane, ~3 slices); |d| < k. A voxel changes label exactly
    when the moved outline crosses its centre, so only voxels whose centres lie within k + 1/2
    voxel of the true outline change (at most k layers of voxels). Distances are in-plane in
    voxel units, as annotators draw slice by slice; the tumor stays inside the kidney outline."""
    box = _bbox(labels > 0, [0, k + 2, k + 2], labels.shape)
    out = labels.copy()
    if box is None:
        return out
    lab = labels[box]
    z_scale = 8.0 / 3.0     # the field's cells are 8 voxels in-plane and 3 slices along z
    hi = np.asarray(lab.shape, dtype=np.float64) * np.array([z_scale, 1.0, 1.0])
    fields = [random_field(rng, np.zeros(3), hi, 16.0) for _ in range(2)]   # kidney, tumor outline
    y, x = np.arange(lab.shape[1]), np.arange(lab.shape[2])
    edt = ndimage.distance_transform_edt
    for j in range(lab.shape[0]):     # slice by slice: bounded memory on 500-slice real cases
        moved = []
        for mask, f in ((lab[j] > 0, fields[0]), (lab[j] == 2, fields[1])):
            if not mask.any():
                moved.append(mask)
                continue
            d = k * np.tanh(f.sample(np.array([j * z_scale]), y, x)[0])
            sd = np.where(mask, edt(mask) - 0.5, 0.5 - edt(~mask))   # signed in-plane distance
            moved.append(sd + d > 0)
        fg, tumor = moved
        out[box][j] = np.where(fg, np.where(tumor & fg, 2, 1), 0)
    return out


def _label_dice(written: np.ndarray, true: np.ndarray) -> dict:
    """Dice of the jittered reference against the true labels (kidney = label > 0, tumor = 2)."""
    out = {}
    for name, a, b in (("kidney", written > 0, true > 0), ("tumor", written == 2, true == 2)):
        denom = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
        out[name] = round(2.0 * int(np.count_nonzero(a & b)) / denom, 4) if denom else 1.0
    return out
