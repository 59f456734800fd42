"""Is a group gap real? What noise alone gives, what these groups can detect, what case mix explains.

SD, SER and the gap of group mean Dice are biased upward by sampling noise: with no group effect
at all, group means of a few cases differ by chance (SPEC §5). Every audit therefore reports:

    permutation_null   group labels shuffled over the scored cases (the group sizes kept),
                       B times, seeded, vectorised: p = (1 + #{null >= observed}) / (1 + B) for
                       SD, SER and the gap, and the null's 95th percentile ("what noise alone
                       gives with these group sizes")
    minimum_detectable_gap
                       the smallest true difference of two groups' mean Dice that a two-sided
                       test at 5 % detects with 80 % power, from the group sizes and the pooled
                       per-case spread: (t_{1-a/2} + t_{power}) * s * sqrt(1/n1 + 1/n2), df =
                       n1 + n2 - 2, for the two smallest groups; with k > 2 groups the level is
                       Bonferroni-divided over the k(k-1)/2 pairs (conservative)
    adjusted_gap       per-case mean Dice regressed (OLS) on the group plus covariates
                       (default: log(1 + tumor mL), log(1 + kidney mL), BMI), HC3 robust errors;
                       the gap between the raw best and worst groups with the covariates held
                       fixed, with its 95 % CI, beside the raw gap: a gap explained by case mix
                       shrinks toward 0
    group_sizes_note   groups of fewer than 2 cases get no interval: a note instead

The figures are for the per-case mean Dice (the study's metric); the gap and its permutation
p-value are also given for kidney and tumor apart, since a gap in one class can drown in the
other's spread when both are averaged.

All Dice values are fractions (x100 for points). tests/test_significance.py checks calibration:
the false-alarm rate under no effect is the nominal 5 %, and the power at the printed minimum
detectable gap is 80 %.

Usage:
    null = permutation_null(per_case, "sex", n_perm=5000, seed=0)   # {"sd_p", "gap_null95", ...}
    mdg = minimum_detectable_gap(per_case, "sex")                    # 0.14: 14 points
    adj = adjusted_gap(per_case, "sex", covariates=("log_tumor_ml", "log_kidney_ml", "bmi"))
    adj["gap"], adj["lo"], adj["hi"]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.grouping import group_order

DEFAULT_COVARIATES = ("log_tumor_ml", "log_kidney_ml", "bmi")
CLASS_METRICS = ("kidney", "tumor")
COVARIATE_NAMES = {"log_tumor_ml": "log tumor volume", "log_kidney_ml": "log kidney volume", "bmi": "BMI"}


def _scored(per_case: pd.DataFrame, group_col: str, metric: str, order):
    """(values, group codes, group names) of the cases with a group and a metric value."""
    frame = per_case[[group_col, metric]].dropna()
    groups = [g for g in group_order(frame[group_col], order=order) if (frame[group_col] == g).any()]
    codes = frame[group_col].map({g: i for i, g in enumerate(groups)}).to_numpy(dtype=np.int64)
    return frame[metric].to_numpy(dtype=float), codes, groups


def _figures(means: np.ndarray, higher_is_better: bool = True) -> dict:
    """SD (ddof 0), SER and gap over the last axis of group means (Dice, or a distance when
    lower is better: SER = worst / best distance, gap = worst - best)."""
    low, high = means.min(axis=-1), means.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ser = (1.0 - low) / (1.0 - high) if higher_is_better else high / low
    return {"sd": means.std(axis=-1), "ser": ser, "gap": high - low}


def permutation_null(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                     n_perm: int = 5000, seed: int = 0, higher_is_better: bool = True) -> dict:
    """Observed SD / SER / gap, their permutation p-values and the null's 95th percentiles.

    Returns {"sd", "ser", "gap", "sd_p", "ser_p", "gap_p", "sd_null95", "ser_null95",
    "gap_null95", "n_perm", "groups"}; NaN figures with fewer than 2 scored groups.
    """
    values, codes, groups = _scored(per_case, group_col, metric, order)
    out = {"n_perm": int(n_perm), "groups": groups}
    keys = ("sd", "ser", "gap")
    if len(groups) < 2:
        return {**out, **{k: math.nan for k in keys}, **{f"{k}_p": math.nan for k in keys},
                **{f"{k}_null95": math.nan for k in keys}}
    onehot = np.eye(len(groups))[codes]                   # (n, G)
    counts = onehot.sum(axis=0)
    group_means = values @ onehot / counts
    out["worst"] = groups[int(np.argmin(group_means) if higher_is_better else np.argmax(group_means))]
    observed = _figures(group_means, higher_is_better)
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((int(n_perm), len(values))), axis=1)   # B independent shuffles
    null = _figures(values[perm] @ onehot / counts, higher_is_better)                       # (B,) each
    for k in keys:
        out[k] = float(observed[k])
        finite = null[k][np.isfinite(null[k])]
        out[f"{k}_p"] = float((1 + np.sum(finite >= observed[k] - 1e-12)) / (1 + finite.size))
        out[f"{k}_null95"] = float(np.percentile(finite, 95)) if finite.size else math.nan
    return out


def pooled_spread(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> float:
    """The pooled within-group standard deviation of the per-case metric."""
    values, codes, groups = _scored(per_case, group_col, metric, order)
    dof = len(values) - len(groups)
    if len(groups) < 1 or dof < 1:
        return math.nan
    residual = values - (np.bincount(codes, weights=values) / np.bincount(codes))[codes]
    return float(np.sqrt(np.sum(residual ** 2) / dof))


def minimum_detectable_gap(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                           level: float = 0.05, power: float = 0.8, spread: float | None = None) -> float:
    """The smallest true difference of group means detectable with `power` at `level` (see module)."""
    values, codes, groups = _scored(per_case, group_col, metric, order)
    sizes = sorted(np.bincount(codes, minlength=len(groups)).tolist()) if groups else []
    if len(sizes) < 2 or sizes[0] < 2:
        return math.nan
    s = pooled_spread(per_case, group_col, metric=metric, order=order) if spread is None else spread
    return mdg_from_sizes(sizes[0], sizes[1], s, level=level / math.comb(len(sizes), 2), power=power)


def mdg_from_sizes(n1: int, n2: int, spread: float, *, level: float = 0.05, power: float = 0.8) -> float:
    dof = n1 + n2 - 2
    factor = scipy_stats.t.ppf(1 - level / 2, dof) + scipy_stats.t.ppf(power, dof)
    return float(factor * spread * math.sqrt(1 / n1 + 1 / n2))


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
    """OLS coefficients and their HC3 (MacKinnon-White) standard errors."""
    xtx_inv = np.linalg.pinv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    resid = y - x @ beta
    leverage = np.einsum("ij,jk,ik->i", x, xtx_inv, x)
    weights = (resid / np.clip(1 - leverage, 1e-12, None)) ** 2
    cov = xtx_inv @ (x.T * weights) @ x @ xtx_inv
    return beta, np.sqrt(np.clip(np.diag(cov), 0, None))


def adjusted_gap(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                 covariates: Sequence[str] = DEFAULT_COVARIATES, level: float = 0.95) -> dict:
    """The raw best-minus-worst gap and the same gap with the covariates held fixed (OLS, HC3).

    Returns {"gap", "lo", "hi", "raw", "raw_lo", "raw_hi", "n", "covariates", "best", "worst",
    "note"}. Cases missing a covariate are left out (listwise); a covariate that is constant over
    the cases used is dropped (it cannot be told from the intercept) and named in the note; with
    fewer than two cases per coefficient there is no estimate (the note says so).
    """
    cols = list(covariates)
    frame = pd.concat([per_case[[group_col, metric]], covariate_matrix(per_case, cols)], axis=1).dropna()
    empty = {"gap": math.nan, "lo": math.nan, "hi": math.nan, "raw": math.nan, "raw_lo": math.nan,
             "raw_hi": math.nan, "n": len(frame), "covariates": cols, "best": None, "worst": None, "note": None}
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
    dummies = np.column_stack([(frame[group_col] == g).to_numpy(float) for g in groups if g != best])
    out = {**empty, "best": best, "worst": worst, "covariates": kept,
           "note": f"constant covariate(s) dropped: {', '.join(dropped)}" if dropped else None}
    worst_col = [g for g in groups if g != best].index(worst) + 1
    for key, extra in (("raw", []), ("gap", kept)):
        x = np.column_stack([np.ones(len(y)), dummies, *[frame[c].to_numpy(float) for c in extra]])
        dof = len(y) - x.shape[1]
        if len(y) < 2 * x.shape[1]:  # fewer than two cases per coefficient: HC3 errors are not usable
            out["note"] = f"too few cases ({len(y)}) for {x.shape[1]} coefficients (needs {2 * x.shape[1]})"
            return out
        beta, se = ols_hc3(y, x)
        half = scipy_stats.t.ppf(0.5 + level / 2, dof) * se[worst_col]
        gap = -beta[worst_col]        # best minus worst, like the raw gap
        lo_key, hi_key = ("raw_lo", "raw_hi") if key == "raw" else ("lo", "hi")
        out[key], out[lo_key], out[hi_key] = float(gap), float(gap - half), float(gap + half)
    return out


def small_groups(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> list:
    """Groups of one scored case: they get no interval (groups of none are noted as empty)."""
    frame = per_case[[group_col, metric]].dropna()
    return [g for g in group_order(per_case[group_col].dropna(), order=order) if (frame[group_col] == g).sum() == 1]


def significance(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None, n_perm: int = 5000,
                 seed: int = 0, covariates: Sequence[str] | None = DEFAULT_COVARIATES,
                 higher_is_better: bool = True) -> dict:
    """Everything SPEC §5 asks of an audit, flat: the summary CSV's columns and the printed line."""
    null = permutation_null(per_case, group_col, metric=metric, order=order, n_perm=n_perm, seed=seed,
                            higher_is_better=higher_is_better)
    out = {k: v for k, v in null.items() if k != "groups"}
    out["spread"] = pooled_spread(per_case, group_col, metric=metric, order=order)
    out["mdg80"] = minimum_detectable_gap(per_case, group_col, metric=metric, order=order)
    usable = [c for c in (covariates or ()) if _has_column(per_case, c)]
    if usable:
        adj = adjusted_gap(per_case, group_col, metric=metric, order=order, covariates=usable)
        out.update(gap_adjusted=adj["gap"], gap_adjusted_lo=adj["lo"], gap_adjusted_hi=adj["hi"],
                   adjusted_for=adj["covariates"], adjusted_note=adj["note"])
    else:
        out.update(gap_adjusted=math.nan, gap_adjusted_lo=math.nan, gap_adjusted_hi=math.nan, adjusted_for=[],
                   adjusted_note="no covariate columns in the per-case table")
    out["small_groups"] = small_groups(per_case, group_col, metric=metric, order=order)
    for part in CLASS_METRICS:   # the classes apart: a gap in one can hide in the mean of both
        if part != metric and part in per_case.columns:
            null = permutation_null(per_case, group_col, metric=part, order=order, n_perm=n_perm, seed=seed,
                                    higher_is_better=higher_is_better)
            out[f"{part}_gap"], out[f"{part}_gap_p"] = null["gap"], null["gap_p"]
            out[f"{part}_gap_null95"], out[f"{part}_worst"] = null["gap_null95"], null.get("worst")
            out[f"{part}_mdg80"] = minimum_detectable_gap(per_case, group_col, metric=part, order=order)
    return out


