"""A fairness audit of per-case Dice for one grouping attribute: the study's table in one object.

Puts together the project's pieces (group_table, fairness_summary, within-group CVaR) so every
caller reports the same numbers the same way: per group n and Dice kidney / tumor / mean, then
SD and SER (on the group mean Dice), ES-Dice, worst group, best-worst gap and each group's CVaR.

Any metric of fairness/metrics.py can be audited (`metric="nsd"`, "hd95", ...): its per-case
columns are read where Dice's are, the direction and unit come from the metric, and
audit.table / audit.summary hold that metric's values (fractions, or mm).

Usage:
    audit = audit_groups(per_case, group_col="sex", order=["male", "female"], cvar_level=0.2)
    audit_groups(per_case, "sex", metric="hd95")    # HD95 in mm: worst = highest
    print(format_audit(audit))          # Dice in %, like the study's tables, and the line saying
                                        # what noise alone gives (fairness/significance.py)
    audit.table, audit.summary, audit.cvar, audit.significance["gap_p"]
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
import warnings
from dataclasses import dataclass

import pandas as pd

from fairness.case_dice import METRICS
from fairness.metrics import DICE, Metric, get_metric, metric_view
from fairness.adjusted import DEFAULT_COVARIATES
from fairness.significance import significance, significance_line
from fairness.summary import fairness_summary
from fairness.tables import ALL_ROW, group_table
from fairness.tails import within_group_cvar



@dataclass
class Audit:
    group_col: str
    table: pd.DataFrame          # group_table: fractions in [0, 1]
    summary: dict                # fairness_summary of the group mean Dice (fractions)
    cvar: dict                   # group -> CVaR of per-case mean Dice (fractions)
    cvar_level: float            # the within-group tail: CVaR of the worst cvar_level fraction
    significance: dict = None    # fairness.significance: the gap test, noise alone, detectable and adjusted gaps
    metric: Metric = DICE        # what table / summary / cvar hold (fairness/metrics.py)


def audit_groups(per_case: pd.DataFrame, group_col: str, *, order: Sequence[Hashable] | None = None,
                 cvar_level: float = 0.2, n_perm: int = 5000, seed: int = 0,
                 covariates=DEFAULT_COVARIATES, metric="dice") -> Audit:
    """The table, summary, tails and significance (see fairness.significance) of one attribute."""
    metric = get_metric(metric)
    per_case = metric_view(per_case, metric)
    better = metric.higher_is_better
    table = group_table(per_case, group_col=group_col, metrics=METRICS, order=order)
    groups = table.drop(index=ALL_ROW)
    # Empty groups are normal in small test splits; the table shows them and format_audit says
    # the summary covers the groups present, so the per-call warnings would only be noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = fairness_summary(groups["mean"].to_dict(), overall=table.loc[ALL_ROW, "mean"], scale="fraction",
                                   higher_is_better=better)
        tails = within_group_cvar(per_case, group_col=group_col, metric="mean", alpha=cvar_level,
                                  order=list(groups.index), higher_is_better=better)
    sig = significance(per_case, group_col, order=list(groups.index), n_perm=n_perm, seed=seed,
                       covariates=covariates, higher_is_better=better)
    return Audit(group_col=group_col, table=table, summary=summary, cvar=tails, cvar_level=cvar_level,
                 significance=sig, metric=metric)


def format_audit(audit: Audit) -> str:
    """The study's table: Dice in %, SD in Dice %, SER unitless (another metric: its unit)."""
    m = audit.metric
    val = lambda v: f"{m.shown(v):6.1f}" if pd.notna(v) else "     -"  # noqa: E731
    lines = [f"{audit.group_col:<18} {'n':>4} {'kidney':>7} {'tumor':>7} {'mean':>7} "
             f"{'CVaR' + str(int(round(audit.cvar_level * 100))):>7}"]
    for group, row in audit.table.iterrows():
        tail = audit.cvar.get(group, float("nan")) if group != ALL_ROW else float("nan")
        lines.append(f"{str(group):<18} {int(row['n']):>4} {val(row['kidney']):>7} {val(row['tumor']):>7} "
                     f"{val(row['mean']):>7} {val(tail):>7}")
    s = audit.summary
    es = f"   ES-Dice {m.shown(s['es_dice']):.1f}" if m.higher_is_better else ""
    lines.append(f"SD {m.shown(s['sd']):.2f}   SER {s['ser']:.2f}{es}   "
                 f"worst {s['worst_group']} {m.shown(s['worst']):.1f}   gap {m.shown(s['gap']):.1f}")
    return "\n".join(lines + audit_footnotes(audit))


def audit_footnotes(audit: Audit) -> list[str]:
    """The worded significance line, then what the summary leaves out: groups with no scored
    case, cases without tumor Dice."""
    notes = [significance_line(audit.significance, audit.metric)] if audit.significance else []
    missing = [str(g) for g, row in audit.table.drop(index=ALL_ROW).iterrows() if pd.isna(row["mean"])]
    if missing:
        notes.append(f"(no scored cases in {', '.join(missing)}: SD, SER and ES-Dice are over the "
                     f"{audit.summary['n_groups']} group(s) present)")
    excluded = int(audit.table.loc[ALL_ROW, "n_excluded_tumor"])
    if excluded:
        notes.append(f"({excluded} case(s) with no tumor in reference or prediction, or in one of them for a "
                     f"distance: tumor {audit.metric.label} excluded, see fairness.case_dice and fairness.surface)"
                     if audit.metric.name in ("hd95", "assd") else
                     f"({excluded} case(s) with no tumor in reference or prediction: tumor {audit.metric.label} "
                     "excluded, see fairness.case_dice)")
    return notes
