"""Sliding-window prediction over a whole preprocessed case (nnU-Net's way).

Tiles of the patch size step by `overlap` of the patch (0.5: half a patch), each tile's softmax
is weighted by a Gaussian importance map (sigma = patch / 8, so tile centres count most), tiles
are batched, and the weighted sum is normalised by the summed weights. A case smaller than the
patch is zero-padded (as in training) and the padding cropped off again. Optional test-time
mirroring averages the predictions of every flip of the chosen axes (all three: 8 flips; the
left-right axis alone: 2, a quarter of the cost).

Usage:
    probs = predict_case(model, image, patch_size=(32, 64, 64), device="cpu")  # (C, Z, Y, X)
    labels = probs.argmax(0)
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_importance(patch_size, sigma_scale: float = 1 / 8, device="cpu") -> torch.Tensor:
    """Separable Gaussian centred on the patch, max 1, min clamped above 0 (never a zero weight)."""
    axes = []
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float32, device=device) - (p - 1) / 2
        sigma = max(p * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    return g.clamp_min(g[g > 0].min())


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spread starts covering [0, size) with steps of at most patch * (1 - overlap)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    actual = (size - patch) / (n - 1)
    return [int(round(i * actual)) for i in range(n)]


MIRROR_AXES = (0, 1, 2)     # z, y, x of the image


def mirror_flips(mirror: bool, axes=MIRROR_AXES) -> list[tuple[int, ...]]:
    """The flips test-time mirroring adds to the plain prediction, as tensor dims of a (N, C, Z, Y, X)
    batch: every non-empty combination of the chosen spatial axes (none when mirror is off)."""
    if not mirror:
        return []
    dims = tuple(2 + int(a) for a in sorted(set(axes)))
    return [combo for r in range(1, len(dims) + 1) for combo in itertools.combinations(dims, r)]


def _forward(model, tiles: torch.Tensor, flips) -> torch.Tensor:
    def run(x):
        out = model(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    probs = torch.softmax(run(tiles).float(), dim=1)
    for axes in flips:
        probs += torch.softmax(run(tiles.flip(axes)).float(), dim=1).flip(axes)
    if flips:
        probs /= 1 + len(flips)
    return probs


def _axis_weight_sums(size: int, patch: int, starts, sigma_scale: float = 1 / 8, device="cpu") -> torch.Tensor:
    """Sum over the tiles of one axis of that axis' 1-D Gaussian factor (max 1), shifted to each start."""
    x = torch.arange(patch, dtype=torch.float32, device=device) - (patch - 1) / 2
    g = torch.exp(-0.5 * (x / max(patch * sigma_scale, 1e-3)) ** 2)
    g = g / g.max()
    total = torch.zeros(size, device=device)
    for s in starts:
        total[s:s + patch] += g
    return total


@torch.no_grad()
def predict_case(model, image, *, patch_size, overlap: float = 0.5, mirror: bool = False, mirror_axes=MIRROR_AXES,
                 tile_batch: int = 2, device="cpu", amp_dtype=None) -> torch.Tensor:
    """Class probabilities (C, Z, Y, X), float32 on the CPU, for an image (Z, Y, X) or (1, Z, Y, X);
    with `mirror`, averaged over the flips of `mirror_axes` (0 z, 1 y, 2 x)."""
    flips = mirror_flips(mirror, mirror_axes)
    image = np.asarray(image, dtype=np.float32)
    if not (image.flags.writeable and image.flags.c_contiguous):  # e.g. cached images: read-only memmaps
        image = np.array(image, dtype=np.float32, order="C")  # (never written to: tiles are copies)
    image = torch.from_numpy(image).to(device)  # the whole case moves once; tiles are cut on the device
    if image.dim() == 3:
        image = image[None]
    shape = image.shape[1:]
    patch_size = tuple(int(p) for p in patch_size)
    pad = []
    for s, p in zip(reversed(shape), reversed(patch_size)):
        extra = max(0, p - s)
        pad += [extra // 2, extra - extra // 2]
    padded = F.pad(image, pad) if any(pad) else image
    full = tuple(padded.shape[1:])
    weight = gaussian_importance(patch_size, device=device)
    axis_starts = [tile_starts(s, p, overlap) for s, p in zip(full, patch_size)]
    starts = list(itertools.product(*axis_starts))
    # The summed weights depend on the tiling alone, and the importance map is separable (the product of
    # one 1-D Gaussian per axis, max 1; its clamp never acts: the smallest product is ~exp(-24) > 0), so
    # they are the outer product of per-axis sums: one pass over the volume instead of one per tile
    # (equal to the tile-by-tile sum up to float rounding, a few 1e-7 relative).
    sums = [_axis_weight_sums(s, p, st, device=device) for s, p, st in zip(full, patch_size, axis_starts)]
    acc = None
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(starts), tile_batch):
            chunk = starts[i:i + tile_batch]
            tiles = torch.stack([padded[:, z:z + patch_size[0], y:y + patch_size[1], x:x + patch_size[2]]
                                 for z, y, x in chunk])
            with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
                probs = _forward(model, tiles, flips)
            if acc is None:
                acc = torch.zeros((probs.shape[1],) + full, device=device)
            probs *= weight  # the whole batch at once, in place
            for (z, y, x), p in zip(chunk, probs):
                acc[:, z:z + patch_size[0], y:y + patch_size[1], x:x + patch_size[2]] += p
    finally:
        model.train(was_training)
    acc /= sums[0][:, None, None] * sums[1][None, :, None] * sums[2][None, None, :]
    crop = tuple(slice(pad[2 * (2 - a)], pad[2 * (2 - a)] + shape[a]) for a in range(3))
    return acc[(slice(None),) + crop].cpu()