def _has_column(per_case: pd.DataFrame, name: str) -> bool:
    source = name[4:] if name.startswith("log_") and name not in per_case.columns else name
    return source in per_case.columns and pd.to_numeric(per_case[source], errors="coerce").notna().any()


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def significance_line(sig: dict, metric=None) -> str:
    """The worded line under a table: the gap against what noise alone gives and what is detectable
    (in Dice points, or in the unit of `metric`, fairness/metrics.py)."""
    if not math.isfinite(sig.get("gap", math.nan)):
        return "(fewer than 2 groups with scored cases: no gap to test)"
    scale, unit = (100.0, "points") if metric is None or metric.unit == "%" else (metric.scale, metric.unit)
    pts = lambda v: f"{scale * v:.1f}" if math.isfinite(v) else "-"  # noqa: E731
    line = (f"gap {pts(sig['gap'])} {unit}; noise alone gives up to {pts(sig['gap_null95'])} with these groups "
            f"(p = {_p(sig['gap_p'])}); detectable: {pts(sig['mdg80'])} {unit}")
    if math.isfinite(sig.get("gap_adjusted", math.nan)):
        names = ", ".join(COVARIATE_NAMES.get(c, c) for c in sig["adjusted_for"])
        line += (f"\nadjusted for {names}: gap {pts(sig['gap_adjusted'])} [{pts(sig['gap_adjusted_lo'])}, "
                 f"{pts(sig['gap_adjusted_hi'])}] {unit}")
    elif sig.get("adjusted_note") and sig.get("adjusted_for"):
        line += f"\n(no adjusted gap: {sig['adjusted_note']})"
    parts = [f"{part} gap {pts(sig[f'{part}_gap'])}, worst {sig[f'{part}_worst']} (p = {_p(sig[f'{part}_gap_p'])}; "
             f"noise alone up to {pts(sig[f'{part}_gap_null95'])})"
             for part in CLASS_METRICS if math.isfinite(sig.get(f"{part}_gap", math.nan))]
    if parts:
        line += "\nby class: " + "; ".join(parts)
    if sig.get("small_groups"):
        line += (f"\n(no interval for {', '.join(map(str, sig['small_groups']))}: fewer than 2 cases; "
                 "their mean is one case's Dice, not an estimate)")
    return line


SUMMARY_COLUMNS = ("sd_p", "ser_p", "gap_p", "sd_null95", "ser_null95", "gap_null95", "mdg80", "gap_adjusted",
                   "gap_adjusted_lo", "gap_adjusted_hi", "kidney_gap", "kidney_gap_p", "kidney_gap_null95",
                   "kidney_mdg80", "tumor_gap", "tumor_gap_p", "tumor_gap_null95", "tumor_mdg80")
