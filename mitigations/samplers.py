"""Batch samplers: which cases go into which batch, and the seed of every patch.

A sampler yields batches of (case index, patch seed) pairs. Each epoch's batches are a pure
function of (seed, epoch), so training is reproducible, resuming at an epoch boundary replays
exactly, and DataLoader workers never duplicate each other (the seeds differ per item, not per
worker). Under DDP every rank takes every world_size-th batch of the same epoch plan, padded so
all ranks run the same number of steps.

An epoch is one pass over the training cases in batches (SPEC §1): ceil(n / batch) batches; or,
with steps_per_epoch (train.steps_per_epoch, nnU-Net's fixed-iteration epoch), exactly that many
batches for every sampler: the epoch's plan draws further passes, each like a fresh epoch's (a new
permutation, a new RESM draw, new stratified streams), until it holds steps_per_epoch batches, and
is cut there. Under DDP the steps are the total over the ranks (each rank runs
ceil(steps / world_size), padded as above), so two processes train as many batches as one.

    uniform     a seeded permutation of the cases each epoch (the baseline)
    resm        RESM: each group resampled to the same number of cases (target min / max / mean)
    stratified  every batch holds the same number of cases from each group

RESM and stratified batches are the study's pre-processing mitigations: mitigations/__init__.py
lists them with the others, and their Mitigation classes (the `sampler` hook) are at the end.

Usage:
    sampler = ResampledSampler(groups=group_per_case, target="min", n_cases=len(ds), batch_size=4, seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)
"""
from __future__ import annotations

import math

import numpy as np

from data.errors import ConfigError
from mitigations.base import Mitigation


class EpochBatchSampler:
    """Base: subclasses give `epoch_order(rng)`, the case indices of one epoch in batch order."""

    def __init__(self, *, n_cases: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 steps_per_epoch: int | None = None):
        if n_cases < 1:
            raise ValueError("the sampler has no cases")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                            or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a whole number >= 1 or None, got {steps_per_epoch!r}")
        self.n_cases, self.batch_size, self.seed = n_cases, batch_size, seed
        self.steps_per_epoch = steps_per_epoch
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
        if self.steps_per_epoch is not None:
            need = self.steps_per_epoch * self.batch_size
            while len(order) < need:              # further passes, each drawn like an epoch's
                order += list(self.epoch_order(rng))
            order = order[:need]
        seeds = rng.integers(0, 2 ** 63 - 1, size=len(order))
        items = list(zip(order, (int(s) for s in seeds)))
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        # every rank must step the same number of times: repeat batches from the start to pad
        n_steps = math.ceil(len(batches) / self.world_size) * self.world_size
        return [batches[i % len(batches)] for i in range(n_steps)]

    def __iter__(self):
        yield from self.epoch_batches()[self.rank::self.world_size]

    def __len__(self) -> int:
        n_batches = self.steps_per_epoch or math.ceil(self.epoch_length() / self.batch_size)
        return math.ceil(n_batches / self.world_size)

    def epoch_length(self) -> int:
        return self.n_cases


class UniformSampler(EpochBatchSampler):
    def epoch_order(self, rng: np.random.Generator) -> list[int]:
        return rng.permutation(self.n_cases).tolist()


def _by_group(groups) -> dict[str, list[int]]:
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return dict(sorted(members.items()))


