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
                       pairs with k > 2 groups (Games-Howell) because the pair is picked from the
                       data; unlike SD (>= 0) and SER (>= 1) its interval can hold 0
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

Homes: the Welch machinery (moments, the statistic, the test, the gap interval) is
fairness/welch.py, the detectable gap fairness/power.py, the adjusted gap fairness/adjusted.py;
this module puts them together into an audit's figures, its printed line and its Holm family.

All Dice values are fractions (x100 for points). tests/test_calibration.py checks calibration on
unequal sizes and spreads, skewed values with ties at 1.0, and k = 4 (docs/statistics.md): the
false-alarm rate under no effect, the power at the printed minimum detectable gap, the coverage.

Usage:
    null = group_gap_test(per_case, "sex", n_perm=5000, seed=0)     # {"gap_p", "gap_null95", ...}
    mdg = minimum_detectable_gap(per_case, "sex")                    # 0.14: 14 points
    adj = adjusted_gap(per_case, "sex", covariates=("log_tumor_ml", "log_kidney_ml", "bmi"))
    adj["gap"], adj["lo"], adj["hi"], adj["raw"], adj["n"]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fairness.adjusted import COVARIATE_NAMES, DEFAULT_COVARIATES, adjusted_gap, covariate_column
from fairness.grouping import group_order
from fairness.power import minimum_detectable_gap
from fairness.stats import draw_chunks, percentile_interval
from fairness.welch import (FLOOR_SHARE, SHAPE_TEST, TIED_BELOW, gap_interval, group_moments, mean_test, pooled_variance,
                            scored_values, test_variances, two_group_test)

CLASS_METRICS = ("kidney", "tumor")


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

