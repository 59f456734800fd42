"""Fairness metrics of fairkits: KiTS19 Dice per case, group tables, fairness summaries, tails.

Modules (each one job):
    case_dice  per-case Dice, KiTS19's way (kidney = label > 0, tumor = label 2, nanmean)
    grouping   the one order in which groups are listed
    tables     group_table: per-group n, mean Dice and excluded (NaN) counts, plus "all"
    summary    fairness_summary: SD, SER, ES-Dice, worst/best group and gap
    tails      CVaR of per-case Dice within groups and for the worst group (FairDRO reporting)

Usage:
    from fairness import kits_case_dice, group_table, fairness_summary, worst_group_cvar
    per_case = pd.DataFrame([{**kits_case_dice(pred=p, ref=r), "sex": s} for p, r, s in cases])
    table = group_table(per_case, group_col="sex", order=["male", "female"])
    summary = fairness_summary(table["mean"].drop("all").to_dict(), overall=table.loc["all", "mean"])
    worst_group_cvar(per_case, group_col="sex", metric="mean", alpha=0.2)
"""
from fairness.case_dice import dice, kits_case_dice
from fairness.grouping import group_order
from fairness.summary import fairness_summary
from fairness.tables import group_table
from fairness.tails import cvar, tail_size, within_group_cvar, worst_group_cvar

__all__ = [
    "dice",
    "kits_case_dice",
    "group_order",
    "group_table",
    "fairness_summary",
    "cvar",
    "tail_size",
    "within_group_cvar",
    "worst_group_cvar",
]
