"""Stage planning from the patch size, nnU-Net's way: how many stages, their strides and widths.

Rule: stage 0 keeps full resolution (stride 1); every later stage halves each axis whose size
after halving stays >= `min_size` voxels (4, like nnU-Net's minimum feature-map edge); planning
stops when no axis can be halved or `max_stages` is reached. Features start at `base_features`
and double per stage, capped at `max_features` (nnU-Net: 32 .. 320).

    plan_stages((80, 160, 160))  # strides [1,1,1], [2,2,2] x 4, [1,2,2]; features 32..320 (SPEC §1)
    plan_stages((32, 32, 32))    # 4 stages: 32 -> 16 -> 8 -> 4

Usage:
    plan = plan_stages(patch_size, base_features=32, max_features=320)
    plan.strides, plan.features, plan.kernel_sizes, plan.bottleneck_size
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StagePlan:
    features: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]       # per stage; stage 0 is (1, 1, 1)
    kernel_sizes: tuple[tuple[int, int, int], ...]
    patch_size: tuple[int, int, int]

    @property
    def n_stages(self) -> int:
        return len(self.features)

    @property
    def stage_sizes(self) -> list[tuple[int, int, int]]:
        sizes, size = [], tuple(self.patch_size)
        for stride in self.strides:
            size = tuple(s // st for s, st in zip(size, stride))
            sizes.append(size)
        return sizes

    @property
    def bottleneck_size(self) -> tuple[int, int, int]:
        return self.stage_sizes[-1]


def plan_stages(patch_size, *, base_features: int = 32, max_features: int = 320, min_size: int = 4,
                max_stages: int = 6, kernel_size: int = 3) -> StagePlan:
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise ValueError(f"patch_size must be three positive ints (z, y, x), got {patch_size}")
    strides = [(1, 1, 1)]
    size = list(patch_size)
    while len(strides) < max_stages:
        stride = tuple(2 if s // 2 >= min_size and s % 2 == 0 else 1 for s in size)
        if stride == (1, 1, 1):
            break
        strides.append(stride)
        size = [s // st for s, st in zip(size, stride)]
    features = tuple(min(base_features * 2 ** i, max_features) for i in range(len(strides)))
    kernels = tuple((kernel_size,) * 3 for _ in strides)
    return StagePlan(features=features, strides=tuple(strides), kernel_sizes=kernels, patch_size=patch_size)


def check_patch_divisible(patch_size, strides) -> None:
    """Every axis must divide by the product of its strides, or skips and upsampling misalign."""
    total = [1, 1, 1]
    for stride in strides:
        total = [t * s for t, s in zip(total, stride)]
    bad = [f"axis {a}: {p} % {t}" for a, (p, t) in enumerate(zip(patch_size, total)) if p % t]
    if bad:
        raise ValueError(f"patch size {tuple(patch_size)} is not divisible by the network's total stride "
                         f"{tuple(total)} ({', '.join(bad)}); pick a patch size that is")
