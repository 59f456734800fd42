"""Smooth random fields for the CT model: white noise on a coarse grid, Gaussian-smoothed, read back
by separable linear interpolation (two small matrix products per plane, ~3 flops a voxel).

    field = random_field(rng, lo_mm, hi_mm, scale_mm=40.0)
    values = field.sample(z_mm, y_mm, x_mm)        # (nz, ny, nx) float32
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _interp_index(coords_mm, origin, cell, n):
    """Per fine coordinate: the lower coarse index and the weight of the upper one (clamped)."""
    t = (np.asarray(coords_mm, dtype=np.float64) - origin) / cell
    if n == 1:
        return np.zeros(t.shape, dtype=np.intp), np.zeros(t.shape, dtype=np.float32)
    i0 = np.clip(np.floor(t).astype(np.intp), 0, n - 2)
    w = np.clip(t - i0, 0.0, 1.0).astype(np.float32)
    return i0, w


def _interp_matrix(coords_mm, origin, cell, n):
    """Dense linear-interpolation matrix (fine x coarse), trimmed to the coarse columns it uses."""
    i0, w = _interp_index(coords_mm, origin, cell, n)
    lo = int(i0.min()) if i0.size else 0
    hi = min(n, int(i0.max()) + 2) if i0.size else 1
    m = np.zeros((len(i0), hi - lo), dtype=np.float32)
    rows = np.arange(len(i0))
    m[rows, i0 - lo] = 1.0 - w
    if n > 1:
        m[rows, i0 + 1 - lo] += w
    return m, lo, hi


class CoarseField:
    """Values on a coarse regular grid (origin and cell size in mm), sampled on fine windows."""

    def __init__(self, values, origin_mm, cell_mm):
        self.v = np.ascontiguousarray(values, dtype=np.float32)
        self.origin = np.asarray(origin_mm, dtype=np.float64)
        self.cell = np.asarray(cell_mm, dtype=np.float64)

    def sample(self, z_mm, y_mm, x_mm) -> np.ndarray:
        """Trilinear interpolation at the grid z_mm x y_mm x x_mm (1-D coordinate arrays)."""
        nz, ny, nx = self.v.shape
        iz, wz = _interp_index(z_mm, self.origin[0], self.cell[0], nz)
        iz1 = np.minimum(iz + 1, nz - 1)
        planes_needed = np.unique(np.concatenate([iz, iz1]))
        my, ylo, yhi = _interp_matrix(y_mm, self.origin[1], self.cell[1], ny)
        mx, xlo, xhi = _interp_matrix(x_mm, self.origin[2], self.cell[2], nx)
        coarse = self.v[planes_needed][:, ylo:yhi, xlo:xhi]
        m, cy, cx = coarse.shape
        # in-plane upsampling as two large GEMMs (a stacked matmul with a broadcast operand
        # would not go through BLAS): along x, then along y
        t = (coarse.reshape(m * cy, cx) @ mx.T).reshape(m, cy, -1)          # (m, cy, X)
        nxf = t.shape[2]
        t = my @ np.ascontiguousarray(t.transpose(1, 0, 2)).reshape(cy, m * nxf)  # (Y, m*X)
        planes = np.ascontiguousarray(t.reshape(-1, m, nxf).transpose(1, 0, 2))   # (m, Y, X)
        p0 = np.searchsorted(planes_needed, iz)
        p1 = np.searchsorted(planes_needed, iz1)
        out = np.empty((len(iz),) + planes.shape[1:], dtype=np.float32)
        for k in range(len(iz)):  # blend along z slice by slice (cache-sized temporaries)
            a, b, w = p0[k], p1[k], float(wz[k])
            if w == 0.0 or a == b:
                out[k] = planes[a]
            else:
                np.multiply(planes[a], 1.0 - w, out=out[k])
                out[k] += w * planes[b]
        return out


def random_field(rng: np.random.Generator, lo_mm, hi_mm, scale_mm: float) -> CoarseField:
    """Smooth Gaussian noise (unit std) with correlation length ~scale_mm over the box lo..hi."""
    cell = float(scale_mm) / 2.0
    lo = np.asarray(lo_mm, dtype=np.float64) - cell
    n = [max(2, int(math.ceil((h - l) / cell)) + 2) for l, h in zip(lo, hi_mm)]
    g = rng.standard_normal(n, dtype=np.float32)
    g = ndimage.gaussian_filter(g, 1.0, mode="wrap")
    g /= max(float(g.std()), 1e-6)
    return CoarseField(g, lo, (cell, cell, cell))


def _smooth_1d(rng, n_terms=3, period_mm=(150.0, 400.0)):
    """A smooth random function of z (sum of a few sines), unit-ish amplitude."""
    periods = rng.uniform(*period_mm, size=n_terms)
    phases = rng.uniform(0, 2 * np.pi, size=n_terms)
    amps = rng.uniform(0.5, 1.0, size=n_terms) / n_terms

    def f(z):
        z = np.asarray(z, dtype=np.float64)
        return sum(a * np.sin(2 * np.pi * z / p + ph) for a, p, ph in zip(amps, periods, phases))
    return f
