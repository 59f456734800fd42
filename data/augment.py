"""The study's training augmentations (SPEC §1), written in torch for one sample at a time.

Applied after the pad + pos/neg crop of data/patches.py, in this order:
    3. random zoom 0.9..1.2, p 0.15      trilinear image, nearest label, same patch size kept
    4. Gaussian noise, std 0.01, p 0.15
    5. Gaussian smoothing, sigma per axis from (0.5, 1.15), p 0.15
    6. intensity scale x * (1 + U(-0.3, 0.3)), p 0.15
    7. flip along each of the three axes, each with p 0.5
Every random draw comes from the numpy Generator passed in, so a sample is a pure function of
its seed: the same seed gives the same patch in any worker, and resuming reproduces batches.
Spatial transforms act on image and label together and keep them aligned.

Usage:
    aug = Augmenter(AugmentSettings())               # the study's probabilities
    image, label = aug(image, label, rng)            # image (C, Z, Y, X) float32, label (Z, Y, X)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentSettings:
    zoom_p: float = 0.15
    zoom_range: tuple[float, float] = (0.9, 1.2)
    noise_p: float = 0.15
    noise_std: float = 0.01
    smooth_p: float = 0.15
    smooth_sigma: tuple[float, float] = (0.5, 1.15)
    scale_p: float = 0.15
    scale_range: tuple[float, float] = (-0.3, 0.3)
    flip_p: float = 0.5

    @classmethod
    def from_dict(cls, values: dict | None) -> "AugmentSettings":
        values = dict(values or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown augmentation setting(s) {unknown}; valid: {sorted(valid)}")
        return cls(**values)

    @classmethod
    def none(cls) -> "AugmentSettings":
        return cls(zoom_p=0.0, noise_p=0.0, smooth_p=0.0, scale_p=0.0, flip_p=0.0)


def _centre_fit(x: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the last three axes of x to `size`."""
    for axis, target in zip(range(-3, 0), size):
        current = x.shape[axis]
        if current > target:
            start = (current - target) // 2
            x = x.narrow(axis, start, target)
        elif current < target:
            before = (target - current) // 2
            pad = [0, 0] * 3
            idx = (-axis - 1) * 2
            pad[idx], pad[idx + 1] = before, target - current - before
            x = F.pad(x, pad)
    return x


def zoom(image: torch.Tensor, label: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom both by `factor` about the centre, keeping the patch size (MONAI RandZoom, keep_size)."""
    size = image.shape[-3:]
    new = [max(1, int(round(s * factor))) for s in size]
    image = F.interpolate(image[None], size=new, mode="trilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=new, mode="nearest-exact")[0, 0].to(label.dtype)
    return _centre_fit(image, size), _centre_fit(label, size)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(image: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur of the last three axes; edges replicated.

    Written as a weighted sum of shifted views along each axis: on the CPU this is ~7x faster
    than conv3d with 1D kernels for a 80 x 160 x 160 patch (one core).
    """
    x = image
    for axis, sigma in enumerate(sigmas):
        k = _gaussian_kernel(float(sigma))
        r = len(k) // 2
        dim = x.dim() - 3 + axis
        n = x.shape[dim]
        padded = x.index_select(dim, torch.arange(-r, n + r).clamp_(0, n - 1))
        out = padded.narrow(dim, 0, n) * float(k[0])
        for j in range(1, len(k)):
            out.add_(padded.narrow(dim, j, n), alpha=float(k[j]))
        x = out
    return x


class Augmenter:
    def __init__(self, settings: AugmentSettings):
        self.s = settings

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        s = self.s
        # Draw every decision up front, in a fixed order, so the stream of random numbers (and so
        # every later patch) does not depend on which transforms fired.
        draws = rng.random(8)
        zoom_factor = rng.uniform(*s.zoom_range)
        noise_seed = int(rng.integers(2 ** 31))
        sigmas = rng.uniform(*s.smooth_sigma, size=3)
        scale = rng.uniform(*s.scale_range)
        if draws[0] < s.zoom_p:
            image, label = zoom(image, label, zoom_factor)
        if draws[1] < s.noise_p:
            gen = torch.Generator().manual_seed(noise_seed)
            image = image + s.noise_std * torch.randn(image.shape, generator=gen, dtype=image.dtype)
        if draws[2] < s.smooth_p:
            image = gaussian_smooth(image, sigmas)
        if draws[3] < s.scale_p:
            image = image * (1.0 + scale)
        flip_axes = [axis for axis, d in zip((-3, -2, -1), draws[4:7]) if d < s.flip_p]
        if flip_axes:
            image, label = image.flip(flip_axes), label.flip(flip_axes)
        return image.contiguous(), label.contiguous()
