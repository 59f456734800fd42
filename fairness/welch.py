"""Group means compared when their spreads differ: Welch's machinery, vectorised over tables.

Each group keeps its own spread (a group with more small tumors has a wider per-case Dice
spread), never one pooled spread:

    scored_values      (values, group codes, groups) of the cases with a group and a metric value
    pooled_variance    the within-group variance pooled over groups (what a one-case group gets)
    group_moments      group means and variances (ddof 1) over the last axis of a stack of tables
    welch_statistic    sum_g n_g / s_g^2 (m_g - m_w)^2: Welch's t^2 for two groups
    welch_dof          Welch's F dof and scale (Welch-Satterthwaite for two groups)
    mean_test          H0 "equal group means, spreads free": Welch's t for two groups; for more,
                       the Welch-type statistic against its parametric bootstrap under H0
                       (Krishnamoorthy, Lu & Mathew 2007)
    gap_interval       best minus worst with Welch's interval, simultaneous over the pairs for
                       k > 2 (Games-Howell: the studentised range)
    range_quantile     the studentised range's quantile, tabulated (scipy's ppf is slow)

Why these tests and not others: fairness/significance.py's docstring and docs/statistics.md.

Usage:
    p, name = mean_test(values, codes, n_groups=2)               # values (..., n): one p per table
    means, variances = group_moments(values, np.eye(k)[codes], pooled_variance(values, codes, k))
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.grouping import group_order

WELCH_T_TEST = "Welch t"
BOOTSTRAP_TEST = "Welch-type, parametric bootstrap"


def scored_values(per_case: pd.DataFrame, group_col: str, metric: str, order):
    """(values, group codes, group names) of the cases with a group and a metric value."""
    frame = per_case[[group_col, metric]].dropna()
    groups = [g for g in group_order(frame[group_col], order=order) if (frame[group_col] == g).any()]
    codes = frame[group_col].map({g: i for i, g in enumerate(groups)}).to_numpy(dtype=np.int64)
    return frame[metric].to_numpy(dtype=float), codes, groups


def pooled_variance(values: np.ndarray, codes: np.ndarray, n_groups: int):
    """The within-group variance pooled over the groups (what a one-case group is given), over the
    last axis of values (..., n): a float for one table, an array for a stack of them."""
    counts = np.bincount(codes, minlength=n_groups)
    dof = values.shape[-1] - int((counts > 0).sum())
    if dof < 1:
        return math.nan if values.ndim == 1 else np.full(values.shape[:-1], np.nan)
    onehot = np.eye(n_groups)[codes]
    means = values @ onehot / np.maximum(counts, 1)
    pooled = np.sum((values - means @ onehot.T) ** 2, axis=-1) / dof
    return float(pooled) if values.ndim == 1 else pooled


def group_moments(values: np.ndarray, onehot: np.ndarray, pooled) -> tuple[np.ndarray, np.ndarray]:
    """Group means and variances (ddof 1) over the last axis of values (..., n); onehot (n, G);
    pooled: a float or an array over values' leading axes (or fewer: it broadcasts from the left).

    A group of one case has no variance of its own: it gets the pooled one. Variances are floored
    at a millionth of the pooled one, so a group whose cases tie (all at Dice 1) has a finite weight.
    """
    counts = onehot.sum(axis=0)
    means = values @ onehot / counts
    squares = (values ** 2) @ onehot
    pooled = np.asarray(pooled, dtype=float)
    pooled = pooled.reshape(pooled.shape + (1,) * (means.ndim - pooled.ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        variances = (squares - counts * means ** 2) / (counts - 1)
    variances = np.where(counts >= 2, variances, pooled)
    return means, np.maximum(variances, 1e-6 * pooled + 1e-12)


def welch_statistic(means: np.ndarray, variances: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sum_g w_g (m_g - m_w)^2 with w_g = n_g / s_g^2 and m_w the w-weighted mean (last axis).

    Its large-sample null law is chi-square(k - 1) whatever the spreads (Chung & Romano 2013);
    with two groups it is Welch's t squared.
    """
    weights = counts / variances
    centre = (weights * means).sum(axis=-1, keepdims=True) / weights.sum(axis=-1, keepdims=True)
    return (weights * (means - centre) ** 2).sum(axis=-1)


