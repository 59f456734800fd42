"""The order in which groups appear in every fairness table and dict.

One rule, so that a table, a CVaR dict and a plot of the same attribute list groups alike:
    1. an explicit `order` wins; it may name groups that have no cases (they are kept), but a
       group present in the data and missing from `order` is an error, never silently dropped;
    2. a pandas Categorical column gives its categories, in their order (unused ones included);
    3. otherwise a natural sort: numbers compare as numbers ("[50,60)" before "[60,70)" before
       ">=70"), leading brackets and comparison signs are ignored for the comparison so that
       "<50", "[50,60)" and ">=70" sort by their bounds, text compares case-insensitively, and
       all-numeric labels sort by value. The result never depends on row order.
Missing labels (NaN/None) are not groups.

Usage:
    from fairness.grouping import group_order
    group_order(df["age_group"])                       # ['[0,50)', '[50,60)', '[60,70)', '>=70']
    group_order(df["sex"], order=["male", "female"])   # the study's order
"""
from __future__ import annotations

import numbers
import re
from collections.abc import Hashable, Sequence

import pandas as pd

_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")
_IGNORED_PREFIX = "[(<>=≤≥ "


def natural_key(label: Hashable) -> tuple:
    """Sort key for one string label; see the module docstring."""
    text = str(label)
    # re.split with a capturing group alternates text, number, text, ...: the same position
    # always holds the same type, so two keys always compare without a TypeError.
    parts = _NUMBER.split(text.lstrip(_IGNORED_PREFIX).lower())
    chunks = tuple(float(p) if i % 2 else p for i, p in enumerate(parts))
    return (chunks, text)


def _is_number(label) -> bool:
    return isinstance(label, numbers.Real) and not isinstance(label, bool)


def group_order(labels: pd.Series, order: Sequence[Hashable] | None = None) -> list:
    """The groups of `labels` in table order (see the module docstring)."""
    present = list(pd.unique(labels.dropna()))
    if order is not None:
        order = list(order)
        duplicated = sorted({str(g) for g in order if order.count(g) > 1})
        if duplicated:
            raise ValueError(f"order names these groups more than once: {duplicated}")
        unlisted = [g for g in present if g not in order]
        if unlisted:
            raise ValueError(
                f"groups {sorted(map(str, unlisted))} are in the data but not in order={order}"
            )
        return order
    if isinstance(labels.dtype, pd.CategoricalDtype):
        return list(labels.cat.categories)
    if present and all(_is_number(g) for g in present):
        return sorted(present)
    return sorted(present, key=natural_key)
