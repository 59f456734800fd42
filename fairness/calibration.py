"""Simulated per-case tables with a known truth, to measure the audit's statistics as a user meets them.

The designs real cohorts have (SPEC §5): unequal group sizes, unequal spreads (the smallest group
the widest, the case where a pooled test errs most), symmetric or skewed per-case Dice with ties
and values at exactly 1.0, two or four groups. Every group of one design has the same true mean
Dice, so any rejection is a false alarm; `shifts` then lowers chosen groups by a known amount.

    design(sizes, ratio, shape)        the per-group spreads of one grid cell
    least_favourable_shifts(cell, gap) the layout of a true gap that is hardest to detect
    draw_table(rng, design, shifts)    one per-case table: columns case_id, group, mean
    GRID                               the cells bench/calibration.py and the suite measure

Shapes: "normal": N(0.90, s). "skewed": c - s Z clipped to [0, 1] and rounded to 0.01, with Z a
standardised Gamma(4) (skewness 1: a tail of poor cases): the rounding makes ties, the clip puts the
widest groups' best cases at exactly 1.0 (8 % of them at spread 8 points). "heavy": as skewed
with a standardised exponential Z (skewness 2). c is solved per spread (quadrature) so that every
group's true mean is 0.90 after the clip.

Failure discovery (fairness/discovery.py) has its own known truth: `planted_rule` draws a failing
subgroup (two conditions on different features, thresholds at a random case's value),
`discovery_recovery` plants it and counts how often the top confirmed slice finds it (Jaccard >=
0.6), `false_confirmations` counts confirmed slices on tables without one.

Usage:
    rng = np.random.default_rng(0)
    cell = design((30, 8), ratio=5, shape="skewed")
    per_case = draw_table(rng, cell)                          # equal true means
    per_case = draw_table(rng, cell, shifts=(0.0, 0.05))      # the second group 5 points lower
    per_case = draw_table(rng, cell, shifts=least_favourable_shifts(cell, 0.05))
"""
from __future__ import annotations

from dataclasses import dataclass

import functools
import math

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as scipy_stats

from fairness.welch import mean_intervals, test_variances

CENTRE = 0.90
WIDEST = 0.08                  # the widest group's spread: 8 Dice points (the 1.5 vs 8 of issue 25)
QUANTILES = 20000              # quadrature points of the true mean of a clipped shape
SHAPES = ("normal", "skewed", "heavy", "kits_kidney", "kits_tumor")
# per-case Dice that look like KiTS (issue 42): kidney 1 - Beta(1.3, 28) with 3 % failures drawn
# from U(0.5, 0.9) (mean 0.948, skewness about -3.6); tumor exactly 0 (a missed tumor) in 15 % of cases, else
# Beta(5, 1.6). Shifted to the design's centre (the tests see a location shift, nothing else).
KITS_SHAPES = ("kits_kidney", "kits_tumor")
KIDNEY_FAILURES, TUMOR_MISSES = 0.03, 0.15
GRID = [(sizes, ratio, shape) for sizes in ((20, 20), (30, 8), (12, 8), (6, 5, 7, 4))
        for ratio in (1, 3, 5) for shape in ("normal", "skewed")]


@dataclass(frozen=True)
class Design:
    sizes: tuple
    spreads: tuple
    shape: str

    @property
    def name(self) -> str:
        return f"{'+'.join(map(str, self.sizes))}, ratio {self.ratio:g}, {self.shape}"

    @property
    def ratio(self) -> float:
        return max(self.spreads) / min(self.spreads)