def welch_dof(variances: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(denominator dof, scale) of Welch's F over the last axis: F = T / (k - 1) / scale is about
    F(k - 1, dof) under H0. Two groups: the Welch-Satterthwaite dof, scale 1. A one-case group
    counts as two."""
    k = counts.shape[-1]
    n = np.maximum(counts, 2)
    weights = counts / variances
    h = np.sum((1 - weights / weights.sum(axis=-1, keepdims=True)) ** 2 / (n - 1), axis=-1)
    return (k * k - 1) / (3 * h), 1 + 2 * (k - 2) * h / (k * k - 1)


def mean_test(values: np.ndarray, codes: np.ndarray, n_groups: int, *, n_perm: int = 5000,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
    """(p, test name) of H0 "equal group means, spreads free" for each table of values (..., n),
    one group code per case (module docstring: two groups, Welch's t; more, the parametric
    bootstrap of the Welch-type statistic with n_perm draws). Vectorised over the leading axes, so a
    calibration check runs thousands of tables at once."""
    onehot = np.eye(n_groups)[codes]
    counts = onehot.sum(axis=0)
    pooled = pooled_variance(values, codes, n_groups)
    means, variances = group_moments(values, onehot, pooled)
    observed = welch_statistic(means, variances, counts)
    if n_groups == 2:
        dof, _ = welch_dof(variances, counts)
        return scipy_stats.f.sf(observed, 1, dof), WELCH_T_TEST
    rng = np.random.default_rng(0) if rng is None else rng
    # Krishnamoorthy, Lu & Mathew 2007: under H0 each group mean is N(mu, s^2 / n) and each variance
    # s^2 chi2(n - 1) / (n - 1); each table its own draws (shared ones would tie the tables' errors)
    dof = np.where(counts >= 2, counts - 1, max(values.shape[-1] - n_groups, 1))
    shape = values.shape[:-1] + (int(n_perm), n_groups)
    normal = rng.standard_normal(shape)
    chi2 = rng.chisquare(np.broadcast_to(dof, shape)) / dof
    scale = np.sqrt(variances / counts)[..., None, :]                          # (..., 1, k)
    null = welch_statistic(normal * scale, variances[..., None, :] * chi2, counts)   # (..., B)
    exceed = np.sum(null >= observed[..., None] * (1 - 1e-12), axis=-1)
    return (1 + exceed) / (1 + int(n_perm)), BOOTSTRAP_TEST


def gap_interval(means: np.ndarray, variances: np.ndarray, counts: np.ndarray, *, higher_is_better: bool = True,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the best-minus-worst gap of group means over the last axis: Welch's interval,
    with k > 2 groups simultaneous over the pairs (Games-Howell: the studentised range's quantile
    over sqrt 2), because the pair is picked from the data. NaN when the best or the worst group
    has fewer than 2 cases. Vectorised over leading axes."""
    k = counts.shape[-1]
    best = np.argmax(means, axis=-1) if higher_is_better else np.argmin(means, axis=-1)
    worst = np.argmin(means, axis=-1) if higher_is_better else np.argmax(means, axis=-1)
    pick = lambda a, i: np.take_along_axis(np.broadcast_to(a, means.shape), i[..., None], -1)[..., 0]  # noqa: E731
    n_b, n_w = pick(counts, best), pick(counts, worst)
    a_b, a_w = pick(variances, best) / n_b, pick(variances, worst) / n_w
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = (a_b + a_w) ** 2 / (a_b ** 2 / (n_b - 1) + a_w ** 2 / (n_w - 1))
    dof = np.where(np.minimum(n_b, n_w) >= 2, dof, np.nan)
    if k == 2:
        critical = scipy_stats.t.ppf(0.5 + level / 2, dof)
    else:
        critical = np.vectorize(lambda d: range_quantile(level, k, d) if np.isfinite(d) else np.nan)(dof) / math.sqrt(2)
    gap = np.abs(pick(means, best) - pick(means, worst))
    half = critical * np.sqrt(a_b + a_w)
    return gap - half, gap + half


_RANGE_DOFS = np.array([1.0, 1.25, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 13, 20, 30, 60, 120, 1e6])


@functools.lru_cache(maxsize=None)
def _range_table(level: float, k: int) -> np.ndarray:
    return np.array([scipy_stats.studentized_range.ppf(level, k, d) for d in _RANGE_DOFS])


def range_quantile(level: float, k: int, dof: float) -> float:
    """The studentised range's `level` quantile for k means and dof, interpolated in 1 / dof
    between tabulated values (scipy's ppf takes 0.15 s a call; the table is within 0.3 % of it)."""
    inverse = 1.0 / _RANGE_DOFS
    return float(np.exp(np.interp(1.0 / max(dof, 1.0), inverse[::-1], np.log(_range_table(level, k))[::-1])))
