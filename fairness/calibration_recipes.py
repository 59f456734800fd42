"""Simulated per-case tables of several trained runs per recipe, with the seeds' and the cases'
variance components, to measure the recipe-level tests (fairness/recipe.py) as a mitigation study
meets them: a few seeds per method, two or four groups, skewed per-case Dice with misses at 0.

Model (Dice fractions) for recipe m, run (seed) r, test case i of group g:

    latent = CENTRE + a_i + s_{m,r} + t_{m,r,g} + e_{m,r,i} + x_{m,i}
    a_i        the case's difficulty, shared by every run of every recipe: SD CASE_SD
    s_{m,r}    the seed's shift of every case (a better or a worse model): SD SEED_SD x spread
    t_{m,r,g}  the seed's shift of one group: SD GROUP_SEED_SD x spread (the gap's seed SD is
               sqrt(2) of it)
    e_{m,r,i}  case-by-seed noise: SD CASE_SEED_SD
    x_{m,i}    the recipe-by-case interaction (0 unless `interaction`; added after the shape, so
               its mean is exactly 0): a method helps some cases more than others, so another
               set of test cases gives another Δ

The SDs are the components measured on the kept evidence runs (docs/evidence/, kidney Dice, points):
between seeds 1.4 on the mean and 1.1 on the sex gap, case x seed 3.4, case 7.6 (issue 41).
Shapes: "normal": the value is the latent. "kits": a_i is skewed (a negated standardised Gamma(2):
a tail of hard cases), the value is min(latent, 1) (ties at 1), and a run misses the structure
(value exactly 0) where the latent falls below MISS: about 10 % of cases, more in some runs than in
others, tied at 0.

    RecipeDesign(seeds, sizes, spread, shape)   one cell of the grid
    draw_cases / draw_runs                      (tables, runs, cases) arrays
    calibrate_recipes(design, replicates)       the rates bench/calibration_recipes.py prints

Usage:
    cell = RecipeDesign(seeds=5, sizes=(28, 20), spread=1.0, shape="kits")
    rates = calibrate_recipes(cell, replicates=2000, seed=0)
    rates["false_alarm"]["sd"], rates["power"]["mean"], rates["cover"]["gap"]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fairness.recipe import STATISTICS, _delta_arrays, _gap_arrays

CENTRE = 0.80
CASE_SD, SEED_SD, GROUP_SEED_SD, CASE_SEED_SD = 0.076, 0.014, 0.011 / np.sqrt(2), 0.034
INTERACTION_SD = 0.03          # the recipe-by-case interaction of the effect designs (3 points)
BASE_GAP = 0.15                # a real gap in both recipes, for the SD's and the worst group's power
MISS = 0.45
SHAPES = ("normal", "kits")
GRID = [(seeds, sizes, spread, shape) for seeds in (2, 3, 5, 10) for sizes in ((28, 20), (14, 12, 12, 10))
        for spread in (0.5, 1.0, 3.0) for shape in SHAPES]


@dataclass(frozen=True)
class RecipeDesign:
    seeds: int
    sizes: tuple
    spread: float = 1.0          # the seed SDs x this (0.5x, 1x, 3x the measured ones)
    shape: str = "normal"

    @property
    def name(self) -> str:
        return f"{self.seeds} seeds, {'+'.join(map(str, self.sizes))}, seed spread x{self.spread:g}, {self.shape}"

    @property
    def codes(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.sizes)), self.sizes)


def draw_cases(rng: np.random.Generator, design: RecipeDesign, tables: int) -> np.ndarray:
    """(tables, n) case difficulties a_i, shared by every run of every recipe of a table."""
    n = sum(design.sizes)
    if design.shape == "kits":
        return -CASE_SD * (rng.gamma(2.0, 1 / np.sqrt(2.0), (tables, n)) - np.sqrt(2.0))
    return rng.normal(0.0, CASE_SD, (tables, n))


def draw_runs(rng: np.random.Generator, design: RecipeDesign, cases: np.ndarray, runs: int, *,
              group_shift=None, interaction: float = 0.0, spread: float | None = None) -> np.ndarray:
    """(tables, runs, n) per-case values of one recipe's runs on these cases. group_shift: (k,) or
    (tables, k) added to each group's values (a planted effect, after the shape); spread: the seed
    SDs' multiplier (default: the design's)."""
    tables, n = cases.shape
    k = len(design.sizes)
    codes = design.codes
    spread = design.spread if spread is None else spread
    seed = rng.normal(0.0, SEED_SD * spread, (tables, runs, 1))
    group = rng.normal(0.0, GROUP_SEED_SD * spread, (tables, runs, k))[..., codes]
    noise = rng.normal(0.0, CASE_SEED_SD, (tables, runs, n))
    latent = CENTRE + cases[:, None, :] + seed + group + noise
    if design.shape == "kits":
        latent = np.where(latent < MISS, 0.0, np.minimum(latent, 1.0))
    if interaction:      # after the shape, so that its mean over test sets is exactly 0
        latent = latent + rng.normal(0.0, interaction, (tables, 1, n))
    if group_shift is not None:
        shift = np.broadcast_to(np.asarray(group_shift, dtype=float), (tables, k))
        latent = latent + shift[:, None, codes]
    return latent


def _planted(design: RecipeDesign, statistic: str, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift of recipe A, shift of recipe B) per group (tables, k) for a true Δ of `size` (tables,)
    in `statistic` (its A/A twin is drawn with A's shift on both sides): mean, every case of B up by
    size; gap (two groups), B's group 0 up; worst and SD (two groups, BASE_GAP between them in both
    recipes, so the worse group stays the worse and the gap far from 0), B's worse group down by
    size (Δ worst = -size), or by 2 x size (Δ SD = +size: SD of two means = |gap| / 2)."""
    k, t = len(design.sizes), size.shape[0]
    base = np.zeros((t, k))
    if statistic in ("worst", "sd"):
        base[:, 1] = -BASE_GAP
    shift = base.copy()
    if statistic == "mean":
        shift += size[:, None]
    elif statistic == "gap":
        shift[:, 0] += size
    elif statistic == "worst":
        shift[:, 1] -= size
    elif statistic == "sd":
        shift[:, 1] -= 2 * size
    return base, shift


