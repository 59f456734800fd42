"""The one group table of the project: per-group case counts and mean Dice.

Input is a per-case frame (one row per case) with a group column and one column per metric,
e.g. the dicts of `kits_case_dice` with the case's sex and age group added. Output has one row
per group, in `group_order`'s order, then an "all" row over every case:

    columns   n                     cases in the group (rows of the frame)
              <metric>              mean over the group's cases, NaN values skipped
              n_excluded_<metric>   how many of those cases were NaN for that metric
                                    (e.g. tumor Dice of cases with no tumor in reference and
                                    prediction, see fairness.case_dice)

A group with no valid case (no rows, or only NaN values) gets NaN means and stays in the
table, so that "no data" is visible rather than missing. Cases whose group label is missing
count in "all" only, with a warning. "all" is the mean over cases, which is what ES-Dice's
D_all needs; it is not the mean of the group rows.

Usage:
    from fairness.tables import group_table
    table = group_table(per_case, group_col="sex", order=["male", "female"])
    table.loc["female", "tumor"], table.loc["all", "n_excluded_tumor"]
    fairness_summary(table["mean"].drop("all").to_dict(), overall=table.loc["all", "mean"])
"""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import pandas as pd

from fairness.grouping import group_order

ALL_ROW = "all"


def group_table(
    per_case: pd.DataFrame,
    group_col: str,
    metrics: Sequence[str] = ("kidney", "tumor", "mean"),
    order: Sequence[Hashable] | None = None,
) -> pd.DataFrame:
    """One row per group plus an "all" row: n, mean per metric, n_excluded per metric."""
    metrics = list(metrics)
    if len(set(metrics)) != len(metrics) or "n" in metrics:
        raise ValueError(f"metrics must be distinct column names other than 'n', got {metrics}")
    absent = [c for c in [group_col, *metrics] if c not in per_case.columns]
    if absent:
        raise KeyError(f"per_case has no column(s) {absent}; it has {list(per_case.columns)}")

    labels = per_case[group_col]
    groups = group_order(labels, order=order)
    if ALL_ROW in groups:
        raise ValueError(f"a group is named {ALL_ROW!r}, which is the name of the overall row")
    n_unlabelled = int(labels.isna().sum())
    if n_unlabelled:
        warnings.warn(
            f"{n_unlabelled} case(s) have no {group_col!r} value: counted in the {ALL_ROW!r} row only",
            stacklevel=2,
        )
    # float, so that None in an object column becomes NaN and a stray string fails loudly here
    values = per_case[metrics].astype(float)

    rows = []
    for group in [*groups, ALL_ROW]:
        cases = values if group is ALL_ROW else values[(labels == group).to_numpy()]
        row = {"n": len(cases)}
        row.update({m: cases[m].mean(skipna=True) for m in metrics})
        row.update({f"n_excluded_{m}": int(cases[m].isna().sum()) for m in metrics})
        rows.append(row)
    index = pd.Index([*groups, ALL_ROW], name=group_col, dtype=object)
    return pd.DataFrame(rows, index=index)