def design(sizes, ratio: float, shape: str = "normal") -> Design:
    """Spreads log-spaced from WIDEST / ratio to WIDEST, the widest for the smallest group; a KiTS-like
    shape has its own spread (ratio 1)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    k = len(sizes)
    if shape in KITS_SHAPES:
        return Design(tuple(int(n) for n in sizes), (kits_moments(shape)[1],) * k, shape)
    spreads = np.empty(k)
    spreads[np.argsort(sizes, kind="stable")[::-1]] = np.geomspace(1.0, ratio, k)
    spreads *= WIDEST / ratio
    return Design(tuple(int(n) for n in sizes), tuple(float(s) for s in spreads), shape)


def _standard(shape: str):
    """The standardised (mean 0, SD 1) law of Z: a frozen scipy distribution."""
    return scipy_stats.gamma(4.0, loc=-2.0, scale=0.5) if shape == "skewed" else scipy_stats.expon(loc=-1.0)


@functools.lru_cache(maxsize=None)
def location(spread: float, shape: str, mean: float = CENTRE) -> float:
    """c such that E[clip(c - spread Z, 0, 1)] = mean (midpoint quadrature over Z's quantiles)."""
    z = _standard(shape).ppf((np.arange(QUANTILES) + 0.5) / QUANTILES)
    return float(optimize.brentq(lambda c: np.clip(c - spread * z, 0, 1).mean() - mean, mean - 1, mean + 1))


def _kits_raw(rng: np.random.Generator, n, shape: str) -> np.ndarray:
    if shape == "kits_kidney":
        good = 1.0 - rng.beta(1.3, 28.0, n)
        return np.where(rng.random(n) < KIDNEY_FAILURES, rng.uniform(0.5, 0.9, n), good)
    return np.where(rng.random(n) < TUMOR_MISSES, 0.0, rng.beta(5.0, 1.6, n))


@functools.lru_cache(maxsize=None)
def kits_moments(shape: str) -> tuple[float, float]:
    """(mean, SD) of a KiTS-like shape before its shift (exact for the mixture)."""
    if shape == "kits_kidney":
        b = scipy_stats.beta(1.3, 28.0)
        m1, m2 = 1 - b.mean(), 1 - 2 * b.mean() + b.moment(2)
        u = scipy_stats.uniform(0.5, 0.4)
        f = KIDNEY_FAILURES
        mean, second = (1 - f) * m1 + f * u.mean(), (1 - f) * m2 + f * u.moment(2)
    else:
        b = scipy_stats.beta(5.0, 1.6)
        f = TUMOR_MISSES
        mean, second = (1 - f) * b.mean(), (1 - f) * b.moment(2)
    return float(mean), float(np.sqrt(second - mean ** 2))


def draw_values(rng: np.random.Generator, n, spread: float, shape: str, centre: float = CENTRE) -> np.ndarray:
    """n per-case values of one group (n an int or a shape): true mean `centre`, SD about `spread`
    (less where clipped; a KiTS-like shape keeps its own SD, shifted to the centre)."""
    if shape == "normal":
        return rng.normal(centre, spread, n)
    if shape in KITS_SHAPES:
        return _kits_raw(rng, n, shape) - kits_moments(shape)[0] + centre
    z = rng.gamma(4.0, 0.5, n) - 2.0 if shape == "skewed" else rng.exponential(1.0, n) - 1.0
    return np.clip(np.round(location(spread, shape, centre) - spread * z, 2), 0.0, 1.0)


def draw_table(rng: np.random.Generator, cell: Design, shifts=None) -> pd.DataFrame:
    """One per-case table of the design; group g's values lowered by shifts[g] (Dice fraction)."""
    shifts = (0.0,) * len(cell.sizes) if shifts is None else tuple(shifts)
    values = [draw_values(rng, n, s, cell.shape) - d for n, s, d in zip(cell.sizes, cell.spreads, shifts)]
    groups = np.repeat([f"g{i}" for i in range(len(cell.sizes))], cell.sizes)
    return pd.DataFrame({"case_id": [f"c{i:03d}" for i in range(len(groups))], "group": groups,
                         "mean": np.concatenate(values)})


def draw_stack(rng: np.random.Generator, cell: Design, replicates: int, shifts=None) -> np.ndarray:
    """(replicates, n) values of many tables at once, cases in group order (codes(cell)); shifts:
    (k,) or (replicates, k) lowerings."""
    k = len(cell.sizes)
    shifts = np.zeros((replicates, k)) + (0.0 if shifts is None else np.asarray(shifts, dtype=float))
    return np.concatenate([draw_values(rng, (replicates, n), s, cell.shape) - shifts[:, [g]]
                           for g, (n, s) in enumerate(zip(cell.sizes, cell.spreads))], axis=1)


def codes(cell: Design) -> np.ndarray:
    return np.repeat(np.arange(len(cell.sizes)), cell.sizes)


def least_favourable_shifts(cell: Design, gap: float) -> tuple:
    """Shifts giving a true best-minus-worst gap of `gap` that a Welch-type test finds least often:
    the two groups of the largest spread^2 / n at the ends, every other group at their precision-
    weighted mean (fairness.power.minimum_detectable_gap's layout)."""
    a = np.asarray(cell.spreads) ** 2 / np.asarray(cell.sizes)
    top, low = np.argsort(a, kind="stable")[::-1][:2]
    shifts = np.full(len(a), gap * a[top] / (a[top] + a[low]))   # 1/a-weighted mean of 0 and gap
    shifts[top], shifts[low] = 0.0, gap
    return tuple(float(s) for s in shifts)


def calibrate(cell: Design, replicates: int = 1000, *, seed: int = 0, n_perm: int = 400, level: float = 0.05) -> dict:
    """The audit's figures on `replicates` simulated tables of one design, as rates (fractions):

        false_alarm   share of null tables whose gap test (hence SD's and SER's) gives p < level
        power         share of tables with a true gap equal to the minimum detectable gap the
                      tool printed for a null table of the same design (from that table's own
                      spreads), laid out least favourably, that the test finds
        gap_cover     share of null tables whose best-minus-worst interval holds the true 0
        mean_cover    share of (table, group) whose group-mean interval holds the true mean
    """
    from fairness.power import mdg_from_spreads, pooled_kurtosis

    rng = np.random.default_rng(seed)
    k, group = len(cell.sizes), codes(cell)
    counts = np.bincount(group, minlength=k)
    null = draw_stack(rng, cell, replicates)
    first = gap_test(null, group, k, n_perm=n_perm, rng=rng)
    if k == 2:      # the test's own detectable gap (both directions), planted one way or the other
        printed = first["mdg"]
        printed = np.where(np.isfinite(printed), printed, 0.0)
        down = rng.random(replicates) < 0.5
        shifts = np.stack([np.where(down, printed, 0.0), np.where(down, 0.0, printed)], axis=1)
    else:
        variances = test_variances(null, group, k, floor=False)[0]
        printed = mdg_from_spreads(counts, np.sqrt(variances), level=level, estimated=True,
                                   kurtosis=pooled_kurtosis(null, group, k))
        printed = np.where(np.isfinite(printed), printed, 0.0)
        shifts = np.array([least_favourable_shifts(cell, d) for d in printed])
    planted = draw_stack(rng, cell, replicates, shifts)
    found = gap_test(planted, group, k, n_perm=n_perm, rng=rng)["p"]
    lo_g, hi_g = mean_intervals(null, group, k, n_boot=400, rng=rng)
    # groups of one case get no interval by design: coverage is over the groups that get one
    covered = [(lo_g[:, g] <= CENTRE) & (CENTRE <= hi_g[:, g]) for g in range(k) if counts[g] >= 2]
    p = first["p"]
    interval = np.isfinite(first["lo"])       # none where the best or the worst group has one case
    out = {"false_alarm": float(np.mean(p < level)), "power": float(np.mean(found < level)),
           "gap_cover": float(np.mean(first["lo"][interval] <= 0)) if interval.any() else math.nan,
           "mean_cover": float(np.mean(covered)),
           "mdg": float(np.median(printed))}
    if k == 2:      # the two tails: group 0 (the larger) found better, or the smaller one
        out["high"] = float(np.mean((p < level) & (first["diff"] > 0)))
        out["low"] = float(np.mean((p < level) & (first["diff"] < 0)))
    return out


def gap_test(values: np.ndarray, group: np.ndarray, k: int, *, n_perm: int, rng) -> dict:
    """The audit's gap test on stacked tables (fairness/significance.py's choice): two groups, Welch's t
    against its shape bootstrap ({"p", "diff", "lo"}: lo the lower end of the |gap| interval); more,
    the Welch-type parametric bootstrap (with the tie rule) and the Games-Howell interval."""
    from fairness.welch import gap_interval, group_moments, mean_test, pooled_variance, two_group_test

    if k == 2:
        two = two_group_test(values, group, n_boot=n_perm, rng=rng)
        lo = np.where(two["diff"] >= 0, two["lo"], -two["hi"])
        return {"p": two["p"], "diff": two["diff"], "lo": lo, "mdg": two["mdg"]}
    onehot = np.eye(k)[group]
    p, _ = mean_test(values, group, k, n_perm=n_perm, rng=rng)
    means, variances = group_moments(values, onehot, pooled_variance(values, group, k))
    variances = np.where(test_variances(values, group, k, floor=False)[1] == 1,
                         test_variances(values, group, k, floor=False)[0], variances)
    lo, _ = gap_interval(means, variances, onehot.sum(axis=0))
    return {"p": p, "diff": np.full(p.shape, np.nan), "lo": lo}


def calibrate_adjusted(cell: Design, replicates: int = 500, *, seed: int = 0, level: float = 0.05) -> float:
    """Share of null tables whose adjusted gap's interval (fairness.adjusted.adjusted_gap, one
    covariate "bmi" ~ N(28, 4) that lowers Dice 0.5 points a unit, the same law in every group)
    excludes 0: its false-alarm rate. One table at a time (OLS per table): slower than calibrate."""
    from fairness.adjusted import adjusted_gap

    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(replicates):
        per_case = draw_table(rng, cell)
        bmi = rng.normal(28.0, 4.0, len(per_case))
        per_case["mean"] -= 0.005 * (bmi - 28.0)
        per_case["bmi"] = bmi
        adj = adjusted_gap(per_case, "group", covariates=["bmi"], level=1 - level)
        rejected += bool(adj["lo"] > 0 or adj["hi"] < 0)
    return rejected / replicates


# ----------------------------------------------------------------------------- failure discovery
DISCOVERY_CENTRE, DISCOVERY_SPREAD = 0.85, 0.08


def planted_rule(features: pd.DataFrame, rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """The members (a mask over features' rows) of a random rule of two conditions on different
    features holding low..high cases: a numeric feature <= or > a random case's value, a
    categorical one == a random value."""
    def one():
        name = features.columns[rng.integers(features.shape[1])]
        column = features[name]
        if pd.api.types.is_numeric_dtype(column):
            values = column.dropna().to_numpy()
            cut = values[rng.integers(values.size)]
            return name, (column <= cut).to_numpy() if rng.random() < 0.5 else (column > cut).to_numpy()
        levels = column.dropna().unique()
        return name, (column == levels[rng.integers(len(levels))]).to_numpy()
    while True:
        (a, first), (b, second) = one(), one()
        members = first & second
        if a != b and low <= members.sum() <= high:
            return members


def discovery_recovery(features: pd.DataFrame, n_plants: int, *, seed: int, low: int, high: int,
                       drop: float = 0.15) -> tuple[float, float, list]:
    """(share of plants where some slice is confirmed, share where the top confirmed slice has
    Jaccard >= 0.6 with the planted members, every plant's Jaccard) over n_plants planted rules
    of low..high cases, `drop` lower than N(0.85, 0.08)."""
    from fairness.discovery import discover

    rng = np.random.default_rng(seed)
    ids = features.index.to_numpy()
    found_any, jaccards = 0, []
    for trial in range(n_plants):
        members = planted_rule(features, rng, low, high)
        values = rng.normal(DISCOVERY_CENTRE, DISCOVERY_SPREAD, len(ids))
        values[members] -= drop
        result = discover(pd.DataFrame({"case_id": ids, "mean": values}), features, seed=trial)
        confirmed = result.slices[result.slices["confirmed"]]
        jaccard = 0.0
        if len(confirmed):
            found = set(result.members.loc[result.members["rank"] == confirmed["rank"].iloc[0], "case_id"])
            planted = set(ids[members])
            jaccard = len(found & planted) / len(found | planted)
        found_any += len(confirmed) > 0
        jaccards.append(jaccard)
    return found_any / n_plants, float(np.mean(np.array(jaccards) >= 0.6)), jaccards


NULL_DRAWS = {
    "normal": lambda rng, n: rng.normal(DISCOVERY_CENTRE, DISCOVERY_SPREAD, n),
    "skewed": lambda rng, n: np.clip(1.02 - rng.gamma(0.7, 0.08, n), 0, 1),   # a long lower tail, ties at 1
}


def false_confirmations(features: pd.DataFrame, n_tables: int, *, seed: int, shape: str = "normal") -> float:
    """The share of null tables (no subgroup fails) in which discovery confirms a slice."""
    from fairness.discovery import discover

    rng = np.random.default_rng(seed)
    ids = features.index.to_numpy()
    confirmed = 0
    for trial in range(n_tables):
        values = NULL_DRAWS[shape](rng, len(ids))
        result = discover(pd.DataFrame({"case_id": ids, "mean": values}), features, seed=trial)
        confirmed += bool(result.slices["confirmed"].any())
    return confirmed / n_tables