TRUTH_SIGN = {"mean": 1.0, "gap": 1.0, "worst": -1.0, "sd": 1.0}
POWERED = {"mean": None, "gap": 2, "worst": 2, "sd": 2}     # statistic -> the k its planted truth needs


def _pooled(stacks, codes, k, homogeneity: float = 0.0) -> dict:
    """{statistic: (between-seed variance pooled over the stacks' recipes, its dof, whether each
    table pools: Bartlett's p >= homogeneity)}, per table."""
    from fairness.recipe import bartlett_p, run_statistics

    onehot = np.eye(k)[codes]
    per = [run_statistics(x, onehot) for x in stacks]
    out = {}
    for s in STATISTICS:
        var = np.stack([p[s].var(axis=-1, ddof=1) for p in per], axis=-1)
        dof = np.array([x.shape[-2] - 1 for x in stacks], dtype=float)
        pooled = (var * dof).sum(axis=-1) / dof.sum()
        ok = np.ones(pooled.shape, bool) if homogeneity <= 0 else bartlett_p(var, dof) >= homogeneity
        out[s] = (pooled, dof.sum(), ok)
    return out


def calibrate_recipes(design: RecipeDesign, replicates: int = 1000, *, seed: int = 0, level: float = 0.95,
                      seed_variance: str = "own", others: int = 0, other_spread: float | None = None,
                      b_spread: float | None = None, homogeneity: float = 0.0) -> dict:
    """The recipe-level tests on `replicates` simulated tables of one design, as rates (fractions):

        false_alarm[s]   A/A: two recipes of one law, `seeds` runs each: share with p < 0.05
        low, high[s]     the two tails of it (Δ significantly below / above 0)
        detectable[s]    median printed detectable Δ (fractions)
        power[s]         share of tables with a true Δ equal to the Δ its A/A twin (same design,
                         same base gap) printed detectable (planted as _planted says) that the
                         test finds, in the right direction
        cover[s]         share of tables with a true Δ of the median printed detectable and a
                         recipe-by-case interaction of INTERACTION_SD whose interval holds it
        gap_false_alarm  one recipe, no group effect: share whose own gap is beyond noise
        gap_cover        one recipe with group 0 planted 5 points up: share whose interval holds 5
    seed_variance: "own" (Welch across seeds), "pair" (pooled over the two recipes compared) or
    "table" (pooled over them and `others` further recipes of the table, whose seed spread is
    other_spread: the design's when None). b_spread: recipe B's seed spread multiplier (default the
    design's): a noisier recipe, not a better one, is still an A/A comparison of means. homogeneity
    > 0: pool only the tables whose Bartlett p (fairness.recipe.pool_spreads) is at least this,
    Welch across seeds in the others.
    """
    rng = np.random.default_rng(seed)
    codes, k = design.codes, len(design.sizes)
    alpha = 1 - level

    def compare(cases, base, shift, interaction=0.0):
        a = draw_runs(rng, design, cases, design.seeds, group_shift=base)
        b = draw_runs(rng, design, cases, design.seeds, group_shift=shift, interaction=interaction, spread=b_spread)
        pooled = None
        if seed_variance == "pair":
            pooled = _pooled([a, b], codes, k, homogeneity)
        elif seed_variance == "table":
            extra = [draw_runs(rng, design, cases, design.seeds, group_shift=base, spread=other_spread)
                     for _ in range(others)]
            pooled = _pooled([a, b, *extra], codes, k, homogeneity)
        own = _delta_arrays(a, b, codes, k, higher_is_better=True, level=level)
        if pooled is None:
            return own
        shared = _delta_arrays(a, b, codes, k, higher_is_better=True, level=level,
                               pooled={s: v[:2] for s, v in pooled.items()})
        return {s: {key: np.where(pooled[s][2], shared[s][key], own[s][key]) for key in own[s]} for s in own}

    zero = np.zeros((replicates, k))
    null = compare(draw_cases(rng, design, replicates), zero, zero)
    out = {"false_alarm": {}, "low": {}, "high": {}, "detectable": {}, "power": {}, "cover": {}}
    for s in STATISTICS:
        r = null[s]
        p = r["p"]
        out["false_alarm"][s] = float(np.mean(p < alpha))
        out["low"][s] = float(np.mean((p < alpha) & (r["delta"] < 0)))
        out["high"][s] = float(np.mean((p < alpha) & (r["delta"] > 0)))
        out["detectable"][s] = float(np.nanmedian(r["detectable"]))
    for s, needs in POWERED.items():
        if needs is not None and needs != k:
            continue
        base, _ = _planted(design, s, np.zeros(replicates))
        twin = compare(draw_cases(rng, design, replicates), base, base)[s]["detectable"]
        printed = np.isfinite(twin)
        size = np.where(printed, twin, 0.0)
        base, shift = _planted(design, s, size)
        r = compare(draw_cases(rng, design, replicates), base, shift)[s]
        truth = TRUTH_SIGN[s] * size
        found = (r["p"] < alpha) & (np.sign(r["delta"]) == np.sign(truth))
        out["power"][s] = float(np.mean(found[printed]))
        fixed = np.full(replicates, float(np.nanmedian(twin)))
        base, shift = _planted(design, s, fixed)
        r = compare(draw_cases(rng, design, replicates), base, shift, INTERACTION_SD)[s]
        truth = TRUTH_SIGN[s] * fixed
        out["cover"][s] = float(np.mean((r["lo"] <= truth) & (truth <= r["hi"])))
    one = draw_runs(rng, design, draw_cases(rng, design, replicates), design.seeds)
    out["gap_false_alarm"] = float(np.mean(_gap_arrays(one, codes, k, higher_is_better=True, level=level)["reject"]))
    planted = np.zeros(k)
    planted[0] = 0.05
    one = draw_runs(rng, design, draw_cases(rng, design, replicates), design.seeds, group_shift=planted)
    gap = _gap_arrays(one, codes, k, higher_is_better=True, level=level)
    # two groups: group 0 minus group 1 is 5 points; more: best minus worst of means where group 0
    # is 5 points above the others, also 5 points
    out["gap_cover"] = float(np.mean((gap["lo"] <= 0.05) & (0.05 <= gap["hi"])))
    return out
