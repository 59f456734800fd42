"""Fairness metrics of fairkits: KiTS19 Dice per case, group tables, fairness summaries, tails.

This package measures; what changes training (the mitigations) is in mitigations/.

Modules (each one job):
    case_dice  per-case Dice, KiTS19's way (kidney = label > 0, tumor = label 2, nanmean), and
               the voxel counts (TP, FP, FN) behind it
    grouping   the one order in which groups are listed
    tables     group_table: per-group n, mean Dice and excluded (NaN) counts, plus "all"
    summary    fairness_summary: SD, SER, ES-Dice, worst/best group and gap
    tails      CVaR of per-case Dice within groups and for the worst group (FairDRO reporting)
    stats      bootstrap_audit (t intervals of group Dice, bootstrap ones of SD, SER), group_difference_test (rank
               tests), audit_figures + aggregate_seeds (mean ± std over seeds, SD/SER per seed)
    audit      audit_groups: one attribute's table, summary and CVaR; format_audit
    welch      group means compared when spreads differ: Welch's t, the Welch-type test, the gap interval
    power      the minimum detectable gap of that test
    adjusted   the gap with case mix held fixed (OLS, HC3)
    significance  is a gap real: the audit's figures and line from those three, Holm per screen
    paired     method against baseline on the same cases: paired Δ, the method-label swap test
    calibration  simulated cohorts with a known truth, to measure the statistics (docs/statistics.md)
    report     the printed / Markdown / LaTeX tables with CIs, seed and method comparisons, Pareto
    figures    box plots per group, the Dice-fairness trade-off, a case's slice with its contours
    html_report  report.html: an audit folder as one self-contained page
    features   what is known of each case (metadata, geometry, CT, the model's embedding)
    discovery  failing subgroups nobody named, searched on half the cases and confirmed on the other
    surface    surface metrics (NSD, HD95, ASSD); metrics: which per-case metric a table holds

Usage:
    from fairness import kits_case_dice, group_table, fairness_summary, worst_group_cvar
    per_case = pd.DataFrame([{**kits_case_dice(pred=p, ref=r), "sex": s} for p, r, s in cases])
    table = group_table(per_case, group_col="sex", order=["male", "female"])
    summary = fairness_summary(table["mean"].drop("all").to_dict(), overall=table.loc["all", "mean"])
    worst_group_cvar(per_case, group_col="sex", metric="mean", alpha=0.2)
    bootstrap_audit(per_case, group_col="sex", n_boot=2000, seed=0)["sd"]   # (lo, hi)
    aggregate_seeds([audit_figures(audit_groups(pc, group_col="sex")) for pc in seeds])["ser"]
    # (audit_groups from fairness.audit; one per_case frame per training seed)
"""
from fairness.case_dice import dice, kits_case_dice, kits_case_scores
from fairness.grouping import group_order
from fairness.summary import fairness_summary
from fairness.tables import group_table
from fairness.stats import aggregate_seeds, audit_figures, bootstrap_audit, group_difference_test
from fairness.tails import cvar, tail_size, within_group_cvar, worst_group_cvar

__all__ = [
    "dice",
    "kits_case_dice",
    "kits_case_scores",
    "group_order",
    "group_table",
    "fairness_summary",
    "cvar",
    "tail_size",
    "within_group_cvar",
    "worst_group_cvar",
    "bootstrap_audit",
    "group_difference_test",
    "audit_figures",
    "aggregate_seeds",
]
