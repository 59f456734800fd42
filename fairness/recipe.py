"""This recipe, not this model: comparisons with the training seeds as the unit (SPEC §5a).

"Is RESM fairer than the baseline?" is a question about training recipes. Each trained model is one
draw of its recipe: a seed moves every test case of that model together (a better or a worse model),
so a test that resamples cases and holds the models fixed (fairness/paired.py, "this model") reads a
lucky seed as a method effect: two seeds of one recipe differ there at p < 0.05 in 45 % of mean-Dice
comparisons. Here the seeds are the sample, and the test cases are a sample too:

    Δ = mean over B's runs of T(run) − mean over A's runs of T(run)

for a per-run statistic T (the mean Dice over cases, the SD and SER of the group mean Dice, the
worst group's mean, the gap), with a variance of two parts:

    seeds   s_A² / R_A + s_B² / R_B, the spread of T between runs of one recipe (Welch across seeds;
            or one between-seed variance pooled over the methods of a table, `seed_variance`)
    cases   what another set of test cases would change in Δ: the stratified jackknife over cases
            (within groups, the same case left out of every run) of Δ, minus the part of it that is
            case-by-run noise, which the seed part already holds (the jackknife of each run's
            deviation from its recipe's mean, / R(R − 1)); floored at 0, and 0 for an A/A
            comparison in expectation

A t interval and a two-sided t test with Satterthwaite's degrees of freedom (the seed parts have
R − 1 each, the case part the cases'), so the interval excludes 0 exactly when p < 1 − level.
H0 of the p: the two recipes give the same expected T (over seeds and over test sets of this
size). A method with one run gets no recipe-level answer.

    recipe_gap       one recipe's own gap with the seeds as the unit: the best-minus-worst group
                     of the seed-averaged group means (two groups: first minus second), its
                     variance of the same two parts, and with k > 2 groups the studentised range
                     (Games-Howell) because the pair is picked from the data
    detectable_delta the smallest true Δ this comparison finds with 80 % power at 5 %, averaged over
                     what the true variance can be given its estimate (as fairness/power.py)
    seeds_needed     seeds per method for a named Δ, from the between-seed spread measured

Statistics are in the per-case values' units (Dice fractions); callers scale (Dice points = x100).
`fairness.calibration_recipe` simulates per-case tables with seed and case variance components and
measures all of this (docs/statistics.md, "Recipes").

Usage:
    row = recipe_delta(baseline_frames, method_frames, "sex", order=["male", "female"], metric="kidney")
    row["delta_sd"], row["delta_sd_lo"], row["delta_sd_hi"], row["p_sd"], row["detectable_sd"]
    gap = recipe_gap(frames_of_one_recipe, "sex", order=["male", "female"], metric="kidney")
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.grouping import group_order
from fairness.metrics import DICE

STATISTICS = ("mean", "sd", "ser", "worst", "gap")
# (class, statistic): the recipe-level Δ a comparison's screen prints and Holm-adjusts as one family,
# with each method's own gap per class (evaluate.py --compare, report.html)
PRINTED_DELTAS = (("mean", "mean"), ("mean", "sd"), ("mean", "ser"), ("mean", "worst"), ("mean", "gap"),
                  ("kidney", "gap"), ("tumor", "gap"))
SEED_VARIANCE = ("own", "pooled")
POWER, ALPHA = 0.8, 0.05
# what a single-model audit answers, said wherever it could be read as a claim about the recipe
THIS_MODEL = ("These figures are about this model: the test cases are the sample and the trained model is fixed. "
              "Whether the recipe (these settings, whatever the seed) is biased, or fairer than another, is a "
              "question about seeds: train several (train.py --config CONFIG --seeds 0 1 2 3 4, or "
              "bench/fairness_matrix.py --seeds ...), then evaluate.py --ckpt runs/NAME/seed*/last.pt, or "
              "--compare the recipes' folders.")


# --- per-run statistics -------------------------------------------------------------------------

def _group_sums(values: np.ndarray, onehot: np.ndarray):
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    return filled @ onehot, present.astype(float) @ onehot, filled.sum(axis=-1), present.sum(axis=-1)


def run_statistics(values: np.ndarray, onehot: np.ndarray, *, higher_is_better: bool = True,
                   signed: bool | None = None) -> dict:
    """{statistic: (..., R)} of per-case values (..., R, n) with NaN for unscored cases; onehot
    (n, k). mean: over the scored cases; sd (ddof 0), ser, worst: of the group means; gap: group 0
    minus group 1 when signed (default: k == 2), else best minus worst. NaN where a group has no
    scored case in a run."""
    k = onehot.shape[1]
    signed = k == 2 if signed is None else signed
    sums, counts, total, scored = _group_sums(values, onehot)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / counts
        overall = total / scored
        low, high = means.min(axis=-1), means.max(axis=-1)
        if higher_is_better:
            worst, ser, spread = low, np.where(high == low, 1.0, (1.0 - low) / (1.0 - high)), high - low
        else:
            worst, ser, spread = high, np.where(high == low, 1.0, high / low), high - low
        gap = means[..., 0] - means[..., 1] if signed else spread
    undefined = np.isnan(means).any(axis=-1)
    nan = np.nan
    return {"mean": overall, "sd": np.where(undefined, nan, means.std(axis=-1)),
            "ser": np.where(undefined, nan, ser), "worst": np.where(undefined, nan, worst),
            "gap": np.where(undefined, nan, gap)}


def gradients(means: np.ndarray, sizes: np.ndarray, *, higher_is_better: bool = True,
              signed: bool | None = None) -> dict:
    """{statistic: (..., k)}: the derivative of each statistic (as run_statistics computes it from
    the group means) with respect to each group mean, at means (..., k); sizes (k,) weigh the
    overall mean. The delta method's weights for the case part of the variance."""
    k = means.shape[-1]
    signed = k == 2 if signed is None else signed
    eye = np.eye(k)
    lo_i, hi_i = np.argmin(means, axis=-1), np.argmax(means, axis=-1)
    lo, hi = np.take_along_axis(means, lo_i[..., None], -1), np.take_along_axis(means, hi_i[..., None], -1)
    at_lo, at_hi = eye[lo_i], eye[hi_i]
    centred = means - means.mean(axis=-1, keepdims=True)
    sd = np.sqrt(np.mean(centred ** 2, axis=-1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        d_sd = np.where(sd > 0, centred / (k * sd), 0.0)
        if higher_is_better:    # SER = (1 - lo) / (1 - hi)
            d_ser = -at_lo / (1 - hi) + at_hi * (1 - lo) / (1 - hi) ** 2
            worst = at_lo
        else:                   # SER = hi / lo
            d_ser = at_hi / lo - at_lo * hi / lo ** 2
            worst = at_hi
    gap = np.broadcast_to(eye[0] - eye[1], means.shape) if signed else at_hi - at_lo
    mean = np.broadcast_to(sizes / sizes.sum(), means.shape)
    return {"mean": mean, "sd": d_sd, "ser": np.nan_to_num(d_ser), "worst": worst, "gap": gap}


def interaction_variance(stacks: Sequence[np.ndarray], weights: Sequence[float], codes: np.ndarray,
                         k: int) -> np.ndarray:
    """(..., k): per group g, the variance of the mean over g's cases of d_i = sum_m w_m ybar_{m,i}
    (ybar: case i's value averaged over method m's runs) that another set of test cases would
    give, beyond the case-by-run noise that the seed part already holds:

        V_g = var_{i in g}(d_i) / n_g - sum_m w_m^2 s2_{m,g} / (R_m n_g)

    with s2_{m,g} the run-by-case residual variance of method m's runs on g's cases (two-way
    ANOVA). Two methods with weights -1, +1: the recipe-by-case interaction of a comparison (0 in
    expectation for an A/A one); one method with weight 1: the case-sampling variance of its
    expected group means. NaN values are left out. Not floored: case_part floors the weighted sum."""
    shape = stacks[0].shape[:-2]
    out = np.zeros(shape + (k,))
    with np.errstate(invalid="ignore", divide="ignore"):
        case_means = [np.nanmean(v, axis=-2) for v in stacks]                          # (..., n)
        d = sum(w * c for w, c in zip(weights, case_means))
        for g in range(k):
            members = codes == g
            n_g = int(members.sum())
            if n_g < 2:
                continue
            var_d = np.nanvar(d[..., members], axis=-1, ddof=1)
            noise = np.zeros(shape)
            for w, v in zip(weights, stacks):
                part = v[..., members]                                                 # (..., R, n_g)
                runs = part.shape[-2]
                if runs < 2:
                    continue
                residual = (part - np.nanmean(part, axis=-1, keepdims=True) - np.nanmean(part, axis=-2, keepdims=True)
                            + np.nanmean(part, axis=(-2, -1), keepdims=True))
                s2 = np.nansum(residual ** 2, axis=(-2, -1)) / ((runs - 1) * (n_g - 1))
                noise = noise + w ** 2 * s2 / runs
            out[..., g] = np.nan_to_num((var_d - noise) / n_g)
    return out


def case_part(gradient: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """sum_g gradient_g^2 V_g, floored at 0: the delta method's case-sampling variance of a
    statistic (each V_g is unbiased and may be negative; the floor is on the sum, which biases it
    less than flooring each group)."""
    return np.maximum(np.sum(gradient ** 2 * variances, axis=-1), 0.0)


# --- the test and its power --------------------------------------------------------------------

def t_test(delta, parts: Sequence, dofs: Sequence, level: float = 0.95) -> dict:
    """Δ with SE² = sum(parts) and Satterthwaite's dof over the parts' own dofs: the t interval,
    the two-sided p and the dof. Arrays broadcast. A zero SE gives NaN (no spread to test against)."""
    parts = [np.asarray(p, dtype=float) for p in parts]
    variance = sum(parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = variance ** 2 / sum(p ** 2 / d for p, d in zip(parts, dofs))
        se = np.sqrt(variance)
        dof = np.where(np.isfinite(dof), dof, np.inf)
        t = np.asarray(delta) / se
        p = 2 * scipy_stats.t.sf(np.abs(t), dof)
        half = scipy_stats.t.ppf(0.5 + level / 2, dof) * se
    ok = np.isfinite(se) & (se > 0) & np.isfinite(delta)
    nan = np.nan
    return {"se": np.where(ok, se, nan), "dof": np.where(ok, dof, nan), "p": np.where(ok, p, nan),
            "lo": np.where(ok, delta - half, nan), "hi": np.where(ok, delta + half, nan)}


def detectable_delta(se, dof, *, level: float = ALPHA, power: float = POWER, estimated: bool = True):
    """The smallest true |Δ| a two-sided t test at `level` finds with `power`, for a test whose SE
    and dof are these. estimated=True: the SE is itself an estimate with `dof` degrees of freedom,
    and the power is averaged over what the true SE can be given it (the quantile midpoints of
    dof / chi2(dof)), so that, over comparisons, the power at the printed Δ is `power` (as
    fairness/power.py does for the group gap). Arrays broadcast; NaN where se or dof is not finite.
    The ratio Δ / SE depends on the dof alone: it is tabulated once and interpolated in log dof."""
    se, dof = np.broadcast_arrays(np.asarray(se, dtype=float), np.asarray(dof, dtype=float))
    ok = np.isfinite(se) & (se > 0) & np.isfinite(dof) & (dof > 0)
    dofs, factors = _detectable_table(level, power, estimated)
    d = np.clip(np.where(ok, dof, 1.0), dofs[0], dofs[-1])
    out = np.where(ok, np.exp(np.interp(np.log(d), np.log(dofs), np.log(factors))) * se, np.nan)
    return float(out) if out.ndim == 0 else out


@functools.lru_cache(maxsize=None)
def _detectable_table(level: float, power: float, estimated: bool) -> tuple[np.ndarray, np.ndarray]:
    """(dofs, Δ / SE at 80 % power) on a log grid of dofs from 0.5 to 10^5 (bisection on the
    noncentral t, averaged over the SE's uncertainty when estimated)."""
    dofs = np.geomspace(0.5, 1e5, 200)
    d = dofs[:, None]
    critical = scipy_stats.t.isf(level / 2, d)
    if estimated:
        share = np.sqrt(scipy_stats.chi2.ppf((np.arange(24) + 0.5) / 24, d) / d)   # true SE = est / share
    else:
        share = np.ones((dofs.size, 1))

    def power_at(ncp):          # ncp: Δ / estimated SE, one per dof
        shifted = ncp[:, None] * share
        # the lower tail is P(T > c) at -ncp (nct.cdf gives NaN far in its tail); NaN there is ~0
        upper = np.nan_to_num(scipy_stats.nct.sf(critical, d, shifted), nan=1.0)
        lower = np.nan_to_num(scipy_stats.nct.sf(critical, d, -shifted), nan=0.0)
        return (upper + lower).mean(axis=-1)

    low, high = np.zeros(dofs.size), np.full(dofs.size, 4.0)
    while (short := power_at(high) < power).any():
        high = np.where(short, 2 * high, high)
    for _ in range(40):
        middle = (low + high) / 2
        below = power_at(middle) < power
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return dofs, (low + high) / 2


def seeds_needed(seed_sd_a: float, seed_sd_b: float, case_var: float, target: float, *, max_seeds: int = 200,
                 level: float = ALPHA, power: float = POWER) -> float:
    """Seeds per method (the same for both) for a Welch comparison across seeds to find a true |Δ|
    of `target` with `power`, if the between-seed SDs are these and the case part this variance;
    inf when even max_seeds do not (the test cases' own spread limits it: more test cases are
    needed, not more seeds), NaN without spreads."""
    if not all(math.isfinite(v) for v in (seed_sd_a, seed_sd_b, case_var, target)) or target <= 0:
        return math.nan
    for seeds in range(2, max_seeds + 1):
        a, b = seed_sd_a ** 2 / seeds, seed_sd_b ** 2 / seeds
        se2 = a + b + case_var
        if se2 <= 0:
            return float(seeds)
        dof = se2 ** 2 / ((a ** 2 + b ** 2) / (seeds - 1) + case_var ** 2 / 1e6) if a + b > 0 else np.inf
        if detectable_delta(math.sqrt(se2), dof, level=level, power=power, estimated=False) <= target:
            return float(seeds)
    return math.inf


# --- per-case frames -> arrays ------------------------------------------------------------------

def stack_runs(runs: dict[str, Sequence[pd.DataFrame]], group_col: str, metric: str, order=None):
    """({label: (R, n) values}, group codes (n,), groups) of the cases every run scored on, in one
    case order; a ValueError if runs were scored on other cases or disagree on a case's group."""
    from fairness.paired import check_same_cases

    flat = {f"{label} run {i}": f for label, frames in runs.items() for i, f in enumerate(frames)}
    case_ids = check_same_cases(flat)
    first = next(iter(flat.values())).set_index("case_id").loc[case_ids, group_col]
    for label, frame in flat.items():
        if not frame.set_index("case_id").loc[case_ids, group_col].equals(first):
            raise ValueError(f"{label} disagrees with the other runs on the {group_col} of its cases")
    labels = first.dropna()
    groups = list(group_order(labels, order=order))
    values = {label: np.stack([f.set_index("case_id").loc[labels.index, metric].to_numpy(float) for f in frames])
              for label, frames in runs.items()}
    scored = np.zeros(len(labels), bool)
    for v in values.values():
        scored |= ~np.isnan(v).all(axis=0)
    groups = [g for g in groups if scored[(labels == g).to_numpy()].any()]
    keep = labels.isin(groups).to_numpy() & scored
    codes = labels[keep].map({g: i for i, g in enumerate(groups)}).to_numpy(np.int64)
    return {label: v[:, keep] for label, v in values.items()}, codes, groups


# --- recipe-level comparison ---------------------------------------------------------------------

def seed_spreads(values: np.ndarray, codes: np.ndarray, k: int, *, higher_is_better: bool = True) -> dict:
    """{statistic: (between-seed variance of the per-run statistic, its dof)} of one method's runs."""
    full = run_statistics(values, np.eye(k)[codes], higher_is_better=higher_is_better)
    out = {}
    for s in STATISTICS:
        v = full[s][np.isfinite(full[s])]
        out[s] = (float(v.var(ddof=1)), v.size - 1) if v.size >= 2 else (math.nan, 0)
    return out


def pool_spreads(spreads: Sequence[dict]) -> dict:
    """One between-seed variance per statistic pooled over methods (their seed_spreads), with its
    dof, and Bartlett's p of H0 "every method has the same between-seed variance" (None with fewer
    than two methods of 2+ runs): {statistic: (variance, dof, homogeneity p)}."""
    out = {}
    for s in STATISTICS:
        usable = [(v, d) for v, d in (sp[s] for sp in spreads) if d >= 1 and math.isfinite(v)]
        dof = sum(d for _, d in usable)
        if not dof:
            out[s] = (math.nan, 0, None)
            continue
        pooled = sum(v * d for v, d in usable) / dof
        p = None
        if len(usable) >= 2:
            p = float(bartlett_p(np.array([v for v, _ in usable]), np.array([d for _, d in usable], dtype=float)))
        out[s] = (pooled, dof, p)
    return out


def bartlett_p(variances: np.ndarray, dofs: np.ndarray) -> np.ndarray:
    """Bartlett's p of H0 "every method has the same variance" from the methods' variances (...,
    m) and their dofs (m,) (scipy's takes raw samples). A zero variance beside others: p 0."""
    dofs = np.asarray(dofs, dtype=float)
    m, total = dofs.size, dofs.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (variances * dofs).sum(axis=-1) / total
        c = 1 + (np.sum(1 / dofs) - 1 / total) / (3 * (m - 1))
        stat = (total * np.log(pooled) - (dofs * np.log(variances)).sum(axis=-1)) / c
    return np.where(np.isfinite(stat), scipy_stats.chi2.sf(stat, m - 1), 0.0)


def _delta_arrays(base: np.ndarray, meth: np.ndarray, codes: np.ndarray, k: int, *, higher_is_better: bool,
                  level: float, pooled: dict | None = None) -> dict:
    """The recipe-level Δ of every statistic for stacks of tables: base (..., R_A, n), meth (...,
    R_B, n). pooled: {statistic: (variance, dof)} to use instead of each side's own (arrays over the
    leading axes allowed). Returns {statistic: {"delta", "lo", "hi", "p", "se", "dof", "seed_var",
    "case_var", "detectable"}} of arrays."""
    onehot = np.eye(k)[codes]
    full_a = run_statistics(base, onehot, higher_is_better=higher_is_better)
    full_b = run_statistics(meth, onehot, higher_is_better=higher_is_better)
    r_a, r_b = base.shape[-2], meth.shape[-2]
    # the case part: the recipe-by-case interaction's group-mean variances, weighed by each
    # statistic's gradient at the group means of every run of both recipes together
    sums, counts, _, _ = _group_sums(np.concatenate([base, meth], axis=-2), onehot)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = sums.sum(axis=-2) / counts.sum(axis=-2)
    grads = gradients(np.nan_to_num(centre), onehot.sum(axis=0), higher_is_better=higher_is_better)
    interaction = interaction_variance([base, meth], [-1.0, 1.0], codes, k)
    case_dof = max(codes.size - k, 1)
    out = {}
    for s in STATISTICS:
        a, b = full_a[s], full_b[s]
        finite = np.isfinite(a).all(axis=-1) & np.isfinite(b).all(axis=-1)
        delta = b.mean(axis=-1) - a.mean(axis=-1)
        cases = case_part(grads[s], interaction)
        with np.errstate(invalid="ignore"):
            if pooled is not None and s in pooled:
                variance, dof = pooled[s][0], pooled[s][1]
                parts, dofs = [variance * (1 / r_a + 1 / r_b), cases], [dof, case_dof]
                seed_var = variance
            else:
                var_a = a.var(axis=-1, ddof=1) if r_a >= 2 else np.full(delta.shape, np.nan)
                var_b = b.var(axis=-1, ddof=1) if r_b >= 2 else np.full(delta.shape, np.nan)
                parts, dofs = [var_a / r_a, var_b / r_b, cases], [max(r_a - 1, 1), max(r_b - 1, 1), case_dof]
                seed_var = (var_a + var_b) / 2
        test = t_test(np.where(finite, delta, np.nan), parts, dofs, level)
        # runs identical within each recipe (the same seed twice, or a deterministic training): no
        # seed-to-seed spread to test against, so no recipe-level test from the case part alone
        usable = finite & (min(r_a, r_b) >= 2) & (np.nan_to_num(seed_var) > 0)
        row = {key: np.where(usable, value, np.nan) for key, value in test.items()}
        row["delta"] = np.where(finite, delta, np.nan)
        row["seed_var"], row["case_var"] = seed_var, cases
        row["detectable"] = detectable_delta(row["se"], row["dof"])
        out[s] = row
    return out


def recipe_delta(baseline: Sequence[pd.DataFrame], method: Sequence[pd.DataFrame], group_col: str, *,
                 metric: str = "mean", order=None, level: float = 0.95, measure=DICE, pooled: dict | None = None,
                 detect: float | None = None) -> dict:
    """The recipe-level Δ (method − baseline) of each statistic in STATISTICS, in the metric's shown
    units (Dice points; SER unitless): {"delta_<s>", "delta_<s>_lo", "delta_<s>_hi", "p_<s>",
    "se_<s>", "dof_<s>", "seed_sd_<s>" (between-seed SD of the per-run statistic, the two methods'
    average variance), "detectable_<s>" (80 % power at 5 %), "seeds_for_<s>" (seeds per method to
    detect `detect`, shown units, when given), "runs_baseline", "runs_method", "note"}. pooled:
    pool_spreads' output (in fractions) to use a table's pooled between-seed variance. Fewer than 2
    runs on either side: NaN intervals and p, and a note saying how many seeds are needed."""
    stacks, codes, groups = stack_runs({"baseline": baseline, "method": method}, group_col, metric, order)
    k = len(groups)
    row = {"runs_baseline": len(baseline), "runs_method": len(method), "note": ""}
    if k < 2:
        row["note"] = "fewer than 2 groups with scored cases"
        return row
    result = _delta_arrays(stacks["baseline"], stacks["method"], codes, k, higher_is_better=measure.higher_is_better,
                           level=level, pooled=pooled)
    for s, r in result.items():
        scale = 1.0 if s == "ser" else measure.scale
        row[f"delta_{s}"] = scale * float(r["delta"])
        for key in ("lo", "hi", "se", "detectable"):
            row[f"delta_{s}_{key}" if key in ("lo", "hi") else f"{key}_{s}"] = scale * float(r[key])
        row[f"p_{s}"], row[f"dof_{s}"] = float(r["p"]), float(r["dof"])
        row[f"seed_sd_{s}"] = scale * math.sqrt(float(r["seed_var"])) if np.isfinite(r["seed_var"]) else math.nan
        if detect is not None:
            sd = math.sqrt(float(r["seed_var"])) if np.isfinite(r["seed_var"]) else math.nan
            row[f"seeds_for_{s}"] = seeds_needed(scale * sd, scale * sd, scale ** 2 * float(r["case_var"]), detect)
    if min(len(baseline), len(method)) < 2:
        row["note"] = one_run_note(len(baseline), len(method))
    elif all(float(r["seed_var"]) == 0 for r in result.values()):
        row["note"] = ("no recipe-level answer: the runs of each method are identical (the same seed twice?), so "
                       "there is no seed-to-seed spread to test against")
    return row


def one_run_note(runs_a: int, runs_b: int) -> str:
    return (f"no recipe-level answer: {min(runs_a, runs_b)} run on one side (seeds are the sample: train at least "
            "2 seeds of each, 5 or more to detect a few points; bench/fairness_matrix.py --seeds, or "
            "train.py --seeds)")


# --- one recipe's own gap -------------------------------------------------------------------------

def _gap_arrays(values: np.ndarray, codes: np.ndarray, k: int, *, higher_is_better: bool, level: float) -> dict:
    """One recipe's gap, seeds as the unit, for stacks of tables values (..., R, n): the pair is
    picked on the seed-averaged group means (two groups: first minus second, signed)."""
    onehot = np.eye(k)[codes]
    sums, counts, _, _ = _group_sums(values, onehot)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts                                                        # (..., R, k)
    centre = means.mean(axis=-2)                                                     # (..., k)
    if k == 2:
        first = np.zeros(centre.shape[:-1], np.int64)
        second = np.ones(centre.shape[:-1], np.int64)
    else:
        first = (np.argmax if higher_is_better else np.argmin)(centre, axis=-1)
        second = (np.argmin if higher_is_better else np.argmax)(centre, axis=-1)
    per_run = _pick(means, first) - _pick(means, second)                             # (..., R)
    runs = values.shape[-2]
    gap = per_run.mean(axis=-1)
    seed_var = per_run.var(axis=-1, ddof=1) if runs >= 2 else np.full(gap.shape, np.nan)
    # the case part: the two groups' expected means as another set of test cases would give them
    variances = interaction_variance([values], [1.0], codes, k)
    cases = np.maximum(_pick(variances, first) + _pick(variances, second), 0.0)
    sizes = onehot.sum(axis=0)
    case_dof = np.maximum(sizes[first] + sizes[second] - 2, 1)
    parts, dofs = [seed_var / runs, cases], [max(runs - 1, 1), case_dof]
    test = t_test(gap, parts, dofs, level)
    test["reject"] = test["p"] < 1 - level
    if k > 2:   # the pair is picked from the data: the studentised range (Games-Howell)
        from fairness.welch import range_quantile
        dof = test["dof"]
        q = np.vectorize(lambda d: range_quantile(level, k, d) if np.isfinite(d) else np.nan)(dof) / math.sqrt(2)
        test["lo"], test["hi"] = gap - q * test["se"], gap + q * test["se"]
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = np.abs(gap) / test["se"]
        test["reject"] = stat > q
        # the p itself (scipy's studentised range, about 10 ms a value) for the tables a user reads
        test["p"] = np.vectorize(lambda s, d: float(scipy_stats.studentized_range.sf(s * math.sqrt(2), k, d))
                                 if np.isfinite(s) and np.isfinite(d) else np.nan)(stat, dof) \
            if np.size(stat) <= 64 else np.full(np.shape(stat), np.nan)
    test["gap"], test["first"], test["second"] = gap, first, second
    test["seed_var"], test["case_var"] = seed_var, cases
    return test


def _pick(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """array[..., index] with one index per table: array (T..., X..., k), index (T...,)."""
    extra = array.ndim - 1 - index.ndim
    where = np.broadcast_to(index.reshape(index.shape + (1,) * extra + (1,)), array.shape[:-1] + (1,))
    return np.take_along_axis(array, where, axis=-1)[..., 0]


def recipe_gap(runs: Sequence[pd.DataFrame], group_col: str, *, metric: str = "mean", order=None,
               level: float = 0.95, measure=DICE) -> dict:
    """Is this recipe biased? The gap of its seed-averaged group means (two groups: first minus second
    in `order`; more: best minus worst, simultaneous over the pairs), with the seeds and the test
    cases as the sample (module docstring), in shown units: {"gap", "lo", "hi", "p", "se", "dof",
    "seed_sd" (between-seed SD of the per-run gap), "first", "second", "runs", "note"}. One run:
    NaN p and a note."""
    stacks, codes, groups = stack_runs({"recipe": runs}, group_col, metric, order)
    out = {"runs": len(runs), "note": "", "gap": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan,
           "se": math.nan, "dof": math.nan, "seed_sd": math.nan, "first": None, "second": None}
    if len(groups) < 2:
        out["note"] = "fewer than 2 groups with scored cases"
        return out
    r = _gap_arrays(stacks["recipe"], codes, len(groups), higher_is_better=measure.higher_is_better, level=level)
    scale = measure.scale
    out.update(gap=scale * float(r["gap"]), first=groups[int(r["first"])], second=groups[int(r["second"])])
    if len(runs) < 2:
        out["note"] = one_run_note(len(runs), len(runs))
        return out
    out.update(lo=scale * float(r["lo"]), hi=scale * float(r["hi"]), p=float(r["p"]), se=scale * float(r["se"]),
               dof=float(r["dof"]), seed_sd=scale * math.sqrt(float(r["seed_var"])))
    return out


def recipe_ties(frames: dict, leader: str, group_col: str, statistic: str, *, order=None, metric: str = "mean",
                measure=DICE, alpha: float = ALPHA) -> dict:
    """{method: p} of the methods whose `statistic` the recipe-level test cannot tell from the
    leader's at `alpha` (H0: the two recipes give the same expected statistic); NaN p for a method
    with fewer than 2 runs. frames: method -> [per-case frame per run]. The leader "best" or
    "fairest" by point means alone is only a winner when this is empty."""
    out = {}
    for name, runs in frames.items():
        if name == leader:
            continue
        p = recipe_delta(frames[leader], runs, group_col, metric=metric, order=order, measure=measure)[f"p_{statistic}"]
        if not p < alpha:
            out[name] = p
    return out


def table_pooled_spreads(frames: dict, group_col: str, *, metric: str = "mean", order=None, measure=DICE) -> dict:
    """pool_spreads over every method of a table (frames: method -> [per-case frame per run]), for
    recipe_delta(pooled=...): one between-seed variance per statistic with the table's dof. Valid
    only when the recipes' seed spreads are alike: with one recipe 3x noisier than the others, a
    pooled test calls that recipe different from its own A/A twin in 15-30 % of tables, and
    Bartlett's p (returned) does not catch it at 2-5 seeds (docs/statistics.md)."""
    stacks, codes, groups = stack_runs(frames, group_col, metric, order)
    spreads = [seed_spreads(v, codes, len(groups), higher_is_better=measure.higher_is_better) for v in stacks.values()]
    return pool_spreads(spreads)


def recipe_delta_of(statistic, baseline: np.ndarray, method: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """The recipe-level Δ of any per-run statistic of a set of cases (a tail: a group's CVaR), for
    per-case values (runs, n) of each recipe on the same n cases (no NaN): statistic maps (..., n)
    -> (...,). The seed part is each side's between-run variance / runs; the case part the bootstrap
    over the cases (the same draw for every run) of Δ, less the case-by-run noise the seed part holds
    (each run's deviation from its recipe's mean, / R(R - 1)), floored at 0: the bootstrap twin of
    interaction_variance, for statistics that are not functions of group means. {"delta", "lo",
    "hi", "p", "se", "dof", "runs_baseline", "runs_method"}; NaN test with fewer than 2 runs a side."""
    a, b = statistic(baseline), statistic(method)
    r_a, r_b, n = len(a), len(b), baseline.shape[-1]
    delta = float(b.mean() - a.mean())
    out = {"delta": delta, "lo": math.nan, "hi": math.nan, "p": math.nan, "se": math.nan, "dof": math.nan,
           "runs_baseline": r_a, "runs_method": r_b}
    if min(r_a, r_b) < 2 or n < 2:
        return out
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(int(n_boot), n))
    draws_a, draws_b = statistic(baseline[:, index]), statistic(method[:, index])       # (R, B)
    boot = np.var(draws_b.mean(axis=0) - draws_a.mean(axis=0), ddof=1)
    noise = sum(np.var(d - d.mean(axis=0), axis=1, ddof=1).sum() / (len(d) * (len(d) - 1)) for d in (draws_a, draws_b))
    cases = max(float(boot - noise), 0.0)
    var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
    if var_a + var_b == 0:
        return out
    test = t_test(delta, [var_a / r_a, var_b / r_b, cases], [r_a - 1, r_b - 1, max(n - 1, 1)], level)
    out.update({key: float(test[key]) for key in ("lo", "hi", "p", "se", "dof")})
    return out
