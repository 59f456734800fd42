"""Within-group tails of per-case Dice: CVaR, per group and for the worst group (SPEC §2).

A group's mean can hide its hard cases; CVaR at level alpha looks only at them:

    cvar(values, alpha) = mean of the k lowest values, k = max(1, ceil(alpha * n))

where n counts the non-NaN values (NaNs are dropped first). Lowest, because Dice is a score and
its bad tail is the low one (a loss's tail would be the high one). Rounding up means the tail
always holds at least alpha * n cases, and at least one: with n = 7 and alpha = 0.2, k = 2.
alpha * n is rounded to 9 decimals before the ceiling, so float noise cannot add a case
(0.1 * 30 is 3.0000000000000004 in floats; k is 3, not 4). alpha = 1 gives the plain mean;
alpha must be in (0, 1]. No value left -> NaN with a warning.

The CVaR of few cases is biased upward: rounding up makes the 20 % tail of 6 cases 2 cases, a
third of them (expected 70.4 at n 6 against 66.3 at n 50 and 66.0 for the population, issue 25).
Compare CVaRs of groups of similar size, and read them with cvar_interval's bootstrap interval.

Usage:
    from fairness.tails import cvar, within_group_cvar, worst_group_cvar
    cvar([0.9, 0.8, 0.5, 0.7], alpha=0.5)                      # mean of 0.5 and 0.7 = 0.6
    within_group_cvar(per_case, group_col="sex", alpha=0.2)    # {"female": ..., "male": ...}
    worst_group_cvar(per_case, group_col="sex", alpha=0.2)     # ("male", 0.61)
    cvar_interval(values, alpha=0.2, n_boot=2000, seed=0)      # (lo, hi) percentile bootstrap
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from fairness.grouping import group_order
from fairness.stats import draw_chunks


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")


def tail_size(n: int, alpha: float) -> int:
    """How many of n values the alpha-tail holds: max(1, ceil(alpha * n)), robust to float noise."""
    _check_alpha(alpha)
    return max(1, math.ceil(round(alpha * n, 9)))


def _finite_values(values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=float).ravel()
    return arr[~np.isnan(arr)]


def _cvar_of(arr: np.ndarray, alpha: float) -> float:
    """CVaR of NaN-free values; NaN for none (callers word the warning)."""
    if arr.size == 0:
        return math.nan
    k = tail_size(arr.size, alpha)
    return float(np.sort(arr)[:k].mean())


def cvar(values, alpha: float) -> float:
    """Mean of the lowest max(1, ceil(alpha * n)) non-NaN values; NaN (warned) if none."""
    _check_alpha(alpha)
    arr = _finite_values(values)
    if arr.size == 0:
        warnings.warn("cvar of no (non-NaN) values is NaN", stacklevel=2)
    return _cvar_of(arr, alpha)


def within_group_cvar(
    per_case: pd.DataFrame,
    group_col: str,
    metric: str = "mean",
    alpha: float = 0.2,
    order: Sequence[Hashable] | None = None,
    higher_is_better: bool = True,
) -> dict:
    """{group: CVaR_alpha of the group's per-case `metric`}, groups in `group_order`'s order.

    The tail is the worst one: the lowest values, or the highest with higher_is_better=False (a
    distance). A group without a valid case maps to NaN, with one warning naming such groups.
    """
    _check_alpha(alpha)
    absent = [c for c in (group_col, metric) if c not in per_case.columns]
    if absent:
        raise KeyError(f"per_case has no column(s) {absent}; it has {list(per_case.columns)}")
    labels = per_case[group_col]
    values = per_case[metric].astype(float)
    result = {}
    for group in group_order(labels, order=order):
        finite = _finite_values(values[(labels == group).to_numpy()])
        result[group] = _cvar_of(finite, alpha) if higher_is_better else -_cvar_of(-finite, alpha)
    empty = [str(g) for g, v in result.items() if math.isnan(v)]
    if empty:
        warnings.warn(f"group(s) {empty} have no valid {metric!r} value: their CVaR is NaN", stacklevel=2)
    return result


def worst_group_cvar(
    per_case: pd.DataFrame,
    group_col: str,
    metric: str = "mean",
    alpha: float = 0.2,
    order: Sequence[Hashable] | None = None,
    higher_is_better: bool = True,
) -> tuple[Hashable | None, float]:
    """(group, CVaR) of the group whose within-group CVaR is worst: lowest for a score, highest
    for a distance (higher_is_better=False, e.g. HD95); NaN groups are ignored.

    Ties go to the first group in table order; (None, NaN) with a warning if no group has one.
    """
    per_group = within_group_cvar(per_case, group_col=group_col, metric=metric, alpha=alpha, order=order,
                                  higher_is_better=higher_is_better)
    valid = {g: v for g, v in per_group.items() if not math.isnan(v)}
    if not valid:
        warnings.warn("no group has a CVaR value: the worst group is None", stacklevel=2)
        return None, math.nan
    pick = min if higher_is_better else max      # both keep the first of equal values
    worst = pick(valid, key=valid.get)
    return worst, valid[worst]


def cvar_interval(values, alpha: float, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                  higher_is_better: bool = True) -> tuple[float, float]:
    """Percentile-bootstrap interval of one group's CVaR (cases resampled, as many as there are);
    (NaN, NaN) with fewer than 2 values. The worst tail: the lowest values, or the highest for a
    distance. No H0: an interval for the group's CVaR at this group size (see the bias above)."""
    _check_alpha(alpha)
    arr = _finite_values(values)
    if arr.size < 2:
        return math.nan, math.nan
    arr = arr if higher_is_better else -arr
    rng, keep, tails = np.random.default_rng(seed), tail_size(arr.size, alpha), np.empty(int(n_boot))
    for start, stop in draw_chunks(n_boot, arr.size):
        draws = arr[rng.integers(0, arr.size, size=(stop - start, arr.size))]
        tails[start:stop] = np.partition(draws, keep - 1, axis=1)[:, :keep].mean(axis=1)
    lo, hi = np.percentile(tails, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return (float(lo), float(hi)) if higher_is_better else (float(-hi), float(-lo))
