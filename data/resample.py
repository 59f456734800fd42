"""The one resampler of the project: nnU-Net's rule, written with separable torch kernels.

nnU-Net's rule (SPEC §1):
- new shape = round(old_spacing / new_spacing * old_shape), per axis;
- when the source (or else the target) spacing is anisotropic (max / min > 3), the coarse axis is
  resampled separately: in-plane with the chosen order, along the coarse axis with nearest
  neighbour (order_z = 0);
- images: cubic (order 3); labels: per-class one-hot, linear, then >= 0.5 (never cubic).

How we differ from nnU-Net (on purpose, for speed and memory): cubic is Keys' convolution kernel
(a = -0.75, what torch's bicubic uses) instead of skimage's B-spline, so image intensities differ
by a small interpolation error while the label rule is the same (linear one-hot + threshold,
nearest along the separate axis). Both use pixel-centre alignment and edge replication. Work is
done in chunks of slices so peak memory stays near the size of the input plus the output.

Usage:
    shape = resampled_shape(vol.shape, (0.5, 0.8, 0.8), (3.22, 1.62, 1.62))
    image = resample_image(ct, old_spacing=(5, .8, .8), new_spacing=(3.22, 1.62, 1.62))
    seg = resample_labels(seg, old_spacing=(5, .8, .8), new_spacing=(3.22, 1.62, 1.62))
    logits = resample_image(logits_czyx, ..., order=1)   # channels first is accepted
    for region, values in resample_image_slabs(probs_czyx, ..., order=1):   # the same, slab by slab
        labels[region] = values.argmax(0)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ANISOTROPY_THRESHOLD = 3.0
# Slices per in-plane chunk: large enough for torch's kernels to be efficient, small enough that
# the float32 chunk is a few tens of MB for a 512 x 512 slice.
CHUNK_VOXELS = 16 * 512 * 512


def resampled_shape(shape, old_spacing, new_spacing) -> tuple[int, int, int]:
    """round(old_spacing / new_spacing * shape), at least 1 voxel per axis."""
    return tuple(max(1, int(round(o / n * s))) for s, o, n in zip(shape, old_spacing, new_spacing))


def is_anisotropic(spacing, threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    return max(spacing) / min(spacing) > threshold


def separate_axis(old_spacing, new_spacing, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis nnU-Net resamples on its own, or None. Source anisotropy decides first."""
    for spacing in (old_spacing, new_spacing):
        if is_anisotropic(spacing, threshold):
            largest = np.flatnonzero(np.asarray(spacing) == max(spacing))
            # Two equally coarse axes: nnU-Net falls back to full 3D resampling.
            return int(largest[0]) if len(largest) == 1 else None
    return None


