"""Training patches from the preprocessed cache: pad, pos/neg crop, then the augmentations.

A dataset item is addressed by (case index, sample seed): the sampler decides both, so a patch
is a pure function of them — the same in any DataLoader worker, and reproduced exactly on
resume. Images are memory-mapped and only the patch window is read.

Crop (SPEC §1, steps 1-2, like MONAI's SpatialPad + RandCropByPosNegLabel):
    - the case is (virtually) zero-padded symmetrically to at least the patch size;
    - with probability pos / (pos + neg) the patch is centred on a foreground voxel (drawn from
      the cached class locations, every class alike), otherwise on a background voxel;
    - the window is shifted to stay inside the padded case.

Usage:
    ds = PatchDataset("cache/demo", case_ids, patch_size=(32, 64, 64), augment=AugmentSettings())
    sample = ds[(3, 12345)]   # {"image": (1, Z, Y, X) float32, "label": (Z, Y, X) int64, "case": 3}

augment_on="device" (train.augment_on): the item is the crop alone, with "augment", its sample's
augmentation draws (data/augment.draw_plan, from the same generator at the same point), and the
trainer applies them on its device (data/augment.apply_batch); loader workers then only read and crop.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from data.augment import AUGMENT_ON, Augmenter, AugmentSettings, draw_plan
from data.cache import load_arrays, load_preprocessed


def crop_window(shape, patch_size, centre) -> tuple[list[int], list[int]]:
    """Start of the window in case coordinates (may be negative: padding) and the padded shape."""
    starts = []
    for s, p, c in zip(shape, patch_size, centre):
        padded = max(s, p)
        offset = (padded - s) // 2                      # symmetric padding before the case
        start = int(np.clip(c + offset - p // 2, 0, padded - p))
        starts.append(start - offset)
    return starts, [max(s, p) for s, p in zip(shape, patch_size)]


def read_window(array: np.ndarray, starts, patch_size, fill=0) -> np.ndarray:
    """array[starts : starts + patch] with out-of-range parts filled (reads only what exists)."""
    out = np.full(tuple(patch_size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, start, p in zip(array.shape, starts, patch_size):
        lo, hi = max(start, 0), min(start + p, s)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchDataset(Dataset):
    def __init__(self, cache_dir, case_ids, *, patch_size, augment: AugmentSettings | None = None,
                 pos_ratio: float = 1.0, neg_ratio: float = 1.0, groups=None, augment_on: str = "loader"):
        self.cache_dir = cache_dir
        self.case_ids = list(case_ids)
        # each case's position in the run's group index (data/group_index.py), carried by the batch
        self.groups = list(groups) if groups is not None else [-1] * len(self.case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.augment = augment if augment is not None else AugmentSettings()
        self.augmenter = Augmenter(self.augment)
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
        self.augment_on = augment_on
        if pos_ratio < 0 or neg_ratio < 0 or pos_ratio + neg_ratio == 0:
            raise ValueError(f"pos/neg ratio must be non-negative and not both 0, got {pos_ratio}:{neg_ratio}")
        self.pos_fraction = pos_ratio / (pos_ratio + neg_ratio)
        self._foreground = {}
        for case_id in self.case_ids:  # validate up front: a missing case fails here, by name
            _, _, props = load_preprocessed(cache_dir, case_id)
            locations = [np.asarray(v, dtype=np.int64).reshape(-1, 3) for v in props["class_locations"].values()]
            self._foreground[case_id] = [loc for loc in locations if len(loc)]

    def __len__(self) -> int:
        return len(self.case_ids)

    def _centre(self, case_id: str, label: np.ndarray, rng: np.random.Generator):
        foreground = self._foreground[case_id]
        if rng.random() < self.pos_fraction and foreground:
            cls = foreground[rng.integers(len(foreground))]  # every class alike, small tumors too
            return cls[rng.integers(len(cls))]
        for _ in range(20):  # background voxel by rejection; nearly every voxel is background
            centre = [int(rng.integers(s)) for s in label.shape]
            if label[tuple(centre)] == 0:
                return centre
        return centre

    def __getitem__(self, key):
        index, seed = key
        case_id = self.case_ids[index]
        rng = np.random.default_rng(seed)
        # arrays only: the properties (with thousands of class locations) were read in __init__
        image, label = load_arrays(self.cache_dir, case_id)
        centre = self._centre(case_id, label, rng)
        starts, _ = crop_window(label.shape, self.patch_size, centre)
        image_patch = torch.from_numpy(read_window(image, starts, self.patch_size, fill=0.0))[None]
        label_patch = torch.from_numpy(read_window(label, starts, self.patch_size, fill=0).astype(np.int64))
        item = {"case": index, "group": self.groups[index]}
        if self.augment_on == "device":   # the same draws, applied by the trainer on its device
            item["augment"] = draw_plan(self.augment, rng)
        else:
            image_patch, label_patch = self.augmenter(image_patch, label_patch, rng)
        return {"image": image_patch, "label": label_patch, **item}
