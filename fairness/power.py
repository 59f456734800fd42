"""What these groups can detect: the minimum detectable gap of the test fairness/welch.py runs.

    minimum_detectable_gap   the smallest true best-minus-worst gap of group mean Dice that the
                             gap test detects with 80 % power at 5 %, from the group sizes and the
                             groups' own spreads, in the least favourable layout (the two least
                             precise groups at the ends, the others between), with the spreads'
                             own uncertainty averaged over (docs/statistics.md measures it)
    mdg_from_spreads         the same from sizes and SDs (true ones, or a table's estimates)
    pooled_kurtosis          how much a group's SD wanders beyond the normal case's

Usage:
    minimum_detectable_gap(per_case, "sex")          # 0.176: 17.6 points
    mdg_from_spreads([22, 18], [0.18, 0.20])         # known spreads
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.welch import group_moments, scored_values, test_variances, welch_dof


def minimum_detectable_gap(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                           level: float = 0.05, power: float = 0.8, spreads: Sequence[float] | None = None) -> float:
    """The smallest true best-minus-worst gap that group_gap_test detects with `power` at `level`,
    with the groups' own spreads (or `spreads`, one SD per group in table order); see the module.
    NaN with fewer than 2 groups of at least 2 scored cases."""
    values, codes, groups = scored_values(per_case, group_col, metric, order)
    counts = np.bincount(codes, minlength=len(groups))
    if len(groups) < 2 or np.sort(counts)[-2] < 2:
        return math.nan
    if spreads is None:   # the spreads the gap test uses: tied groups pooled, a smaller group floored
        variances, _ = test_variances(values, codes, len(groups), floor=len(groups) == 2)
        if not np.all(np.isfinite(variances)) or np.all(variances <= 0):
            return math.nan
        sds = np.sqrt(np.maximum(variances, 0.0)).tolist()
        return mdg_from_spreads(counts, sds, level=level, power=power, estimated=True,
                                kurtosis=pooled_kurtosis(values, codes, len(groups)))
    return mdg_from_spreads(counts, list(spreads), level=level, power=power)


def pooled_kurtosis(values: np.ndarray, codes: np.ndarray, n_groups: int):
    """Excess kurtosis of the residuals, each standardised by its own group's SD, pooled over the
    groups of at least 3 cases, floored at 0; over the last axis (a float, or an array over the
    leading axes). It says how much a group's sample SD wanders beyond the normal case's."""
    onehot = np.eye(n_groups)[codes]
    counts = onehot.sum(axis=0)
    means, variances = group_moments(values, onehot, 1.0)
    standard = (values - means @ onehot.T) / (np.sqrt(np.maximum(variances, 1e-12)) @ onehot.T)
    used = counts[codes] >= 3
    if not used.any():
        return 0.0 if values.ndim == 1 else np.zeros(values.shape[:-1])
    kurtosis = np.maximum(np.mean(standard[..., used] ** 4, axis=-1) - 3.0, 0.0)
    return float(kurtosis) if values.ndim == 1 else kurtosis


def mdg_from_spreads(counts: Sequence[int], spreads, *, level: float = 0.05, power: float = 0.8,
                     estimated: bool = False, kurtosis=0.0):
    """The detectable gap for groups of these sizes and SDs (Welch's noncentral F, least favourable
    layout: the two groups of the largest s^2 / n at the ends of the gap). spreads: one SD per
    group, or an array (..., k) of them: then an array of gaps (bisection, vectorised).

    estimated=False: the spreads are the true ones. estimated=True: they are a table's own
    estimates, and the gap is the one whose power, averaged over what the true spreads could be
    given them (the end pair's s^2 / n as a scaled chi-square of its Welch dof), is `power`: at
    the gap computed from the true spreads, the power averaged over tables would fall short
    (the estimate is as often too small as too large, and power is concave there: 69-75 % instead
    of 80 % at 30 vs 8 cases). `kurtosis` (excess, pooled_kurtosis) widens that uncertainty for
    skewed values: a group's s^2 then has dof 2 / (2 / (n - 1) + kurtosis / n) instead of n - 1."""
    counts = np.asarray(counts, dtype=float)
    sds = np.asarray(spreads, dtype=float)
    k = counts.shape[-1]
    if k < 2:
        return math.nan
    variances = np.maximum(sds ** 2, 1e-12)
    dof, scale = welch_dof(variances, counts)
    critical = (scale * scipy_stats.f.isf(level, k - 1, dof))[..., None]
    dof = dof[..., None]
    per_mean = variances / counts
    top = np.argsort(per_mean, axis=-1)[..., -2:]
    ends_each = np.take_along_axis(per_mean, top, -1)
    ends = ends_each.sum(axis=-1)
    if estimated:   # quantile midpoints of chi2(pair dof) / pair dof: what (true ends) / (estimated ends) can be
        n_ends = np.take_along_axis(np.broadcast_to(counts, per_mean.shape), top, -1)
        kurt = np.asarray(kurtosis, dtype=float)[..., None]
        own_dof = 2 / (2 / np.maximum(n_ends - 1, 1) + kurt / n_ends)
        pair_dof = ends ** 2 / np.sum(ends_each ** 2 / own_dof, axis=-1)
        share = scipy_stats.chi2.ppf((np.arange(12) + 0.5) / 12, pair_dof[..., None]) / pair_dof[..., None]
    else:
        share = np.ones(ends.shape + (1,))

    def power_at(noncentrality):   # mean power over the spreads' uncertainty, for each table
        return scipy_stats.ncf.sf(critical, k - 1, dof, noncentrality[..., None] * share).mean(axis=-1)

    low, high = np.zeros_like(ends), np.full_like(ends, 4.0)
    while np.any(short := power_at(high) < power):                  # widen until the power is passed
        high = np.where(short, 2 * high, high)
    for _ in range(32):                                   # the noncentrality, to 2^-32 of its bracket
        middle = (low + high) / 2
        below = power_at(middle) < power
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    gap = np.sqrt((low + high) / 2 * ends)
    gap = np.where(np.all(np.isfinite(sds), axis=-1), gap, np.nan)
    return float(gap) if gap.ndim == 0 else gap