def group_gap_test(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None,
                   n_perm: int = 5000, seed: int = 0, higher_is_better: bool = True) -> dict:
    """H0: the groups' mean per-case `metric` are equal (their spreads may differ). See the module.

    Returns {"sd", "ser", "gap", "sd_p", "ser_p", "gap_p", "sd_null95", "ser_null95",
    "gap_null95", "gap_lo", "gap_hi", "test", "n_perm", "groups", "spreads" (group -> SD, ddof 1;
    NaN for one case), "worst", "best", "caution"
    (skew_caution's note, or None)}; NaN figures
    with fewer than 2 scored groups, NaN p-values where no group has 2 scored cases.
    """
    values, codes, groups = scored_values(per_case, group_col, metric, order)
    keys = ("sd", "ser", "gap")
    spreads = {g: float(values[codes == i].std(ddof=1)) if (codes == i).sum() >= 2 else math.nan
               for i, g in enumerate(groups)}                  # each group's SD (ddof 1), as printed
    out = {"n_perm": int(n_perm), "groups": groups, "spreads": spreads, "test": None,
           "gap_lo": math.nan, "gap_hi": math.nan,
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
    if not math.isfinite(pooled) or pooled <= 1e-20:   # no case-to-case spread within any group (rounding aside)
        if abs(out["gap"]) < 1e-12:                 # every case alike: no evidence of a difference
            out.update(sd_p=1.0, ser_p=1.0, gap_p=1.0, sd_null95=0.0, ser_null95=1.0, gap_null95=0.0)
        return out
    rng = np.random.default_rng(seed)
    if k == 2:      # one test, one verdict: its p, its critical gap ("noise alone") and its interval
        two = two_group_test(values, codes, n_boot=n_perm, rng=rng)
        d = float(two["diff"])
        out["test"], p = SHAPE_TEST, float(two["p"])
        crit = float(two["crit_hi"]) if d >= 0 else -float(two["crit_lo"])
        lo, hi = (float(two["lo"]), float(two["hi"])) if d >= 0 else (-float(two["hi"]), -float(two["lo"]))
        better = max(means) if higher_is_better else min(means)
        worse = better - crit if higher_is_better else better + crit
        out.update(gap_null95=crit, sd_null95=crit / 2, ser_null95=float(_figures(np.array([better, worse]),
                                                                                  higher_is_better)["ser"]),
                   gap_lo=lo, gap_hi=hi)
        out["variance_notes"] = variance_notes(two["kind"], groups, counts)
        out["mdg80"] = float(two["mdg"])
    else:           # the Welch-type test of all groups together: no single gap threshold to print
        p, out["test"] = mean_test(values, codes, k, n_perm=n_perm, rng=rng)
        null = _figures(_centred_bootstrap(values, codes, k, pooled, int(n_perm), rng), higher_is_better)
        for key in ("sd", "ser"):
            out[f"{key}_null95"] = percentile_interval(null[key], 0.90)[1]
        # each group's spread as the test takes it: a tied group (or one case) the others' pooled one;
        # no interval where the best or the worst group has one case
        own = test_variances(values, codes, k, floor=False)[0]
        lo, hi = gap_interval(means, own, counts, higher_is_better=higher_is_better)
        out["gap_lo"], out["gap_hi"] = float(lo), float(hi)
        out["variance_notes"] = variance_notes(test_variances(values, codes, k, floor=False)[1], groups, counts)
    out.update(sd_p=float(p), ser_p=float(p), gap_p=float(p))
    out["caution"] = skew_caution(values, codes, groups)
    return out


def variance_notes(kind: np.ndarray, groups: list, counts: np.ndarray) -> str | None:
    """Which groups' spreads the test did not take as they were (fairness.welch.test_variances)."""
    pooled = [f"{g} ({int(n)} case{'s' if n != 1 else ''})" for g, n, k in zip(groups, counts, kind) if k == 1]
    floored = [str(g) for g, k in zip(groups, kind) if k == 2]
    notes = []
    if pooled:
        notes.append(f"{', '.join(pooled)}: fewer than {TIED_BELOW} distinct values, no spread of their own; the "
                     "test uses the spread pooled over the other groups")
    if floored:
        notes.append(f"{', '.join(floored)}: a spread below {FLOOR_SHARE:g} of the larger groups' one, which a small "
                     "sample often shows by missing rare failures; the test uses that floor")
    return "; ".join(notes) or None


SKEW_CAUTION = (15, 1.5)    # groups under 15 cases with |skewness| >= 1.5: docs/statistics.md's limit
FEW_CASES = 6               # under this a group's skewness cannot be seen (its bound is (n - 2) / sqrt(n - 1))


def skew_caution(values: np.ndarray, codes: np.ndarray, groups: list) -> str | None:
    """A note when a group is too small for its spread and shape to be known: fewer than FEW_CASES
    scored cases always (the sample skewness of n cases cannot exceed (n - 2) / sqrt(n - 1), below
    1.5 for n <= 5, so no skewness rule can fire there), and a group under 15 cases with a sample
    skewness of 1.5 or more in size (the grid's exponential tail at 8 cases: 9-13 % false alarms)."""
    small, limit = SKEW_CAUTION
    few, skewed = [], []
    for i, g in enumerate(groups):
        v = values[codes == i]
        if 0 < v.size < FEW_CASES:
            few.append(f"{g} ({v.size} case{'s' if v.size != 1 else ''})")
            continue
        centred = v - v.mean()
        spread2 = float(np.mean(centred ** 2))
        if v.size < small and spread2 > 1e-12:      # (nearly) tied values have no skewness to speak of
            skew = float(np.mean(centred ** 3)) / spread2 ** 1.5       # scipy.stats.skew's (biased) estimate
            if abs(skew) >= limit:
                skewed.append(f"{g} ({v.size} cases, skewness {skew:+.1f})")
    notes = []
    if few:
        notes.append(f"group(s) of fewer than {FEW_CASES} cases: {', '.join(few)}, whose spread and shape the data "
                     "cannot show")
    if skewed:
        notes.append(f"small, strongly skewed group(s): {', '.join(skewed)}")
    if not notes:
        return None
    return "; ".join(notes) + "; the p-value can be off there (docs/statistics.md): read the per-case values"


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
        own = scaled[codes == g] if counts[g] >= 2 else shared   # shared is never empty: pooled is finite
        for start, stop in draw_chunks(n_boot, counts[g]):
            means[start:stop, g] = grand + own[rng.integers(0, own.size, size=(stop - start, counts[g]))].mean(axis=1)
    return means


def pooled_spread(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> float:
    """The pooled within-group standard deviation of the per-case metric."""
    values, codes, groups = scored_values(per_case, group_col, metric, order)
    return math.sqrt(pooled_variance(values, codes, len(groups))) if groups else math.nan


def small_groups(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None) -> list:
    """Groups of one scored case: they get no interval (groups of none are noted as empty)."""
    frame = per_case[[group_col, metric]].dropna()
    return [g for g in group_order(per_case[group_col].dropna(), order=order) if (frame[group_col] == g).sum() == 1]


# --- the audit's figures, flat ----------------------------------------------------------------

def significance(per_case: pd.DataFrame, group_col: str, *, metric: str = "mean", order=None, n_perm: int = 5000,
                 seed: int = 0, covariates: Sequence[str] | None = DEFAULT_COVARIATES,
                 higher_is_better: bool = True) -> dict:
    """Everything SPEC §5 asks of an audit, flat: the summary CSV's columns and the printed line.
    The p-values are raw; holm_family (below) adds the "<key>_holm" ones over a screen."""
    test = group_gap_test(per_case, group_col, metric=metric, order=order, n_perm=n_perm, seed=seed,
                          higher_is_better=higher_is_better)
    out = {k: v for k, v in test.items() if k != "groups"}
    out["spread"] = pooled_spread(per_case, group_col, metric=metric, order=order)
    if not math.isfinite(out.get("mdg80", math.nan)):    # two groups: the test's own (group_gap_test)
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
            out[f"{part}_mdg80"] = test.get("mdg80", math.nan) if math.isfinite(test.get("mdg80", math.nan)) else \
                minimum_detectable_gap(per_case, group_col, metric=part, order=order)
            out[f"{part}_caution"] = test.get("caution")              # each class test's own caution and
            out[f"{part}_variance_notes"] = test.get("variance_notes")  # spread notes reach the line
    return out


def _has_column(per_case: pd.DataFrame, name: str) -> bool:
    """Whether the table holds covariate `name` with at least one number (adjusted.covariate_column)."""
    try:
        return bool(covariate_column(per_case, name).notna().any())
    except ValueError:
        return False


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_text(sig: dict, key: str) -> str:
    """'p = 0.012, Holm 0.048' (the Holm value once the screen's family is known)."""
    if not math.isfinite(sig.get(key, math.nan)):
        return "no test"
    holm = sig.get(f"{key}_holm", math.nan)
    family = f" over {sig['holm_family']} tests" if sig.get("holm_family") else ""
    shown = _p(sig[key])
    return ("p " if shown.startswith("<") else "p = ") + shown + (f", Holm{family} {_p(holm)}" if math.isfinite(holm) else "")


MAX_DETECTABLE = 1.0     # a Dice (fraction) cannot move more than this: a larger detectable gap is "none"


def _detectable(value: float, scale: float, unit: str, fraction: bool) -> str:
    if not math.isfinite(value):
        return "-"
    if fraction and value > MAX_DETECTABLE:
        return f"none (these groups would need a gap above the {scale * MAX_DETECTABLE:.0f} {unit} the metric can move)"
    return f"{scale * value:.1f} {unit}"


def significance_line(sig: dict, metric=None) -> str:
    """The worded line under a table: the gap with its interval, against what noise alone gives
    and what is detectable (in Dice points, or in the unit of `metric`, fairness/metrics.py). One
    verdict: with two groups "noise alone gives up to X" is the test's own critical gap, so the p is
    below 0.05 exactly when the gap is beyond X and the interval misses 0; with more groups the test
    is of all the groups' means together and no single gap threshold is printed."""
    if not math.isfinite(sig.get("gap", math.nan)):
        return "(fewer than 2 groups with scored cases: no gap to test)"
    fraction = metric is None or metric.unit == "%"
    scale, unit = (100.0, "points") if fraction else (metric.scale, metric.unit)
    pts = lambda v: f"{scale * v:.1f}" if math.isfinite(v) else "-"  # noqa: E731
    interval = f" [{pts(sig['gap_lo'])}, {pts(sig['gap_hi'])}]" if math.isfinite(sig.get("gap_lo", math.nan)) else ""
    test = f"{sig['test']}, " if sig.get("test") else ""
    if math.isfinite(sig.get("gap_null95", math.nan)):
        line = (f"gap {pts(sig['gap'])}{interval} {unit}; noise alone gives up to {pts(sig['gap_null95'])} in this "
                f"direction with these groups' spreads ({test}{_p_text(sig, 'gap_p')})")
    else:
        line = (f"gap {pts(sig['gap'])}{interval} {unit} (interval simultaneous over the pairs); all the groups' means "
                f"together: {test}{_p_text(sig, 'gap_p')}")
    line += f"; detectable: {_detectable(sig.get('mdg80', math.nan), scale, unit, fraction)}"
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
    parts = []
    for part in CLASS_METRICS:
        if not math.isfinite(sig.get(f"{part}_gap", math.nan)):
            continue
        noise = sig.get(f"{part}_gap_null95", math.nan)
        parts.append(f"{part} gap {pts(sig[f'{part}_gap'])}, worst {sig[f'{part}_worst']} ({_p_text(sig, f'{part}_gap_p')}"
                     + (f"; noise alone up to {pts(noise)}" if math.isfinite(noise) else "") + ")")
    if parts:
        line += "\nby class: " + "; ".join(parts)
    notes = [(None, sig.get("variance_notes")), (None, sig.get("caution"))]
    notes += [(part, sig.get(f"{part}_variance_notes")) for part in CLASS_METRICS]
    notes += [(part, sig.get(f"{part}_caution")) for part in CLASS_METRICS]
    seen = set()
    for part, note in notes:
        if note and (part, note) not in seen and note not in {n for _, n in seen}:
            seen.add((part, note))
            line += f"\n({'' if part is None else part + ': '}{'caution: ' if 'p-value can be off' in note else 'spread: '}{note})"
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
