"""The model's own view of a case: its bottleneck features, pooled (failure discovery's `embedding` family).

The encoder's deepest stage (the bottleneck; after its dMoE layer where FairDRO put one) is run on
non-overlapping tiles of the patch size covering the preprocessed case, each tile's feature map is
averaged over its positions, and the tiles are averaged: one vector of the bottleneck's width per
case. Only the encoder runs (no decoder, no mirroring), so it costs a fraction of a prediction.
A case smaller than the patch is zero-padded, as the sliding window does.

Usage:
    vector = case_embedding(network, image, patch_size=(32, 64, 64))      # (C,) float32 numpy
    vector = case_embedding(network, image, patch_size=..., group=1)      # a group-routed network
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from models.inference import tile_starts


@torch.no_grad()
def case_embedding(network, image, *, patch_size, group: int | None = None, tile_batch: int = 2,
                   device="cpu", amp_dtype=None) -> np.ndarray:
    """The pooled bottleneck vector of one preprocessed image (Z, Y, X) or (1, Z, Y, X)."""
    encoder = getattr(network, "encoder", None)
    if encoder is None:
        raise TypeError(f"{type(network).__name__} has no encoder: embeddings need a segmentation network")
    image = torch.as_tensor(np.array(image, dtype=np.float32, order="C"), device=device)
    if image.dim() == 3:
        image = image[None]
    patch = tuple(int(p) for p in patch_size)
    pad = []
    for s, p in zip(reversed(image.shape[1:]), reversed(patch)):
        extra = max(0, p - s)
        pad += [extra // 2, extra - extra // 2]
    padded = F.pad(image, pad) if any(pad) else image
    starts = list(itertools.product(*(tile_starts(s, p, 0.0) for s, p in zip(padded.shape[1:], patch))))
    was_training = network.training
    network.eval()
    total, count = None, 0
    try:
        for i in range(0, len(starts), tile_batch):
            chunk = starts[i:i + tile_batch]
            tiles = torch.stack([padded[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in chunk])
            groups = None if group is None else torch.full((len(chunk),), int(group), dtype=torch.long, device=device)
            with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
                deepest = encoder(tiles, groups)[-1]
            pooled = deepest.float().mean(dim=(2, 3, 4)).sum(0)
            total = pooled if total is None else total + pooled
            count += len(chunk)
    finally:
        network.train(was_training)
    return (total / count).cpu().numpy().astype(np.float32)
