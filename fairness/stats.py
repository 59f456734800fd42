"""Uncertainty of the fairness numbers: bootstrap intervals, a group difference test, seed averages.

The study's test sets are small (tens of cases per group), so a gap of a few Dice points between
groups may be noise. This module says how much:

    bootstrap_audit        each group's (and "all"'s) mean Dice kidney / tumor / mean with Student's
                           t interval, and a stratified percentile bootstrap of SD and SER of the
                           group mean Dice (SD >= 0 and SER >= 1 by construction: their intervals
                           never hold 0 or 1, so whether a gap is beyond noise is the studentised
                           test's answer, fairness/significance.py, not theirs)
    group_difference_test  rank test of per-case Dice across groups: Mann-Whitney U for two
                           groups, Kruskal-Wallis for more (scipy, two-sided)
    audit_figures          an Audit (fairness.audit) flattened to {"mean/male": .., "sd": .., ...}
    aggregate_seeds        mean, sample std (ddof=1) and count over seeds of such flat dicts,
                           the study's "mean ± std over seeds" (SD and SER per seed, then averaged)

Every Dice number here is a fraction in [0, 1], as in group_table; SD too (x100 for Dice %).

Usage:
    from fairness.stats import aggregate_seeds, audit_figures, bootstrap_audit, group_difference_test
    boot = bootstrap_audit(per_case, group_col="sex", order=["male", "female"], n_boot=2000, seed=0)
    boot["groups"].loc["female", ["mean_lo", "mean_hi"]]   # 95% interval of female mean Dice
    boot["sd"], boot["ser"]                                 # (lo, hi) each
    group_difference_test(per_case, group_col="age_group", metric="mean")["p"]
    seeds = [audit_figures(audit_groups(pc, group_col="sex")) for pc in per_case_of_each_seed]
    aggregate_seeds(seeds)["sd"]                            # {"mean": .., "std": .., "n": 3}
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.case_dice import METRICS
from fairness.grouping import group_order
from fairness.tables import ALL_ROW



# --- bootstrap -----------------------------------------------------------------------------

def _check_columns(per_case: pd.DataFrame, columns: Sequence[str]) -> None:
    absent = [c for c in columns if c not in per_case.columns]
    if absent:
        raise KeyError(f"per_case has no column(s) {absent}; it has {list(per_case.columns)}")


def percentile_interval(samples, level: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of bootstrap samples; NaN samples are left out, inf allowed.

    numpy's linear interpolation computes a + t * (b - a), which is NaN when a and b are both
    inf; SER is inf in every resample where a group is at Dice 1. So the interpolation is done
    here: an end that falls between a finite value and inf is inf (there is weight on inf), an
    end that falls exactly on a sample is that sample. So the upper end of SER's interval is inf
    as soon as more than about (1 - level) / 2 of the resamples have a perfect group, the lower
    end only when nearly all do. With no non-NaN sample, (NaN, NaN).
    """
    arr = np.asarray(samples, dtype=float).ravel()
    arr = np.sort(arr[~np.isnan(arr)])
    if arr.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    return _interpolate(arr, tail), _interpolate(arr, 1.0 - tail)


def _interpolate(sorted_values: np.ndarray, q: float) -> float:
    position = q * (sorted_values.size - 1)          # numpy's "linear" method
    below, above = math.floor(position), math.ceil(position)
    a, b = float(sorted_values[below]), float(sorted_values[above])
    t = position - below
    if t == 0.0 or a == b:                          # also keeps inf == inf away from inf - inf
        return a
    if math.isinf(b):
        return math.inf
    return a + t * (b - a)


DRAW_BUDGET = 2**24   # values a resampling block holds at once (128 MB of float64)


