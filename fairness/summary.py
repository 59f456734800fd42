"""Fairness over the groups of one attribute, from each group's mean Dice.

    sd        population standard deviation (ddof=0) of the group values, in the input's unit
              (SPEC "Metrics": SD in Dice % when given %)
    ser       skewed error ratio max_g(1 - D_g) / min_g(1 - D_g); 1 is perfectly fair; unitless
    es_dice   equity-scaled Dice D_all / (1 + sum_g |D_g - D_all|) (Harvard-FairSeg, SPEC §2),
              computed in fractions and returned in the input's unit
    worst, worst_group, best, best_group, gap = best - worst   (input's unit)
    n_groups  groups that entered the numbers (NaN groups are not counted)
    scale     "fraction" or "percent": the unit the inputs were read in

Lower-is-better metrics (HD95, ASSD in mm; fairness/metrics.py): `higher_is_better=False` reads the
values as distances >= 0 with no upper bound: worst = the highest, best = the lowest, gap = worst -
best, SER = worst / best (a distance is already an error), ES-Dice NaN, scale "distance".

Units: `scale="fraction"` reads values in [0, 1], `scale="percent"` in [0, 100]; `"auto"` (the
default) reads percent if any value (groups or `overall`) is > 1, else fraction. So a set of
percent values that are all <= 1 (a model that failed) needs `scale="percent"`, and "auto" raises
ValueError when the groups and `overall` disagree (e.g. groups 0.84, 0.89 with overall 86.5).

D_all for ES-Dice must be the mean Dice over cases (the "all" row of `group_table`), which is
not the mean of the group values when groups differ in size; so this module never guesses it:
with `overall=None`, es_dice is NaN (no warning: SD/SER, the study's numbers, do not need it).

Degenerate inputs give a value and a warning, never an exception:
    a NaN group value        skipped, the rest computed over the groups present
    no group left            every number NaN, worst_group/best_group None
    one group                sd 0.0, ser 1.0, gap 0.0 (nothing to compare: trivially "fair")
    every group equal        ser 1.0, also when all are exactly 1 (no warning)
    a group at Dice 1 while others are below    ser inf (min error is 0)
Out-of-range values (negative, above 1 or 100, infinite) are errors (ValueError).

Usage:
    from fairness.summary import fairness_summary
    fairness_summary({"male": 84.2, "female": 88.9})           # sd 2.35, ser 1.42 (SPEC Table 1)
    fairness_summary(table["mean"].drop("all").to_dict(), overall=table.loc["all", "mean"])
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping

import numpy as np

SCALES = ("fraction", "percent", "auto")


def _resolve_unit(values: list[float], overall: float | None, scale: str) -> tuple[str, float]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "auto":
        groups_say_percent = any(v > 1 for v in values)
        # groups in fractions with overall in % (or the reverse) would be read silently wrong
        if values and overall is not None and groups_say_percent != (overall > 1):
            raise ValueError(
                f"group values {values} and overall {overall} look like different units; "
                "convert them or pass scale='fraction' or scale='percent'"
            )
        scale = "percent" if groups_say_percent or (overall is not None and overall > 1) else "fraction"
    return scale, (100.0 if scale == "percent" else 1.0)


def _check_range(name: str, value: float, unit: float, scale: str) -> None:
    if not 0.0 <= value <= unit:
        raise ValueError(f"{name} = {value} is outside [0, {unit:g}] for scale {scale!r}")


def _nan_result(scale: str) -> dict:
    return {
        "n_groups": 0, "scale": scale, "sd": math.nan, "ser": math.nan, "es_dice": math.nan,
        "worst": math.nan, "worst_group": None, "best": math.nan, "best_group": None,
        "gap": math.nan,
    }


def _skewed_error_ratio(errors: list[float], names: list) -> float:
    """max / min of the groups' errors (1 - Dice, or a distance): unit-free."""
    high, low = max(errors), min(errors)
    if high == low:  # all groups alike, including all perfect: perfectly fair by definition
        return 1.0
    if low == 0.0:
        perfect = [str(n) for n, e in zip(names, errors) if e == 0.0]
        warnings.warn(f"SER is inf: group(s) {perfect} have error 0 (a perfect score)", stacklevel=3)
        return math.inf
    return high / low


def _equity_scaled_dice(values: list[float], overall: float | None, unit: float) -> float:
    if overall is None:
        return math.nan
    d_all = overall / unit
    spread = sum(abs(v / unit - d_all) for v in values)
    return d_all / (1.0 + spread) * unit


def fairness_summary(
    group_dice: Mapping[Hashable, float],
    overall: float | None = None,
    scale: str = "auto",
    higher_is_better: bool = True,
) -> dict:
    """SD, SER, ES-Dice, worst/best group and gap of per-group mean Dice (module docstring).

    `group_dice` maps group -> mean Dice of that group (any mapping, or a pandas Series);
    `overall` is the mean Dice over all cases, in the same unit, needed only for es_dice.
    """
    items = [(g, float(v)) for g, v in dict(group_dice).items()]
    skipped = [str(g) for g, v in items if math.isnan(v)]
    if skipped:
        warnings.warn(f"group(s) {skipped} have NaN Dice and are left out of the summary", stacklevel=2)
    items = [(g, v) for g, v in items if not math.isnan(v)]
    if overall is not None:
        overall = float(overall)
        if math.isnan(overall):
            warnings.warn("overall Dice is NaN: es_dice is NaN", stacklevel=2)
            overall = None

    if not higher_is_better:
        return _distance_summary(items)
    scale, unit = _resolve_unit([v for _, v in items], overall, scale)
    for g, v in items:
        _check_range(f"Dice of group {g!r}", v, unit, scale)
    if overall is not None:
        _check_range("overall Dice", overall, unit, scale)

    if not items:
        warnings.warn("no group has a Dice value: every fairness number is NaN", stacklevel=2)
        return _nan_result(scale)
    _warn_single(items)
    names = [g for g, _ in items]
    values = [v for _, v in items]
    worst_i, best_i = int(np.argmin(values)), int(np.argmax(values))  # first one wins a tie
    return {
        "n_groups": len(values),
        "scale": scale,
        "sd": float(np.std(values, ddof=0)),
        "ser": _skewed_error_ratio([unit - v for v in values], names),
        "es_dice": _equity_scaled_dice(values, overall, unit),
        "worst": values[worst_i],
        "worst_group": names[worst_i],
        "best": values[best_i],
        "best_group": names[best_i],
        "gap": values[best_i] - values[worst_i],
    }


def _warn_single(items: list) -> None:
    if len(items) == 1:
        warnings.warn(
            f"only one group ({items[0][0]!r}): nothing to compare, so sd 0 and ser 1", stacklevel=3
        )


def _distance_summary(items: list) -> dict:
    """The summary of group mean distances (lower is better; module docstring)."""
    for g, v in items:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"distance of group {g!r} = {v} is not a finite distance >= 0")
    if not items:
        warnings.warn("no group has a value: every fairness number is NaN", stacklevel=3)
        return _nan_result("distance")
    _warn_single(items)
    names = [g for g, _ in items]
    values = [v for _, v in items]
    worst_i, best_i = int(np.argmax(values)), int(np.argmin(values))
    return {
        "n_groups": len(values), "scale": "distance", "sd": float(np.std(values, ddof=0)),
        "ser": _skewed_error_ratio(values, names), "es_dice": math.nan,
        "worst": values[worst_i], "worst_group": names[worst_i],
        "best": values[best_i], "best_group": names[best_i], "gap": values[worst_i] - values[best_i],
    }
