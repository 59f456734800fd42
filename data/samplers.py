"""Batch samplers: which cases go into which batch, and the seed of every patch.

A sampler yields batches of (case index, patch seed) pairs. Each epoch's batches are a pure
function of (seed, epoch), so training is reproducible, resuming at an epoch boundary replays
exactly, and DataLoader workers never duplicate each other (the seeds differ per item, not per
worker). Under DDP every rank takes every world_size-th batch of the same epoch plan, padded so
all ranks run the same number of steps.

An epoch is one pass over the training cases in batches (SPEC §1): ceil(n / batch) batches.

    uniform   a seeded permutation of the cases each epoch (the baseline)

Usage:
    sampler = build_sampler({"name": "uniform"}, n_cases=len(ds), batch_size=4, seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)
"""
from __future__ import annotations

import math

import numpy as np


class EpochBatchSampler:
    """Base: subclasses give `epoch_order(rng)`, the case indices of one epoch in batch order."""

    def __init__(self, *, n_cases: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if n_cases < 1:
            raise ValueError("the sampler has no cases")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n_cases, self.batch_size, self.seed = n_cases, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self, rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    def epoch_batches(self) -> list[list[tuple[int, int]]]:
        """All batches of this epoch (every rank's), as (case index, patch seed) pairs."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = list(self.epoch_order(rng))
        seeds = rng.integers(0, 2 ** 63 - 1, size=len(order))
        items = list(zip(order, (int(s) for s in seeds)))
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        # every rank must step the same number of times: repeat batches from the start to pad
        n_steps = math.ceil(len(batches) / self.world_size) * self.world_size
        return [batches[i % len(batches)] for i in range(n_steps)]

    def __iter__(self):
        yield from self.epoch_batches()[self.rank::self.world_size]

    def __len__(self) -> int:
        n_batches = math.ceil(self.epoch_length() / self.batch_size)
        return math.ceil(n_batches / self.world_size)

    def epoch_length(self) -> int:
        return self.n_cases


class UniformSampler(EpochBatchSampler):
    def epoch_order(self, rng: np.random.Generator) -> list[int]:
        return rng.permutation(self.n_cases).tolist()


SAMPLERS = {"uniform": UniformSampler}


def build_sampler(cfg: dict, *, n_cases: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
    cfg = dict(cfg)
    name = cfg.pop("name", "uniform")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    for key in ("pos_ratio", "neg_ratio"):  # patch-level options, read by the dataset
        cfg.pop(key, None)
    if cfg:
        raise ValueError(f"sampler {name!r} has no option(s) {sorted(cfg)}")
    return SAMPLERS[name](n_cases=n_cases, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