def _axis_taps(n_in: int, n_out: int, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (n_out, taps) and weights for 1D resampling, pixel-centre aligned, edge replicated."""
    scale = n_in / n_out
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    if order == 0:
        # floor((i + 0.5) * scale): torch's 'nearest-exact', scipy's order-0 map_coordinates.
        idx = centres.floor().long().clamp_(0, n_in - 1)[:, None]
        return idx, torch.ones_like(idx, dtype=torch.float32)
    src = centres - 0.5
    base = src.floor()
    t = (src - base)[:, None]
    if order == 1:
        offsets = torch.tensor([0, 1])
        weights = torch.cat([1 - t, t], dim=1)
    elif order == 3:
        a = -0.75
        offsets = torch.tensor([-1, 0, 1, 2])
        d = torch.cat([1 + t, t, 1 - t, 2 - t], dim=1)  # distance to each tap
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights = torch.where(d <= 1, near, far)
    else:
        raise ValueError(f"interpolation order must be 0, 1 or 3, got {order}")
    idx = (base.long()[:, None] + offsets[None, :]).clamp_(0, n_in - 1)
    return idx, weights.float()


def _resample_axis0(x: torch.Tensor, n_out: int, order: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Resample a (Z, ...) float tensor along its first axis, one output slice at a time; only
    output slices [start, stop) when given (each slice is computed the same way either way)."""
    n_in = x.shape[0]
    stop = n_out if stop is None else stop
    if n_in == n_out:
        return x[start:stop]
    idx, w = _axis_taps(n_in, n_out, order)
    if order == 0:
        return x.index_select(0, idx[start:stop, 0])
    out = torch.empty((stop - start,) + tuple(x.shape[1:]), dtype=x.dtype)
    for i in range(start, stop):
        acc = x[idx[i, 0]] * w[i, 0]
        for k in range(1, idx.shape[1]):
            acc.add_(x[idx[i, k]], alpha=float(w[i, k]))
        out[i - start] = acc
    return out


def _resample_inplane(volume: np.ndarray, size_yx: tuple[int, int], order: int,
                      transform=None) -> torch.Tensor:
    """2D resampling of every slice of a (Z, Y, X) array, in chunks of slices, to float32.

    `transform` maps a float32 chunk to the values to interpolate (e.g. a one-hot class mask),
    so label work never materialises a full-size float copy.
    """
    z, y, x = volume.shape
    out = torch.empty((z, *size_yx), dtype=torch.float32)
    step = max(1, CHUNK_VOXELS // max(1, y * x))
    same = (y, x) == tuple(size_yx)
    mode = {1: "bilinear", 3: "bicubic"}.get(order)
    for start in range(0, z, step):
        chunk = torch.from_numpy(np.ascontiguousarray(volume[start:start + step], dtype=np.float32))
        if transform is not None:
            chunk = transform(chunk)
        if same:
            out[start:start + step] = chunk
        elif order == 0:
            out[start:start + step] = F.interpolate(chunk[:, None], size=size_yx, mode="nearest-exact")[:, 0]
        elif mode is not None:
            out[start:start + step] = F.interpolate(chunk[:, None], size=size_yx, mode=mode,
                                                    align_corners=False)[:, 0]
        else:
            raise ValueError(f"interpolation order must be 0, 1 or 3, got {order}")
    return out


def _to_axis0(array: np.ndarray, axis: int) -> np.ndarray:
    return array if axis == 0 else np.moveaxis(array, axis, 0)


def _plan(shape, old_spacing, new_spacing, new_shape, threshold):
    new_shape = tuple(new_shape) if new_shape is not None else resampled_shape(shape, old_spacing, new_spacing)
    if len(shape) != 3 or len(new_shape) != 3:
        raise ValueError(f"expected 3D shapes, got {tuple(shape)} -> {new_shape}")
    axis = separate_axis(old_spacing, new_spacing, threshold)
    return new_shape, axis


def _resample_scalar(volume: np.ndarray, new_shape, axis: int | None, order: int, order_z: int,
                     transform=None) -> torch.Tensor:
    """Resample one 3D scalar field; `axis` (or axis 0 when None) is done last and separately."""
    lead = 0 if axis is None else axis
    moved = _to_axis0(volume, lead)
    moved_shape = (new_shape[lead],) + tuple(s for i, s in enumerate(new_shape) if i != lead)
    plane = _resample_inplane(moved, moved_shape[1:], order, transform)
    along = _resample_axis0(plane, moved_shape[0], order if axis is None else order_z)
    return along if lead == 0 else torch.movedim(along, 0, lead)


def resample_image(image: np.ndarray, old_spacing, new_spacing, *, new_shape=None, order: int = 3,
                   order_z: int = 0, anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """Resample a (Z, Y, X) or channels-first (C, Z, Y, X) array to float32."""
    if image.ndim == 4:
        return np.stack([resample_image(c, old_spacing, new_spacing, new_shape=new_shape, order=order,
                                        order_z=order_z, anisotropy_threshold=anisotropy_threshold)
                         for c in image])
    new_shape, axis = _plan(image.shape, old_spacing, new_spacing, new_shape, anisotropy_threshold)
    if tuple(image.shape) == new_shape:
        return np.asarray(image, dtype=np.float32)
    return _resample_scalar(image, new_shape, axis, order, order_z).numpy()


def resample_image_slabs(channels, old_spacing, new_spacing, *, new_shape=None, order: int = 3,
                         order_z: int = 0, anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
                         slab_voxels: int = CHUNK_VOXELS):
    """resample_image of a channels-first (C, Z, Y, X) array, handed over in slabs of the output.

    Yields (region, values): `region` three slices of the output volume, `values` a float32 (C, ...)
    tensor of the output there, the same numbers resample_image gives. Each channel is resampled
    in-plane once (at its input size along the axis done last), then that axis slab by slab, so
    the C full-size outputs never exist at once: a caller that reduces each slab (the argmax of
    data/writeback.py) needs C in-plane-resampled channels and one slab, not C whole volumes.
    """
    shape = tuple(channels.shape[1:])
    new_shape, axis = _plan(shape, old_spacing, new_spacing, new_shape, anisotropy_threshold)
    lead = 0 if axis is None else axis
    moved_shape = (new_shape[lead],) + tuple(s for i, s in enumerate(new_shape) if i != lead)
    planes = [_resample_inplane(_to_axis0(c, lead), moved_shape[1:], order) for c in channels]
    along = order if axis is None else order_z
    step = max(1, slab_voxels // max(1, len(planes) * moved_shape[1] * moved_shape[2]))
    for start in range(0, moved_shape[0], step):
        stop = min(moved_shape[0], start + step)
        values = torch.stack([_resample_axis0(p, moved_shape[0], along, start, stop) for p in planes])
        region = tuple(slice(start, stop) if i == lead else slice(None) for i in range(3))
        yield region, (values if lead == 0 else torch.movedim(values, 1, 1 + lead))


def resample_labels(labels: np.ndarray, old_spacing, new_spacing, *, new_shape=None, order: int = 1,
                    order_z: int = 0, anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
                    classes=None) -> np.ndarray:
    """Resample an integer label map: per class one-hot, linear, >= 0.5 (nnU-Net); order 0 = nearest.

    Classes are written in ascending order, so where two masks tie at 0.5 the higher label wins,
    as in nnU-Net. Voxels where no class reaches 0.5 become background.
    """
    new_shape, axis = _plan(labels.shape, old_spacing, new_spacing, new_shape, anisotropy_threshold)
    if tuple(labels.shape) == new_shape:
        return np.asarray(labels).astype(np.uint8, copy=True)
    if order == 0:
        return _resample_scalar(labels, new_shape, axis, 0, 0).to(torch.uint8).numpy()
    if classes is None:
        classes = np.unique(labels)
    out = torch.zeros(new_shape, dtype=torch.uint8)
    for c in sorted(int(c) for c in classes if c != 0):
        if axis is None:
            mask = _resample_scalar(labels, new_shape, None, order, order,
                                    transform=lambda chunk, c=c: (chunk == c).float())
            out[mask >= 0.5] = c
        else:
            # Threshold in-plane first, then nearest along the separate axis: nnU-Net's order_z = 0.
            moved = _to_axis0(labels, axis)
            plane_shape = tuple(s for i, s in enumerate(new_shape) if i != axis)
            plane = _resample_inplane(moved, plane_shape, order, transform=lambda chunk, c=c: (chunk == c).float())
            hit = (plane >= 0.5).to(torch.uint8)
            hit = _resample_axis0(hit, new_shape[axis], 0)
            hit = hit if axis == 0 else torch.movedim(hit, 0, axis)
            out[hit.bool()] = c
    return out.numpy()