class ResampledSampler(EpochBatchSampler):
    """RESM: every group contributes the same number of cases to an epoch.

    target "min" undersamples every group to the smallest one's size (the study's choice: 63 per
    sex group, 31 per age group), "max" oversamples to the largest, "mean" meets in between
    (rounded). Oversampling repeats whole permutations before drawing extra cases, so every case
    of a small group appears as evenly as possible. With redraw, each epoch draws anew; without,
    the set drawn in epoch 0 is kept (the study rebuilt its training set once).
    """

    TARGETS = ("min", "max", "mean")

    def __init__(self, *, groups, target: str = "min", redraw: bool = True, **common):
        super().__init__(**common)
        if target not in self.TARGETS:
            raise ValueError(f"unknown RESM target {target!r}; valid: {', '.join(self.TARGETS)}")
        self.members = _by_group(groups)
        sizes = [len(m) for m in self.members.values()]
        self.per_group = {"min": min(sizes), "max": max(sizes), "mean": int(round(sum(sizes) / len(sizes)))}[target]
        self.redraw = redraw

    def group_counts(self) -> dict[str, int]:
        return {g: self.per_group for g in self.members}

    def epoch_length(self) -> int:
        return self.per_group * len(self.members)

    def _draw(self, rng: np.random.Generator) -> list[int]:
        chosen = []
        for members in self.members.values():
            reps, extra = divmod(self.per_group, len(members))
            picks = [members[i] for _ in range(reps) for i in rng.permutation(len(members))]
            picks += [members[i] for i in rng.choice(len(members), size=extra, replace=False)]
            chosen += picks
        return chosen

    def epoch_order(self, rng: np.random.Generator) -> list[int]:
        if self.redraw:
            chosen = self._draw(rng)
        else:
            chosen = self._draw(np.random.default_rng([self.seed, 0, 1]))
        return [chosen[i] for i in rng.permutation(len(chosen))]


class StratifiedSampler(EpochBatchSampler):
    """Every batch holds batch_size / n_groups cases of every group (2 + 2 for sex at batch 4).

    An epoch has as many batches as a uniform one (ceil(n / batch)); each group's cases are drawn
    from its own reshuffled stream, so small groups repeat and large ones rotate.
    """

    def __init__(self, *, groups, **common):
        super().__init__(**common)
        self.members = _by_group(groups)
        if self.batch_size % len(self.members):
            raise ValueError(f"stratified batches need a batch size divisible by the {len(self.members)} groups "
                             f"({', '.join(self.members)}); got train.batch_size={self.batch_size}")
        self.per_batch = self.batch_size // len(self.members)

    def group_counts(self) -> dict[str, int]:
        n_batches = math.ceil(self.n_cases / self.batch_size)
        return {g: n_batches * self.per_batch for g in self.members}

    def epoch_length(self) -> int:
        return math.ceil(self.n_cases / self.batch_size) * self.batch_size

    def epoch_order(self, rng: np.random.Generator) -> list[int]:
        n_batches = math.ceil(self.n_cases / self.batch_size)
        streams = {}
        for group, members in self.members.items():
            need = n_batches * self.per_batch
            stream = []
            while len(stream) < need:
                stream += [members[i] for i in rng.permutation(len(members))]
            streams[group] = stream[:need]
        order = []
        for b in range(n_batches):
            batch = [c for stream in streams.values() for c in stream[b * self.per_batch:(b + 1) * self.per_batch]]
            order += [batch[i] for i in rng.permutation(len(batch))]
        return order


def uniform_sampler(*, n_cases: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                    steps_per_epoch: int | None = None):
    """The baseline's sampler: a seeded permutation of the training cases each epoch."""
    return UniformSampler(n_cases=n_cases, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                          steps_per_epoch=steps_per_epoch)


class _SamplerMitigation(Mitigation):
    needs_groups = True
    sampler_class = None

    def sampler(self, *, case_ids, **common):
        groups = [self.index.group_of(c) for c in case_ids]
        try:
            self.built = self.sampler_class(groups=groups, **self.settings, n_cases=len(case_ids), **common)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sampler {self.name!r} by {self.index.attribute}: {exc}") from None
        return self.built

    def describe(self) -> str:
        counts = self.built.group_counts() if getattr(self, "built", None) else {}
        steps = getattr(getattr(self, "built", None), "steps_per_epoch", None)
        per = f"per pass (epochs of {steps} batches: train.steps_per_epoch)" if steps else "per epoch"
        return (f"sampler {self.name} by {self.index.attribute}: cases per group {per} "
                + ", ".join(f"{g} {n}" for g, n in counts.items()))


class Resm(_SamplerMitigation):
    """RESM (fairness.resm: target min | max | mean, redraw): each group resampled to one size."""
    name = "resm"
    sampler_class = ResampledSampler


class Stratified(_SamplerMitigation):
    """Stratified batches: every batch holds batch_size / n_groups cases of each group."""
    name = "stratified"
    sampler_class = StratifiedSampler