def _resample_sums(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For one stratum (cases x metrics, NaN = not scored): per resample, sum and count of scored values.

    Cases, not values, are drawn, so a case brings all its metrics along; sums and counts (rather
    than means) let "all" be pooled over strata exactly as group_table pools cases.
    """
    sums, counts = np.empty((n_boot, values.shape[1])), np.empty((n_boot, values.shape[1]), dtype=np.int64)
    for start, stop in draw_chunks(n_boot, values.size):
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))   # with replacement, same size
        drawn = values[idx]                                                    # (draws, n_cases, n_metrics)
        scored = ~np.isnan(drawn)
        sums[start:stop], counts[start:stop] = np.where(scored, drawn, 0.0).sum(axis=1), scored.sum(axis=1)
    return sums, counts


def draw_chunks(n_draws: int, per_draw: int):
    """(start, stop) blocks of resampling draws holding at most DRAW_BUDGET values at once, so
    memory does not grow as draws x cases (10^5 cases, 5000 draws: 4 GB in one block). One
    block, the whole range, whenever it fits: small audits draw exactly as before."""
    step = max(1, DRAW_BUDGET // max(int(per_draw), 1))
    for start in range(0, int(n_draws), step):
        yield start, min(int(n_draws), start + step)


def _mean_intervals(column: np.ndarray, codes: np.ndarray, groups: list, n_boot: int, rng, level: float):
    """(group, lo, hi) for every group and "all" of one metric column (NaN = not scored; codes NaN =
    no group: only in "all")."""
    from fairness.welch import mean_intervals

    scored = ~np.isnan(column)
    grouped = scored & ~pd.isna(codes)
    out = []
    if grouped.any():
        present = np.unique(codes[grouped].astype(np.int64))
        remap = {int(c): i for i, c in enumerate(present)}
        local = np.array([remap[int(c)] for c in codes[grouped]], dtype=np.int64)
        lo, hi = mean_intervals(column[grouped], local, len(present), n_boot=n_boot, rng=rng, level=level)
        bounds = {groups[int(c)]: (float(lo[i]), float(hi[i])) for i, c in enumerate(present)}
    else:
        bounds = {}
    out += [(g, *bounds.get(g, (math.nan, math.nan))) for g in groups]
    if scored.sum() >= 2:
        lo, hi = mean_intervals(column[scored], np.zeros(int(scored.sum()), np.int64), 1, n_boot=n_boot, rng=rng,
                                level=level)
        out.append((ALL_ROW, float(lo[0]), float(hi[0])))
    else:
        out.append((ALL_ROW, math.nan, math.nan))
    return out


def t_interval(values, level: float = 0.95):
    """Student's t interval of the mean of the non-NaN values over the last axis; (NaN, NaN) with
    fewer than 2. Floats for a 1-d input, arrays over the leading axes otherwise. No H0: a
    confidence interval for the group's true mean."""
    arr = np.asarray(values, dtype=float)
    present = ~np.isnan(arr)
    n = present.sum(axis=-1)
    filled = np.where(present, arr, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=-1) / n
        var = (np.where(present, arr - mean[..., None], 0.0) ** 2).sum(axis=-1) / (n - 1)
        half = scipy_stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * np.sqrt(var / n)
    lo, hi = np.where(n >= 2, mean - half, np.nan), np.where(n >= 2, mean + half, np.nan)
    return (float(lo), float(hi)) if arr.ndim == 1 else (lo, hi)


def _means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sums / counts, NaN where a resample drew no scored case (like group_table's empty group)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def sd_ser_of_rows(group_means: np.ndarray, *, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """fairness_summary's SD (ddof=0) and SER for each row of a (resamples x groups) array.

    The vectorised twin of fairness.summary (2000 calls of it would take seconds, with warnings);
    tests check that both agree. Rows holding a NaN get NaN: a group present in the data that
    drew no scored case has no mean, and SD over fewer groups would be a different statistic.
    """
    sd = group_means.std(axis=1, ddof=0)
    errors = 1.0 - group_means if higher_is_better else group_means   # a distance is its own error
    high, low = errors.max(axis=1), errors.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ser = np.where(high == low, 1.0, np.where(low == 0.0, np.inf, high / low))
    undefined = np.isnan(group_means).any(axis=1)
    return np.where(undefined, np.nan, sd), np.where(undefined, np.nan, ser)


def bootstrap_audit(
    per_case: pd.DataFrame,
    group_col: str,
    *,
    order: Sequence[Hashable] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    keep_samples: bool = False,
    higher_is_better: bool = True,
) -> dict:
    """Intervals of group mean Dice and "all" mean Dice (Student t), SD and SER (bootstrap).

    Each resample draws, within every group, as many cases as the group has, with replacement
    (numpy Generator(seed), groups in `group_order`'s order): the group sizes are those of the
    study's split, not a random outcome, so they are held fixed. Cases without a group label are
    a stratum of their own, used only for "all" (as in group_table). Per resample: each group's
    mean over its scored cases of kidney, tumor and mean (NaN cases left out like group_table
    does), "all" pooled over every drawn case, and SD / SER of the group *mean* Dice over the
    groups that have a scored mean Dice in the data (sd_ser_of_rows = fairness_summary).

    Returns
        "groups"  DataFrame indexed by group, then "all": kidney_lo, kidney_hi, tumor_lo,
                  tumor_hi, mean_lo, mean_hi (fractions): Student's t interval over the group's
                  scored values of that metric; NaN for fewer than 2 scored values (a group of 3
                  with one scored tumor has a kidney interval and no tumor one).
        "sd", "ser"  (lo, hi); (NaN, NaN) with fewer than 2 groups having a scored mean Dice.
                  SD is in fractions (x100 for Dice %); SER's hi may be inf (percentile_interval).
        "n_boot", "seed", "level"  as given.
        "samples" (only with keep_samples) DataFrame, one row per resample: "<metric>/<group>",
                  "<metric>/all", "sd", "ser".
    A group of fewer than 2 scored mean values gets no interval (NaN), and then neither do SD and
    SER: their resamples would move with one case's Dice.
    Resamples where a statistic is undefined (a small group drawing only NaN tumor cases) are
    left out of that statistic's percentiles.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    n_boot = int(n_boot)
    _check_columns(per_case, [group_col, *METRICS])
    labels = per_case[group_col]
    groups = group_order(labels, order=order)
    if ALL_ROW in groups:
        raise ValueError(f"a group is named {ALL_ROW!r}, which is the name of the overall row")
    values = per_case[list(METRICS)].astype(float).to_numpy()
    rng = np.random.default_rng(seed)

    means = {}                                           # group -> (n_boot, n_metrics)
    all_sums = np.zeros((n_boot, len(METRICS)))
    all_counts = np.zeros((n_boot, len(METRICS)), dtype=np.int64)
    strata = [(g, (labels == g).to_numpy()) for g in groups] + [(None, labels.isna().to_numpy())]
    for group, in_group in strata:
        if not in_group.any():
            if group is not None:
                means[group] = np.full((n_boot, len(METRICS)), np.nan)
            continue
        sums, counts = _resample_sums(values[in_group], n_boot, rng)
        all_sums += sums
        all_counts += counts
        if group is not None:
            means[group] = _means(sums, counts)
    means[ALL_ROW] = _means(all_sums, all_counts)

    # A group mean's interval is the bootstrap-t whose reference draws from the groups' shared pool of
    # standardised residuals (fairness.welch.mean_intervals): the percentile bootstrap of a mean covers
    # 79 % at 4 cases and 89 % at 8 (normal values), Student's t 86-91 % on KiTS-like Dice in groups of
    # 3-15, this 91-97 % (docs/statistics.md). Fewer than 2 scored values: no interval (one case
    # resamples to itself, width 0, false certainty). "all" is one group of every case.
    scored = {g: (~np.isnan(values[(labels == g).to_numpy()])).sum(axis=0) for g in groups}
    rows = {group: {} for group in [*groups, ALL_ROW]}
    codes_all = labels.map({g: i for i, g in enumerate(groups)})
    for j, metric in enumerate(METRICS):
        column = values[:, j]
        for group, lo, hi in _mean_intervals(column, codes_all.to_numpy(), groups, n_boot, rng, level):
            rows[group][f"{metric}_lo"], rows[group][f"{metric}_hi"] = lo, hi
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.Index(list(rows), name=group_col, dtype=object)

    # SD/SER over the groups with a scored mean Dice in the data, as audit_groups' summary
    mean_j = METRICS.index("mean")
    present = [g for g in groups if scored[g][mean_j] > 0]
    if len(present) >= 2:
        sd, ser = sd_ser_of_rows(np.column_stack([means[g][:, mean_j] for g in present]),
                                 higher_is_better=higher_is_better)
    else:
        sd = ser = np.full(n_boot, np.nan)
    if len(present) >= 2 and all(scored[g][mean_j] >= 2 for g in present):
        sd_ci, ser_ci = percentile_interval(sd, level), percentile_interval(ser, level)
    else:   # SD/SER move with a one-case group's mean too: no interval either
        sd_ci = ser_ci = (math.nan, math.nan)

    result = {"groups": table, "sd": sd_ci, "ser": ser_ci, "n_boot": n_boot, "seed": seed, "level": level}
    if keep_samples:
        samples = {f"{metric}/{g}": m[:, j] for g, m in means.items() for j, metric in enumerate(METRICS)}
        result["samples"] = pd.DataFrame({**samples, "sd": sd, "ser": ser})
    return result


# --- group difference test -----------------------------------------------------------------

def group_difference_test(
    per_case: pd.DataFrame,
    group_col: str,
    *,
    metric: str = "mean",
    order: Sequence[Hashable] | None = None,
) -> dict:
    """Do the groups' per-case `metric` values differ? Rank tests, two-sided, NaN values dropped.

    Ranks, not means: per-case Dice is bounded and skewed (a few failed cases near 0), so a
    t-test's normality would not hold. Two groups with values: Mann-Whitney U (scipy defaults);
    more: Kruskal-Wallis. Returns {"test", "statistic", "p", "groups" (those used, in table
    order), "note"}. Never raises on data: groups with no value are skipped and named in the
    note; fewer than 2 usable groups give test None, statistic and p NaN, and a note; all values
    identical name the test that applies, with statistic and p NaN and a note.
    """
    _check_columns(per_case, [group_col, metric])
    labels = per_case[group_col]
    values = per_case[metric].astype(float)
    samples, empty = {}, []
    for group in group_order(labels, order=order):
        v = values[(labels == group).to_numpy()].dropna().to_numpy()
        if v.size:
            samples[group] = v
        else:
            empty.append(str(group))
    notes = [f"group(s) {empty} have no {metric!r} value and are left out"] if empty else []
    result = {"test": None, "statistic": math.nan, "p": math.nan, "groups": list(samples), "note": None}

    if len(samples) < 2:
        notes.append(f"{len(samples)} group(s) with values: nothing to compare")
    elif np.unique(np.concatenate(list(samples.values()))).size == 1:
        # every rank ties; Kruskal-Wallis raises on this and Mann-Whitney's p would be arbitrary
        result["test"] = "Mann-Whitney U" if len(samples) == 2 else "Kruskal-Wallis"
        notes.append("all values are identical: no test")
    else:
        two = len(samples) == 2
        try:
            res = scipy_stats.mannwhitneyu(*samples.values(), alternative="two-sided") if two \
                else scipy_stats.kruskal(*samples.values())
            result.update(test="Mann-Whitney U" if two else "Kruskal-Wallis",
                          statistic=float(res.statistic), p=float(res.pvalue))
        except ValueError as err:        # a degenerate case scipy knows of and we did not foresee
            notes.append(f"scipy refused the test: {err}")
    result["note"] = "; ".join(notes) or None
    return result


# --- seeds ---------------------------------------------------------------------------------

def audit_figures(audit) -> dict:
    """The numbers of an Audit as one flat dict, ready for aggregate_seeds or a CSV row.

    Keys: "<kidney|tumor|mean|n>/<group>" for each group and "all" (Dice as fractions), "sd",
    "ser", "es_dice", "worst", "gap" (fractions, SER unitless) and "cvar/<group>". Group names
    are not numbers, so worst_group / best_group are left out (they may differ between seeds).
    """
    figures = {}
    for group, row in audit.table.iterrows():
        for column in (*METRICS, "n"):
            figures[f"{column}/{group}"] = float(row[column])
    for key in ("sd", "ser", "es_dice", "worst", "gap"):
        figures[key] = float(audit.summary[key])
    for group, value in audit.cvar.items():
        figures[f"cvar/{group}"] = float(value)
    return figures


def aggregate_seeds(figures: Sequence[Mapping[str, float]]) -> dict:
    """{name: {"mean", "std", "n"}} over seeds, one flat dict of numbers per seed.

    The study's way (SPEC "Metrics"): every figure, SD and SER included, is computed per seed and
    then averaged, so SD here is the mean of per-seed SDs, not the SD of averaged group means.
    std is the SAMPLE standard deviation (ddof=1), NaN with a single seed. A figure that is NaN
    or absent in a seed is left out for that figure only, and n counts the seeds it was taken
    from (n = 0: mean and std NaN). An inf (SER with a perfect group) makes the mean inf and the
    std NaN. Names are in order of first appearance.
    """
    names = list(dict.fromkeys(name for seed in figures for name in seed))
    result = {}
    for name in names:
        used = []
        for seed in figures:
            if name not in seed:
                continue
            try:
                value = float(seed[name])
            except (TypeError, ValueError):
                raise TypeError(f"figure {name!r} = {seed[name]!r} is not a number") from None
            if not math.isnan(value):
                used.append(value)
        result[name] = _mean_std(used)
    return result


def _mean_std(values: list[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    arr = np.asarray(values)
    if np.isinf(arr).any():                      # numpy would warn on inf - inf
        return {"mean": float(arr.sum()), "std": math.nan, "n": n}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if n > 1 else math.nan, "n": n}
