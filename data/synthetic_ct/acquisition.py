"""The acquisition model: the painted slabs turned into a CT, with white noise (std from BMI and the
slice, times the bias's `noise`), a Gaussian point spread (partial volume, plus the bias's
`blur_mm`) and a smooth multiplicative + additive scanner bias field, slab by slab.

    ct = render_ct(labels, spacing, bmi=31.0, rng=np.random.default_rng(0))   # int16 HU
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from data.synthetic_ct.anatomy import _Anatomy
from data.synthetic_ct.painters import F32, _render_slab

SLAB = 48  # slices rendered at once; bounds the working memory (float32 slabs of SLAB x Y x X)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


TRUNCATE = 3.0


def _gauss_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_axis(src: np.ndarray, kern: np.ndarray, axis: int, dst: np.ndarray) -> None:
    """dst = src correlated with a symmetric kernel along axis (edge values repeated), as a few
    whole-array shifted adds: much faster than a line-by-line filter along the strided axes."""
    r = len(kern) // 2
    n = src.shape[axis]

    def sl(a, b):
        idx = [slice(None)] * src.ndim
        idx[axis] = slice(a, b)
        return tuple(idx)

    np.multiply(src, kern[r], out=dst)
    for s in range(1, r + 1):
        k = kern[r + s]
        if s < n:
            dst[sl(0, n - s)] += k * src[sl(s, n)]
            dst[sl(s, n)] += k * src[sl(0, n - s)]
        m = min(s, n)
        dst[sl(n - m, n)] += k * src[sl(n - 1, n)]     # beyond the ends: the edge value
        dst[sl(0, m)] += k * src[sl(0, 1)]


def _slice_noise(seed: int, index: int, shape) -> np.ndarray:
    """Unit-variance white noise for one slice from (seed, slice index): a slice gets the same
    noise whichever slab draws it. Sum of two uniform bytes (triangular, ~5x cheaper than a normal
    draw); after the point-spread blur it is close to Gaussian."""
    g = np.random.default_rng([seed, index])
    n = int(np.prod(shape))
    b = np.frombuffer(g.bytes(2 * n), dtype=np.int8).reshape(2, n)
    out = b[0].astype(F32)
    out += b[1]
    out += 1.0          # each int8 has mean -0.5
    out *= F32(1.0 / math.sqrt(2.0 * (256.0 ** 2 - 1.0) / 12.0))
    return out.reshape(shape)


def _check_grid(labels, spacing, what="labels"):
    labels = np.asanyarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{what} must be a 3-D (z, y, x) array, got shape {labels.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or sp.min() <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    return labels, sp


def render_ct(labels: np.ndarray, spacing, *, bmi: float, rng: np.random.Generator, noise: float = 1.0,
              contrast: float = 1.0, blur_mm: float = 0.0, reference=None) -> np.ndarray:
    """Synthetic int16 HU volume around `labels` (see data/synthetic.synthesize_ct).

    Acquisition effects (data/bias.py; the defaults change nothing): `noise` multiplies the noise
    std; `contrast` scales the HU of kidney parenchyma and tumor about UNENHANCED_HU (the kidney /
    tumor difference x contrast exactly, before blur and noise); `blur_mm` adds a Gaussian point
    spread of that FWHM (mm, in quadrature with the case's own), the noise std staying the case's.
    reference: (labels, spacing) of the unbiased twin: the anatomy is laid out from it, so the
    render shares every random draw with the twin although the labels (tumor_scale) or the grid
    (slice_mm) differ; None: from `labels` themselves.
    """
    labels, sp = _check_grid(labels, spacing)
    if reference is None:
        an = _Anatomy(labels, sp, bmi, rng)
    else:
        ref_labels, ref_sp = _check_grid(*reference, what="reference labels")
        an = _Anatomy(ref_labels, ref_sp, bmi, rng, target=(labels, sp))
    an.contrast = float(contrast)
    # point spread: slice profile (~slice-thickness FWHM) combined with the in-plane kernel, so
    # coarse grids get voxel-sized partial volume and fine grids a ~1 mm blur
    psf2 = (0.425 * sp) ** 2 + np.asarray(an.psf_mm) ** 2
    if blur_mm > 0:
        psf2 = psf2 + (float(blur_mm) / FWHM_PER_SIGMA) ** 2
    sigma = np.sqrt(psf2) / sp
    kernels = [_gauss_kernel(s) for s in sigma]
    white_gain = math.sqrt(float(np.prod([np.sum(k.astype(np.float64) ** 2) for k in kernels])))
    noise_hu = an.noise_hu if noise == 1.0 else an.noise_hu * float(noise)
    pre_std = F32(noise_hu / white_gain)   # white-noise std before the blur
    halo = len(kernels[0]) // 2
    nz, ny, nx = labels.shape
    order = "F" if (labels.flags.f_contiguous and not labels.flags.c_contiguous) else "C"
    out = np.empty(labels.shape, dtype=np.int16, order=order)
    yc, xc = np.arange(ny) * sp[1], np.arange(nx) * sp[2]
    for z0 in range(0, nz, SLAB):
        z1 = min(nz, z0 + SLAB)
        a, b = max(0, z0 - halo), min(nz, z1 + halo)
        lab = np.ascontiguousarray(labels[a:b])
        val = _render_slab(an, lab, a)
        del lab
        for k in range(b - a):
            noise = _slice_noise(an.noise_seed, a + k, (ny, nx))
            noise *= pre_std
            val[k] += noise
        buf = np.empty_like(val)
        if len(kernels[0]) > 1:
            _blur_axis(val, kernels[0], 0, buf)
            val, buf = buf, val
        if len(kernels[1]) > 1:
            _blur_axis(val, kernels[1], 1, buf)
            val, buf = buf, val
        del buf
        if len(kernels[2]) > 1:   # along the contiguous axis the line filter is fast
            ndimage.correlate1d(val, kernels[2], axis=2, output=val, mode="nearest")
        core = val[z0 - a:z1 - a]
        # smooth scanner bias: multiplicative (gain drift) and additive (cupping-like offsets)
        bias = an.f_bias.sample(np.arange(z0, z1) * sp[0], yc, xc)
        core *= 1.0 + an.bias_mult * bias
        bias *= an.bias_add
        core += bias
        del bias
        np.clip(core, -1024.0, 3071.0, out=core)
        np.rint(core, out=core)
        out[z0:z1] = core
    return out
