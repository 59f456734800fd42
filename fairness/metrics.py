"""The per-case metrics an audit can be asked for, and the per-case row that holds them.

    dice   KiTS19 Dice (fairness/case_dice.py): fractions, higher is better, shown in %; the
           study's metric and the default everywhere
    nsd    normalised surface Dice at a tolerance in mm (fairness/surface.py): fractions,
           higher is better, shown in %
    hd95   95th-percentile Hausdorff distance, mm, lower is better
    assd   average symmetric surface distance, mm, lower is better

Each metric has three per-case columns, one per KiTS19 region and their mean: Dice's are
kidney / tumor / mean (the study's tables), the others <name>_kidney / <name>_tumor / <name>_mean.
An audit by another metric than Dice reads the per-case table through `metric_view`, which puts
that metric's columns where the audit reads Dice's, so every table, statistic and figure has
one implementation. What changes with the metric is only:
    the direction   worst group = the highest mean distance, the tail CVaR = the highest
                    distances, SER = worst error / best error with error = 1 - value for
                    fractions and error = the distance itself for mm (fairness/summary.py);
                    ES-Dice exists for fractions only
    the unit        fractions are shown x100 in %, distances as they are in mm

Usage:
    metric = get_metric("hd95")                      # a ValueError listing the valid names
    row = case_scores(pred, ref, spacing=(3.0, 0.8, 0.8), metrics=("dice", "nsd"), tolerance_mm=2.0)
    audit_groups(metric_view(per_case, metric), "sex", metric=metric)   # fairness/audit.py does the view
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fairness.case_dice import METRICS as DICE_COLUMNS, kits_case_scores
from fairness.surface import DEFAULT_TOLERANCE_MM, SURFACE_METRICS, kits_case_surface

CLASSES = DICE_COLUMNS               # ("kidney", "tumor", "mean"): the columns an audit reads


@dataclass(frozen=True)
class Metric:
    name: str
    label: str                 # in table headings: "Dice", "NSD", "HD95", "ASSD"
    unit: str                  # "%" or "mm"
    scale: float               # shown value = scale * stored value
    higher_is_better: bool

    def columns(self) -> tuple[str, str, str]:
        """The per-case columns (kidney, tumor, mean) of this metric."""
        if self.name == "dice":
            return CLASSES
        return tuple(f"{self.name}_{c}" for c in CLASSES)

    def shown(self, value: float) -> float:
        return self.scale * value


METRICS = {
    "dice": Metric("dice", "Dice", "%", 100.0, True),
    "nsd": Metric("nsd", "NSD", "%", 100.0, True),
    "hd95": Metric("hd95", "HD95", "mm", 1.0, False),
    "assd": Metric("assd", "ASSD", "mm", 1.0, False),
}
DICE = METRICS["dice"]


def get_metric(name) -> Metric:
    if isinstance(name, Metric):
        return name
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
    return METRICS[name]


def check_metrics(names) -> list[str]:
    """Validated metric names, Dice always first (every table starts from it)."""
    names = [get_metric(n).name for n in names]
    return ["dice"] + [n for n in dict.fromkeys(names) if n != "dice"]


def metric_view(per_case: pd.DataFrame, metric) -> pd.DataFrame:
    """The per-case table with `metric`'s columns under kidney / tumor / mean (Dice's own for dice)."""
    metric = get_metric(metric)
    if metric.name == "dice":
        return per_case
    columns = metric.columns()
    missing = [c for c in columns if c not in per_case.columns]
    if missing:
        raise ValueError(f"the per-case table has no {metric.label} columns ({', '.join(missing)}): score with "
                         f"--metric {metric.name} (evaluate.py) or eval.metrics: [{metric.name}] (a config)")
    view = per_case.drop(columns=[c for c in CLASSES if c in per_case.columns])
    return view.rename(columns=dict(zip(columns, CLASSES)))


def case_scores(pred, ref, *, spacing, metrics=("dice",), tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> dict:
    """One case's row: Dice's kidney / tumor / mean and the voxel counts they come from
    (fairness/case_dice.py: nnU-Net's summary.json is written from them), then the asked surface
    metrics' columns."""
    names = check_metrics(metrics)
    row = kits_case_scores(pred=pred, ref=ref)
    surface = [n for n in names if n in SURFACE_METRICS]
    if surface:
        row.update(kits_case_surface(pred, ref, spacing, tolerance_mm=tolerance_mm, metrics=surface))
    return row
