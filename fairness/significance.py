"""Is a group gap real? What noise alone gives, what these groups can detect, what case mix explains.

SD, SER and the gap of group mean Dice are biased upward by sampling noise: with no group effect
at all, group means of a few cases differ by chance (SPEC §5). Real groups also differ in spread
(a group with more small tumors has a wider per-case Dice spread), so every figure here uses each
group's own spread, never one pooled spread. Every audit reports:

    group_gap_test     H0: every group has the same mean per-case Dice (spreads may differ).
                       One studentised test: two groups, Welch's t (Welch-Satterthwaite dof); more,
                       the Welch-type statistic sum_g n_g / s_g^2 (m_g - m_w)^2 against its
                       parametric bootstrap under H0 (Krishnamoorthy, Lu & Mathew 2007; B draws,
                       seeded, vectorised). SD, SER and the gap are all functions of the group
                       means, so their p-values ("sd_p", "ser_p", "gap_p") are this one test's.
                       Measured on bench/calibration.py's grid (unequal sizes and spreads,
                       skewed values with ties at 1.0, k = 4), before choosing: shuffling the raw
                       gap tests "same distribution" and rejected 34 % of null tables at 30 vs 8
                       cases with spreads 1.5 vs 8 points; shuffling labels under Welch's t
                       rejected up to 9 % (12 vs 8 cases, spread ratio 5: its null has the pooled
                       dof, the truth Welch's); Welch's F for k = 4 up to 9 %; these up to 7.5 %
                       and 8 %, on skewed groups of 8 and fewer cases with a fivefold spread.
                       "Noise alone gives up to X": the 95th percentile of the gap (and SD, SER)
                       when the group means are equal and each group keeps its own spread: a
                       bootstrap of each group's residuals, centred on the pooled mean, resampled
                       within the group (scaled by sqrt(n / (n - 1)) so their variance is
                       unbiased; a one-case group resamples the pooled residuals).
    gap interval       the best-minus-worst gap with a Welch interval, simultaneous over the
                       k (k - 1) / 2 pairs (Bonferroni) because the pair is picked from the data;
                       unlike SD (>= 0) and SER (>= 1) its interval can hold 0
    minimum_detectable_gap
                       the smallest true best-minus-worst gap the test above detects with 80 %
                       power at 5 %, from the group sizes and the groups' own spreads: Welch's
                       noncentral F; with k > 2 the least favourable layout (the two least
                       precise groups at the ends, the others between), so any layout with that
                       gap is detected at least that often
    adjusted_gap       per-case mean Dice regressed (OLS) on the group plus covariates
                       (default: log(1 + tumor mL), log(1 + kidney mL), BMI), HC3 robust errors;
                       the gap between the best and worst groups with the covariates held fixed,
                       beside the raw gap of the same cases (cases missing a covariate are left
                       out of both); H0 of its interval: no group difference at fixed covariates.
                       A rank-deficient design (a covariate aliased to the group) gives no number.
    small_groups       groups of fewer than 2 scored cases get no interval: a note instead

The figures are for the per-case mean Dice (the study's metric); the gap and its p-value are also
given for kidney and tumor apart, since a gap in one class can drown in the other's spread when
both are averaged.

All Dice values are fractions (x100 for points). tests/test_significance.py checks calibration on
unequal sizes and spreads, skewed values with ties at 1.0, and k = 4: the false-alarm rate under
no effect is 5 %, the power at the printed minimum detectable gap 80 %, the gap interval covers.

Usage:
    null = group_gap_test(per_case, "sex", n_perm=5000, seed=0)     # {"gap_p", "gap_null95", ...}
    mdg = minimum_detectable_gap(per_case, "sex")                    # 0.14: 14 points
    adj = adjusted_gap(per_case, "sex", covariates=("log_tumor_ml", "log_kidney_ml", "bmi"))
    adj["gap"], adj["lo"], adj["hi"], adj["raw"], adj["n"]
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.grouping import group_order
from fairness.stats import percentile_interval

DEFAULT_COVARIATES = ("log_tumor_ml", "log_kidney_ml", "bmi")
CLASS_METRICS = ("kidney", "tumor")
COVARIATE_NAMES = {"log_tumor_ml": "log tumor volume", "log_kidney_ml": "log kidney volume", "bmi": "BMI"}
WELCH_T_TEST = "Welch t"
BOOTSTRAP_TEST = "Welch-type, parametric bootstrap"


def _scored(per_case: pd.DataFrame, group_col: str, metric: str, order):
    """(values, group codes, group names) of the cases with a group and a metric value."""
    frame = per_case[[group_col, metric]].dropna()
    groups = [g for g in group_order(frame[group_col], order=order) if (frame[group_col] == g).any()]
    codes = frame[group_col].map({g: i for i, g in enumerate(groups)}).to_numpy(dtype=np.int64)
    return frame[metric].to_numpy(dtype=float), codes, groups


def _figures(means: np.ndarray, higher_is_better: bool = True) -> dict:
    """SD (ddof 0), SER and gap over the last axis of group means (Dice, or a distance when
    lower is better: SER = worst / best distance, gap = worst - best). SER is 1 when the
    errors are equal and inf when only the best group's is 0 (fairness.summary's rule)."""
    low, high = means.min(axis=-1), means.max(axis=-1)
    worst_error, best_error = (1.0 - low, 1.0 - high) if higher_is_better else (high, low)
    with np.errstate(divide="ignore", invalid="ignore"):
        ser = np.where(worst_error == best_error, 1.0, worst_error / best_error)
    return {"sd": means.std(axis=-1), "ser": ser, "gap": high - low}


# --- each group's own mean and spread ------------------------------------------------------

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


def group_gap_test(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                   n_perm: int = 5000, seed: int = 0, higher_is_better: bool = True) -> dict:
    """H0: the groups' mean per-case `metric` are equal (their spreads may differ). See the module.

    Returns {"sd", "ser", "gap", "sd_p", "ser_p", "gap_p", "sd_null95", "ser_null95",
    "gap_null95", "gap_lo", "gap_hi", "test", "n_perm", "groups", "worst", "best", "caution"
    (skew_caution's note, or None)}; NaN figures
    with fewer than 2 scored groups, NaN p-values where no group has 2 scored cases.
    """
    values, codes, groups = _scored(per_case, group_col, metric, order)
    keys = ("sd", "ser", "gap")
    out = {"n_perm": int(n_perm), "groups": groups, "test": None, "gap_lo": math.nan, "gap_hi": math.nan,
           **{k: math.nan for k in keys}, **{f"{k}_p": math.nan for k in keys},
           **{f"{k}_null95": math.nan for k in keys}}
    if len(groups) < 2:
        return out
    k = len(groups)
    onehot = np.eye(k)[codes]                              # (n, G)
    counts = onehot.sum(axis=0)
    pooled = pooled_variance(values, codes, k)
    means = values @ onehot / counts
    worst_i = int(np.argmin(means) if higher_is_better else np.argmax(means))
    best_i = int(np.argmax(means) if higher_is_better else np.argmin(means))
    out["worst"], out["best"] = groups[worst_i], groups[best_i]
    out.update({key: float(v) for key, v in _figures(means, higher_is_better).items()})
    if not math.isfinite(pooled) or pooled <= 0:   # no case-to-case spread within any group
        if out["gap"] == 0:                          # every case alike: no evidence of a difference
            out.update(sd_p=1.0, ser_p=1.0, gap_p=1.0, sd_null95=0.0, ser_null95=1.0, gap_null95=0.0)
        return out
    rng = np.random.default_rng(seed)
    p, out["test"] = mean_test(values, codes, k, n_perm=n_perm, rng=rng)
    out.update(sd_p=float(p), ser_p=float(p), gap_p=float(p))
    null = _figures(_centred_bootstrap(values, codes, k, pooled, int(n_perm), rng), higher_is_better)
    for key in keys:
        out[f"{key}_null95"] = percentile_interval(null[key], 0.90)[1]
    own = np.where(counts >= 2, group_moments(values, onehot, pooled)[1], np.nan)   # none for one case
    lo, hi = gap_interval(means, own, counts, higher_is_better=higher_is_better)
    out["gap_lo"], out["gap_hi"] = float(lo), float(hi)
    out["caution"] = skew_caution(values, codes, groups)
    return out


SKEW_CAUTION = (15, 1.5)    # groups under 15 cases with |skewness| >= 1.5: docs/statistics.md's limit


def skew_caution(values: np.ndarray, codes: np.ndarray, groups: list) -> str | None:
    """A note when a small group is strongly skewed: there every test of means errs (the grid's
    exponential tail, skewness 2, at 8 cases: 9-13 % false alarms at 5 %)."""
    small, limit = SKEW_CAUTION
    flagged = []
    for i, g in enumerate(groups):
        v = values[codes == i]
        centred = v - v.mean()
        spread2 = float(np.mean(centred ** 2))
        if 3 <= v.size < small and spread2 > 1e-12:      # (nearly) tied values have no skewness to speak of
            skew = float(np.mean(centred ** 3)) / spread2 ** 1.5       # scipy.stats.skew's (biased) estimate
            if abs(skew) >= limit:
                flagged.append(f"{g} ({v.size} cases, skewness {skew:+.1f})")
    if not flagged:
        return None
    return (f"small, strongly skewed group(s): {', '.join(flagged)}; the p-value can be too small there "
            "(docs/statistics.md): read the per-case values")


def _centred_bootstrap(values, codes, k, pooled, n_boot, rng) -> np.ndarray:
    """(n_boot, k) group means under equal means, each group resampling its own residuals."""
    counts = np.bincount(codes, minlength=k)
    grand = values.mean()
    residual = values - (np.bincount(codes, weights=values, minlength=k) / counts)[codes]
    scaled = residual * np.sqrt(counts / np.maximum(counts - 1, 1))[codes]
    shared = scaled[counts[codes] >= 2]
    if shared.size:  # rescaled to the pooled variance: what a one-case group draws from
        shared = shared * math.sqrt(pooled / max(float(np.mean(shared ** 2)), 1e-300))
    means = np.empty((n_boot, k))
    for g in range(k):
        own = scaled[codes == g] if counts[g] >= 2 else shared
        if own.size == 0:
            own = np.zeros(1)
        means[:, g] = grand + own[rng.integers(0, own.size, size=(n_boot, counts[g]))].mean(axis=1)
    return means


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


def group_spreads(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> dict:
    """{group: SD (ddof 1) of its per-case metric}; NaN for a group of one case."""
    values, codes, groups = _scored(per_case, group_col, metric, order)
    return {g: float(values[codes == i].std(ddof=1)) if (codes == i).sum() >= 2 else math.nan
            for i, g in enumerate(groups)}


def pooled_spread(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> float:
    """The pooled within-group standard deviation of the per-case metric."""
    values, codes, groups = _scored(per_case, group_col, metric, order)
    return math.sqrt(pooled_variance(values, codes, len(groups))) if groups else math.nan


# --- what these groups can detect -----------------------------------------------------------

def minimum_detectable_gap(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                           level: float = 0.05, power: float = 0.8, spreads: Sequence[float] | None = None) -> float:
    """The smallest true best-minus-worst gap that group_gap_test detects with `power` at `level`,
    with the groups' own spreads (or `spreads`, one SD per group in table order); see the module.
    NaN with fewer than 2 groups of at least 2 scored cases."""
    values, codes, groups = _scored(per_case, group_col, metric, order)
    counts = np.bincount(codes, minlength=len(groups))
    if len(groups) < 2 or np.sort(counts)[-2] < 2:
        return math.nan
    if spreads is None:
        pooled = pooled_variance(values, codes, len(groups))
        sds = [values[codes == i].std(ddof=1) if counts[i] >= 2 else math.sqrt(pooled) for i in range(len(groups))]
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
        n_ends = np.take_along_axis(counts + 0 * per_mean, top, -1)
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


# --- what case mix explains -----------------------------------------------------------------

def covariate_matrix(per_case: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Covariate columns by name: a column of the table, or log_<column> for log(1 + column)."""
    columns = {}
    for name in covariates:
        source = name[4:] if name.startswith("log_") and name not in per_case.columns else name
        if source not in per_case.columns:
            raise ValueError(f"covariate {name!r}: the per-case table has no column {source!r} "
                             f"(columns: {', '.join(map(str, per_case.columns))})")
        column = pd.to_numeric(per_case[source], errors="coerce").astype(float)
        columns[name] = np.log1p(column) if source != name else column
    return pd.DataFrame(columns, index=per_case.index)


def ols_hc3(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS coefficients and their HC3 (MacKinnon-White) standard errors; x must have full column
    rank (adjusted_gap checks it first)."""
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    resid = y - x @ beta
    leverage = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
    weights = (resid / np.clip(1 - leverage, 1e-12, None)) ** 2
    cov = xtx_inv @ (x.T * weights) @ x @ xtx_inv
    return beta, np.sqrt(np.clip(np.diag(cov), 0, None))


def design_rank(x: np.ndarray) -> int:
    """The column rank of x, each column scaled to unit length first (so a covariate's unit, BMI
    in kg/m^2 or in g/cm^2, cannot hide or fake a collinearity)."""
    norms = np.linalg.norm(x, axis=0)
    return int(np.linalg.matrix_rank(x / np.where(norms > 0, norms, 1.0), tol=1e-9 * math.sqrt(x.shape[0])))


def adjusted_gap(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                 covariates: Sequence[str] = DEFAULT_COVARIATES, level: float = 0.95) -> dict:
    """The best-minus-worst gap with the covariates held fixed (OLS, HC3), beside the raw gap of the
    same cases. H0 of the interval: no difference between the two groups at fixed covariates
    (with k > 2 groups simultaneous over the pairs, since the two are picked from the data).

    Returns {"gap", "lo", "hi", "raw", "raw_lo", "raw_hi", "n", "n_all", "covariates", "best",
    "worst", "note"}. Cases missing a covariate are left out of both gaps (listwise; n of n_all
    cases kept). A covariate constant over the cases kept is dropped and named in the note. No
    estimate (NaN, a note) when the design is rank-deficient (a covariate aliased to the group or
    to the others) or has fewer than two cases per coefficient; no interval (NaN lo, hi) when the
    best or the worst group has fewer than 2 cases.
    """
    cols = list(covariates)
    frame = pd.concat([per_case[[group_col, metric]], covariate_matrix(per_case, cols)], axis=1).dropna()
    n_all = int(per_case[[group_col, metric]].notna().all(axis=1).sum())
    empty = {"gap": math.nan, "lo": math.nan, "hi": math.nan, "raw": math.nan, "raw_lo": math.nan,
             "raw_hi": math.nan, "n": len(frame), "n_all": n_all, "covariates": cols, "best": None,
             "worst": None, "note": None}
    groups = [g for g in group_order(frame[group_col], order=order) if (frame[group_col] == g).any()]
    if len(groups) < 2:
        return {**empty, "note": "fewer than 2 groups with cases and covariates"}
    means = frame.groupby(group_col)[metric].mean()
    best, worst = means[groups].idxmax(), means[groups].idxmin()
    if best == worst:  # all group means equal: any other group is as worst
        worst = next(g for g in groups if g != best)
    kept = [c for c in cols if frame[c].nunique() > 1]
    dropped = [c for c in cols if c not in kept]
    y = frame[metric].to_numpy(float)
    others = [g for g in groups if g != best]
    dummies = np.column_stack([(frame[group_col] == g).to_numpy(float) for g in others])
    notes = [f"constant covariate(s) dropped: {', '.join(dropped)}"] if dropped else []
    out = {**empty, "best": best, "worst": worst, "covariates": kept}
    worst_col = others.index(worst) + 1
    sizes = frame[group_col].value_counts()
    interval = min(sizes[best], sizes[worst]) >= 2
    if not interval:
        notes.append(f"no interval: {best if sizes[best] < 2 else worst} has fewer than 2 cases")
    for key, extra in (("raw", []), ("gap", kept)):
        x = np.column_stack([np.ones(len(y)), dummies, *[frame[c].to_numpy(float) for c in extra]])
        if len(y) < 2 * x.shape[1]:  # fewer than two cases per coefficient: HC3 errors are not usable
            notes.append(f"too few cases ({len(y)}) for {x.shape[1]} coefficients (needs {2 * x.shape[1]})")
            break
        rank = design_rank(x)
        if rank < x.shape[1]:
            notes.append(f"the covariates are collinear with the group or with each other (design rank "
                         f"{rank} of {x.shape[1]}): the group's coefficient is not identified")
            break
        beta, se = ols_hc3(y, x)
        dof = len(y) - x.shape[1]
        # the pair is picked from the data: with k > 2 groups the interval is simultaneous over the
        # pairs (the studentised range, as gap_interval), else a pair's interval misses 13 % of nulls
        critical = (scipy_stats.t.ppf(0.5 + level / 2, dof) if len(groups) == 2
                    else range_quantile(level, len(groups), dof) / math.sqrt(2))
        half = critical * se[worst_col]
        gap = -beta[worst_col]        # best minus worst, like the raw gap
        lo_key, hi_key = ("raw_lo", "raw_hi") if key == "raw" else ("lo", "hi")
        out[key] = float(gap)
        if interval:
            out[lo_key], out[hi_key] = float(gap - half), float(gap + half)
    out["note"] = "; ".join(notes) or None
    return out


def small_groups(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> list:
    """Groups of one scored case: they get no interval (groups of none are noted as empty)."""
    frame = per_case[[group_col, metric]].dropna()
    return [g for g in group_order(per_case[group_col].dropna(), order=order) if (frame[group_col] == g).sum() == 1]


# --- the audit's figures, flat ----------------------------------------------------------------

def significance(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None, n_perm: int = 5000,
                 seed: int = 0, covariates: Sequence[str] | None = DEFAULT_COVARIATES,
                 higher_is_better: bool = True) -> dict:
    """Everything SPEC §5 asks of an audit, flat: the summary CSV's columns and the printed line.
    The p-values are raw; fairness.family.holm_family adds the "<key>_holm" ones over a screen."""
    test = group_gap_test(per_case, group_col, metric=metric, order=order, n_perm=n_perm, seed=seed,
                          higher_is_better=higher_is_better)
    out = {k: v for k, v in test.items() if k != "groups"}
    out["spread"] = pooled_spread(per_case, group_col, metric=metric, order=order)
    out["spreads"] = group_spreads(per_case, group_col, metric=metric, order=order)
    out["mdg80"] = minimum_detectable_gap(per_case, group_col, metric=metric, order=order)
    usable = [c for c in (covariates or ()) if _has_column(per_case, c)]
    if usable:
        adj = adjusted_gap(per_case, group_col, metric=metric, order=order, covariates=usable)
        out.update(gap_adjusted=adj["gap"], gap_adjusted_lo=adj["lo"], gap_adjusted_hi=adj["hi"],
                   gap_adjusted_raw=adj["raw"], adjusted_n=adj["n"], adjusted_n_all=adj["n_all"],
                   adjusted_for=adj["covariates"], adjusted_note=adj["note"])
    else:
        out.update(gap_adjusted=math.nan, gap_adjusted_lo=math.nan, gap_adjusted_hi=math.nan,
                   gap_adjusted_raw=math.nan, adjusted_n=0, adjusted_n_all=0, adjusted_for=[],
                   adjusted_note="no covariate columns in the per-case table")
    out["small_groups"] = small_groups(per_case, group_col, metric=metric, order=order)
    for part in CLASS_METRICS:   # the classes apart: a gap in one can hide in the mean of both
        if part != metric and part in per_case.columns:
            test = group_gap_test(per_case, group_col, metric=part, order=order, n_perm=n_perm, seed=seed,
                                  higher_is_better=higher_is_better)
            out[f"{part}_gap"], out[f"{part}_gap_p"] = test["gap"], test["gap_p"]
            out[f"{part}_gap_null95"], out[f"{part}_worst"] = test["gap_null95"], test.get("worst")
            out[f"{part}_mdg80"] = minimum_detectable_gap(per_case, group_col, metric=part, order=order)
    return out


def _has_column(per_case: pd.DataFrame, name: str) -> bool:
    source = name[4:] if name.startswith("log_") and name not in per_case.columns else name
    return source in per_case.columns and pd.to_numeric(per_case[source], errors="coerce").notna().any()


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_text(sig: dict, key: str) -> str:
    """'p = 0.012, Holm 0.048' (the Holm value once the screen's family is known)."""
    if not math.isfinite(sig.get(key, math.nan)):
        return "no test"
    holm = sig.get(f"{key}_holm", math.nan)
    family = f" over {sig['holm_family']} tests" if sig.get("holm_family") else ""
    return f"p = {_p(sig[key])}" + (f", Holm{family} {_p(holm)}" if math.isfinite(holm) else "")


def significance_line(sig: dict, metric=None) -> str:
    """The worded line under a table: the gap with its interval, against what noise alone gives
    and what is detectable (in Dice points, or in the unit of `metric`, fairness/metrics.py)."""
    if not math.isfinite(sig.get("gap", math.nan)):
        return "(fewer than 2 groups with scored cases: no gap to test)"
    scale, unit = (100.0, "points") if metric is None or metric.unit == "%" else (metric.scale, metric.unit)
    pts = lambda v: f"{scale * v:.1f}" if math.isfinite(v) else "-"  # noqa: E731
    interval = f" [{pts(sig['gap_lo'])}, {pts(sig['gap_hi'])}]" if math.isfinite(sig.get("gap_lo", math.nan)) else ""
    test = f"{sig['test']}, " if sig.get("test") else ""
    line = (f"gap {pts(sig['gap'])}{interval} {unit}; noise alone gives up to {pts(sig['gap_null95'])} with these "
            f"groups' own spreads ({test}{_p_text(sig, 'gap_p')}); detectable: {pts(sig['mdg80'])} {unit}")
    spreads = {g: s for g, s in sig.get("spreads", {}).items() if math.isfinite(s)}
    if spreads:
        line += " (spread " + ", ".join(f"{g} {pts(s)}" for g, s in spreads.items()) + ")"
    if math.isfinite(sig.get("gap_adjusted", math.nan)):
        names = ", ".join(COVARIATE_NAMES.get(c, c) for c in sig["adjusted_for"])
        adj_interval = (f" [{pts(sig['gap_adjusted_lo'])}, {pts(sig['gap_adjusted_hi'])}]"
                        if math.isfinite(sig.get("gap_adjusted_lo", math.nan)) else "")
        line += (f"\nadjusted for {names}: gap {pts(sig['gap_adjusted'])}{adj_interval} {unit}, raw gap "
                 f"{pts(sig['gap_adjusted_raw'])} on the same {sig['adjusted_n']} of {sig['adjusted_n_all']} cases")
        if sig.get("adjusted_note"):
            line += f" ({sig['adjusted_note']})"
    elif sig.get("adjusted_note") and sig.get("adjusted_for"):
        line += f"\n(no adjusted gap: {sig['adjusted_note']})"
    parts = [f"{part} gap {pts(sig[f'{part}_gap'])}, worst {sig[f'{part}_worst']} ({_p_text(sig, f'{part}_gap_p')}; "
             f"noise alone up to {pts(sig[f'{part}_gap_null95'])})"
             for part in CLASS_METRICS if math.isfinite(sig.get(f"{part}_gap", math.nan))]
    if parts:
        line += "\nby class: " + "; ".join(parts)
    if sig.get("caution"):
        line += f"\n(caution: {sig['caution']})"
    if sig.get("small_groups"):
        line += (f"\n(no interval for {', '.join(map(str, sig['small_groups']))}: fewer than 2 cases; "
                 "their mean is one case's Dice, not an estimate)")
    return line


FAMILY_KEYS = ("gap_p", "kidney_gap_p", "tumor_gap_p")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values becomes max over j <= k of
    min(1, (m - j + 1) p_(j)). NaN p-values are left out (m counts the others) and stay NaN.
    Controls the family-wise error (H0: every hypothesis of the family is true) at any dependence."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def holm_family(sigs: Sequence[dict], tests: Sequence[dict] = ()) -> int:
    """Holm over every distinct test one screen prints: each significance dict's gap tests (mean,
    kidney, tumor: attributes x classes), and each rank-test dict's "p". Sets "<key>_holm" (SD's and
    SER's are the gap's: the same test) and "p_holm", and "holm_family" (m) in each; returns m."""
    slots = [(sig, key) for sig in sigs for key in FAMILY_KEYS if math.isfinite(sig.get(key, math.nan))]
    slots += [(test, "p") for test in tests if math.isfinite(test.get("p", math.nan))]
    adjusted = holm([d[key] for d, key in slots])
    for (d, key), value in zip(slots, adjusted):
        d[f"{key}_holm"] = value
    for d in [*sigs, *tests]:
        d["holm_family"] = len(slots)
    for sig in sigs:
        sig["sd_p_holm"] = sig["ser_p_holm"] = sig.get("gap_p_holm", math.nan)
    return len(slots)


P_COLUMNS = ("sd_p", "ser_p", "gap_p", "kidney_gap_p", "tumor_gap_p")
SUMMARY_COLUMNS = ("sd_p", "ser_p", "gap_p", "sd_null95", "ser_null95", "gap_null95", "gap_lo", "gap_hi", "mdg80",
                   "gap_adjusted", "gap_adjusted_lo", "gap_adjusted_hi", "gap_adjusted_raw", "adjusted_n",
                   "kidney_gap", "kidney_gap_p", "kidney_gap_null95", "kidney_mdg80", "tumor_gap", "tumor_gap_p",
                   "tumor_gap_null95", "tumor_mdg80", *(f"{k}_holm" for k in P_COLUMNS))
