"""What case mix explains: the group gap with covariates held fixed (OLS, HC3 robust errors).

    adjusted_gap       per-case mean Dice regressed on the group plus covariates (default:
                       log(1 + tumor mL), log(1 + kidney mL), BMI); the best-minus-worst gap with the
                       covariates held fixed, beside the raw gap of the same cases; none for a
                       rank-deficient design, no interval for a one-case best or worst group
    covariate_matrix   covariate columns by name (log_<column> for log(1 + column))
    ols_hc3            OLS coefficients and HC3 (MacKinnon-White) standard errors
    design_rank        the column rank, each column scaled to unit length first

Usage:
    adj = adjusted_gap(per_case, "sex", covariates=("log_tumor_ml", "log_kidney_ml", "bmi"))
    adj["gap"], adj["lo"], adj["hi"], adj["raw"], adj["n"], adj["note"]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.grouping import group_order
from fairness.welch import range_quantile

DEFAULT_COVARIATES = ("log_tumor_ml", "log_kidney_ml", "bmi")
COVARIATE_NAMES = {"log_tumor_ml": "log tumor volume", "log_kidney_ml": "log kidney volume", "bmi": "BMI"}
COVARIATE_SOURCES = {"bmi": "bmi_kg_m2"}
_GROUP, _Y = " group", " metric"   # adjusted_gap's own column names (a leading space: no covariate's)   # covariate name -> the per-case column that holds it


def covariate_column(per_case: pd.DataFrame, name: str) -> pd.Series:
    """The numbers of covariate `name`: its column (BMI's is bmi_kg_m2, beside any "bmi" group
    column; a table without it may hold them as "bmi"), or log(1 + column) for log_<column>."""
    take_log = name.startswith("log_") and name not in per_case.columns
    base = name[4:] if take_log else name
    candidates = [c for c in (COVARIATE_SOURCES.get(base), base) if c is not None]
    source = next((c for c in candidates if c in per_case.columns), None)
    if source is None:
        raise ValueError(f"covariate {name!r}: the per-case table has no column {' or '.join(map(repr, candidates))} "
                         f"(columns: {', '.join(map(str, per_case.columns))})")
    values = pd.to_numeric(per_case[source], errors="coerce").astype(float)
    if values.isna().all() and per_case[source].notna().any():
        raise ValueError(f"covariate {name!r}: column {source!r} holds no numbers (a group label?)")
    return np.log1p(values) if take_log else values


def covariate_matrix(per_case: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Covariate columns by name (covariate_column), one column each."""
    return pd.DataFrame({name: covariate_column(per_case, name) for name in covariates}, index=per_case.index)


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
    # the group and the metric under names of their own: a covariate may share a column's name
    # (the "bmi" covariate beside a "bmi" group column)
    frame = pd.concat([per_case[group_col].rename(_GROUP), per_case[metric].rename(_Y),
                       covariate_matrix(per_case, cols)], axis=1).dropna()
    n_all = int(per_case[[group_col, metric]].notna().all(axis=1).sum())
    empty = {"gap": math.nan, "lo": math.nan, "hi": math.nan, "raw": math.nan, "raw_lo": math.nan,
             "raw_hi": math.nan, "n": len(frame), "n_all": n_all, "covariates": cols, "best": None,
             "worst": None, "note": None}
    groups = [g for g in group_order(frame[_GROUP], order=order) if (frame[_GROUP] == g).any()]
    if len(groups) < 2:
        return {**empty, "note": "fewer than 2 groups with cases and covariates"}
    means = frame.groupby(_GROUP)[_Y].mean()
    best, worst = means[groups].idxmax(), means[groups].idxmin()
    if best == worst:  # all group means equal: any other group is as worst
        worst = next(g for g in groups if g != best)
    kept = [c for c in cols if frame[c].nunique() > 1]
    dropped = [c for c in cols if c not in kept]
    y = frame[_Y].to_numpy(float)
    others = [g for g in groups if g != best]
    dummies = np.column_stack([(frame[_GROUP] == g).to_numpy(float) for g in others])
    notes = [f"constant covariate(s) dropped: {', '.join(dropped)}"] if dropped else []
    out = {**empty, "best": best, "worst": worst, "covariates": kept}
    worst_col = others.index(worst) + 1
    sizes = frame[_GROUP].value_counts()
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
