"""Did a mitigation change the gap? Paired comparison of methods scored on the same test cases.

Methods evaluated on the same cases are compared case by case (SPEC §5): for each statistic,
Δ = method − baseline, where each side is the mean over its seeds (runs). The interval comes from
a paired bootstrap: the cases are resampled within their groups, and the same resample is applied
to every run of both methods, so what the cases have in common cancels. The p-value is the
bootstrap's two-sided one, min(1, 2 min(#{Δ* <= 0} + 1, #{Δ* >= 0} + 1) / (B + 1)); over the methods of one table
they are Holm-corrected. Two identical methods give Δ = 0 exactly, p = 1.

Statistics: mean Dice (over cases), SD and SER of the group mean Dice, worst-group Dice.
Dice, SD and worst are in points (x100) in the returned rows; SER unitless. Another metric
(`measure`, fairness/metrics.py; the frames then hold its values under kidney / tumor / mean, as
metric_view gives them): its scale, and for a distance the worst group is the highest and SER the
ratio of the distances.

Usage:
    row = paired_delta([base_seed0, base_seed1], [resm_seed0, resm_seed1], "sex", order=["male", "female"])
    row["delta_sd"], row["delta_sd_lo"], row["delta_sd_hi"], row["p_sd"]
    holm([0.01, 0.04, 0.30])          # [0.03, 0.08, 0.30]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fairness.grouping import group_order
from fairness.metrics import DICE

STATISTICS = ("mean", "sd", "ser", "worst")


def _aligned(frames: Sequence[pd.DataFrame], case_ids: list, metric: str) -> np.ndarray:
    return np.stack([f.set_index("case_id").loc[case_ids, metric].to_numpy(float) for f in frames])


def _statistics(values: np.ndarray, onehot: np.ndarray, higher_is_better: bool = True) -> dict:
    """values (..., n) -> each statistic (...,), NaN cases left out of their group's mean."""
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    means = (filled @ onehot) / (present.astype(float) @ onehot)
    low, high = means.min(axis=-1), means.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if higher_is_better:
            worst, ser = low, (1.0 - low) / (1.0 - high)
        else:                                   # a distance is its own error
            worst, ser = high, high / low
        overall = filled.sum(axis=-1) / present.sum(axis=-1)
    return {"mean": overall, "sd": means.std(axis=-1), "ser": ser, "worst": worst}


def check_same_cases(runs: dict) -> list:
    """The common sorted case ids of {label: per-case frame}; a ValueError if any run differs."""
    sets = {label: frozenset(frame["case_id"]) for label, frame in runs.items()}
    first_label, first = next(iter(sets.items()))
    for label, cases in sets.items():
        if cases != first:
            extra, missing = sorted(cases - first)[:3], sorted(first - cases)[:3]
            raise ValueError(f"{label} was scored on other cases than {first_label} (extra {extra}, missing "
                             f"{missing}): a paired comparison needs the same test cases")
    return sorted(first)


def paired_delta(baseline: Sequence[pd.DataFrame], method: Sequence[pd.DataFrame], group_col: str, *,
                 metric: str = "mean", order=None, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 measure=DICE) -> dict:
    """{"delta_<s>", "delta_<s>_lo", "delta_<s>_hi", "p_<s>"} for s in STATISTICS (see module)."""
    runs = {f"baseline run {i}": f for i, f in enumerate(baseline)}
    runs.update({f"method run {i}": f for i, f in enumerate(method)})
    case_ids = check_same_cases(runs)
    labels = baseline[0].set_index("case_id").loc[case_ids, group_col]
    for frame in [*baseline, *method][1:]:
        if not frame.set_index("case_id").loc[case_ids, group_col].equals(labels):
            raise ValueError(f"the runs disagree on the {group_col} of their cases")
    groups = [g for g in group_order(labels.dropna(), order=order)]
    codes = labels.map({g: i for i, g in enumerate(groups)})
    keep = codes.notna().to_numpy()
    codes = codes[keep].to_numpy(dtype=np.int64)
    onehot = np.eye(len(groups))[codes]
    base, meth = _aligned(baseline, case_ids, metric)[:, keep], _aligned(method, case_ids, metric)[:, keep]

    rng = np.random.default_rng(seed)
    index = np.empty((int(n_boot), len(codes)), dtype=np.int64)
    for g in range(len(groups)):              # resampled within groups: each column keeps its group
        members = np.flatnonzero(codes == g)
        index[:, members] = members[rng.integers(0, len(members), size=(int(n_boot), len(members)))]

    better = measure.higher_is_better
    b_point, m_point = _statistics(base, onehot, better), _statistics(meth, onehot, better)     # (runs,)
    b_stats = _statistics(base[:, index], onehot, better)        # (runs, B)
    m_stats = _statistics(meth[:, index], onehot, better)
    row = {}
    for s in STATISTICS:
        draws = np.nanmean(m_stats[s], axis=0) - np.nanmean(b_stats[s], axis=0)
        draws = draws[np.isfinite(draws)]
        scale = 1.0 if s == "ser" else measure.scale
        row[f"delta_{s}"] = float(scale * (np.nanmean(m_point[s]) - np.nanmean(b_point[s])))
        if draws.size:
            lo, hi = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
            n = draws.size
            p = min(1.0, 2 * min((1 + np.sum(draws <= 0)) / (1 + n), (1 + np.sum(draws >= 0)) / (1 + n)))
        else:
            lo = hi = p = math.nan
        row[f"delta_{s}_lo"], row[f"delta_{s}_hi"], row[f"p_{s}"] = float(scale * lo), float(scale * hi), float(p)
    return row


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (NaN p-values are left out and stay NaN)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
