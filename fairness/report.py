"""The study's tables for one model, several seeds, or several methods: text, CSV, Markdown, LaTeX.

Built on the one audit (fairness.audit), the one bootstrap and rank test (fairness.stats) and the
one seed aggregation; this module only arranges and writes them.

    GroupReport      one attribute of one model: Audit + bootstrap intervals + group test
    group_report     make one from per-case Dice
    format_report    the printed table: per group n, kidney / tumor / mean Dice [95% CI], CVaR,
                     then SD and SER [CI], the test's p, ES-Dice, worst group and gap
    report_frames    the same as two DataFrames (groups, summary) in fractions, for CSV
    seed_table       several seeds of one model: mean ± std over seeds of every figure
    compare_table    several methods side by side (the study's Tables 2-4)
    pareto_front     which methods no other beats on both Dice and a fairness figure
    to_markdown / to_latex   plain writers (no tabulate or jinja2 needed)

Usage:
    rep = group_report(per_case, "sex", order=["male", "female"], n_boot=2000, seed=0)
    print(format_report(rep))
    groups, summary = report_frames(rep)
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pandas as pd

from fairness.audit import METRICS, Audit, audit_footnotes, audit_groups
from fairness.metrics import DICE, metric_view
from fairness.stats import aggregate_seeds, audit_figures, bootstrap_audit, group_difference_test
from fairness.adjusted import DEFAULT_COVARIATES
from fairness.significance import SUMMARY_COLUMNS, holm_family, significance_line
from fairness.tails import cvar_interval
from fairness.tables import ALL_ROW


@dataclass
class GroupReport:
    audit: Audit
    boot: dict          # fairness.stats.bootstrap_audit
    test: dict          # fairness.stats.group_difference_test on per-case mean Dice
    cvar_ci: dict = None  # group -> (lo, hi) of its CVaR (fairness.tails.cvar_interval)

    @property
    def attribute(self) -> str:
        return self.audit.group_col


def group_report(per_case: pd.DataFrame, group_col: str, *, order: Sequence[Hashable] | None = None,
                 cvar_level: float = 0.2, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 n_perm: int = 5000, covariates=DEFAULT_COVARIATES, metric="dice") -> GroupReport:
    audit = audit_groups(per_case, group_col, order=order, cvar_level=cvar_level, n_perm=n_perm, seed=seed,
                         covariates=covariates, metric=metric)
    order = [g for g in audit.table.index if g != ALL_ROW]
    view = metric_view(per_case, audit.metric)
    boot = bootstrap_audit(view, group_col, order=order, n_boot=n_boot, seed=seed, level=level,
                           higher_is_better=audit.metric.higher_is_better)
    test = group_difference_test(view, group_col, metric="mean", order=order)
    better = audit.metric.higher_is_better
    cvar_ci = {g: cvar_interval(view.loc[view[group_col] == g, "mean"], cvar_level, n_boot=n_boot, seed=seed,
                                level=level, higher_is_better=better) for g in order}
    return GroupReport(audit=audit, boot=boot, test=test, cvar_ci=cvar_ci)


def report_family(reports: Sequence[GroupReport]) -> int:
    """Holm over every p-value these reports print together (one screen): sets the *_holm values."""
    return holm_family([r.audit.significance for r in reports if r.audit.significance], [r.test for r in reports])


def _pct(value, width: int = 5, scale: float = 100) -> str:
    """A value shown at `scale` (Dice x100 in %; a distance x1 in mm), one decimal."""
    return f"{scale * value:{width}.1f}" if pd.notna(value) and math.isfinite(value) else f"{'-':>{width}}"


def _interval(lo, hi, scale: float = 100, digits: int = 1) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return ""
    fmt = lambda v: "inf" if math.isinf(v) else f"{scale * v:.{digits}f}"  # noqa: E731
    return f"[{fmt(lo)}, {fmt(hi)}]"


def format_p(p) -> str:
    if pd.isna(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def format_report(rep: GroupReport) -> str:
    """Dice in %, SD in Dice %, SER unitless (a distance metric: mm); intervals are the bootstrap's
    percentile ones."""
    a, b = rep.audit, rep.boot
    k = a.metric.scale
    level = int(round(100 * b["level"]))
    cvar_name = f"CVaR{int(round(a.cvar_level * 100))}"
    heading = "" if a.metric is DICE else f"   ({a.metric.label}, {a.metric.unit})"
    lines = [f"{a.group_col:<14} {'n':>4}  {'kidney':<21} {'tumor':<21} {'mean':<21} {cvar_name:<18}{heading}".rstrip()]
    cvar_ci = rep.cvar_ci or {}
    for group, row in a.table.iterrows():
        cells = []
        for metric in METRICS:
            lo, hi = b["groups"].loc[group, f"{metric}_lo"], b["groups"].loc[group, f"{metric}_hi"]
            cells.append(f"{_pct(row[metric], scale=k)} {_interval(lo, hi, scale=k):<15}")
        tail = a.cvar.get(group, math.nan) if group != ALL_ROW else math.nan
        tail_ci = _interval(*cvar_ci.get(group, (math.nan, math.nan)), scale=k)
        lines.append(f"{str(group):<14} {int(row['n']):>4}  {' '.join(cells)} {_pct(tail, 5, scale=k)} {tail_ci}".rstrip())
    s = a.summary
    lines.append(f"SD {k * s['sd']:.2f} {_interval(*b['sd'], scale=k, digits=2)}   "
                 f"SER {s['ser']:.2f} {_interval(*b['ser'], scale=1, digits=2)}   "
                 f"(SD >= 0 and SER >= 1 by construction: their intervals never hold 0 or 1; the gap test says "
                 f"whether the groups differ)")
    es = f"ES-Dice {_pct(s['es_dice'], 0)}   " if a.metric.higher_is_better else ""
    lines.append(f"{es}worst {s['worst_group']} {_pct(s['worst'], 0, scale=k)}   "
                 f"gap {_pct(s['gap'], 0, scale=k)}   {rank_test_text(rep.test)}")
    lines.append(f"({level}% intervals: group means bootstrap-t (the groups' shared shape); SD, SER and CVaR bootstrap, {b['n_boot']} "
                 f"resamples within groups, seed {b['seed']})")
    return "\n".join(lines + audit_footnotes(a))


def rank_test_text(test: dict) -> str:
    """'Mann-Whitney U p = 0.030, Holm 0.120 (H0: same distribution)', or why there is none."""
    name = test["test"] or "group test"
    if pd.isna(test["p"]):
        return f"{name}: {test['note'] or 'not applicable'}"
    holm = test.get("p_holm", math.nan)
    shown = format_p(test["p"])
    return (f"{name} p {'' if shown.startswith('<') else '= '}{shown}" + (f", Holm {format_p(holm)}" if pd.notna(holm) else "")
            + " (H0: the same distribution of per-case values; unequal spreads alone can reject it)")


def report_frames(rep: GroupReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(groups, summary): per group n, Dice and interval per metric, CVaR; SD/SER/... with intervals."""
    a, b = rep.audit, rep.boot
    groups = a.table.copy()
    groups = groups.join(b["groups"])
    name = f"cvar{int(round(a.cvar_level * 100))}"
    groups[name] = [a.cvar.get(g, math.nan) for g in groups.index]
    cvar_ci = rep.cvar_ci or {}
    groups[f"{name}_lo"] = [cvar_ci.get(g, (math.nan, math.nan))[0] for g in groups.index]
    groups[f"{name}_hi"] = [cvar_ci.get(g, (math.nan, math.nan))[1] for g in groups.index]
    groups.index.name = a.group_col
    s = a.summary
    sig = a.significance or {}
    rank_p = "p_" + (rep.test["test"] or "test").lower().replace(" ", "_").replace("-", "_")
    rows = [("sd", s["sd"], *b["sd"]), ("ser", s["ser"], *b["ser"]), ("es_dice", s["es_dice"], math.nan, math.nan),
            ("worst", s["worst"], math.nan, math.nan),
            ("gap", s["gap"], sig.get("gap_lo", math.nan), sig.get("gap_hi", math.nan)),
            (rank_p, rep.test["p"], math.nan, math.nan),
            (f"{rank_p}_holm", rep.test.get("p_holm", math.nan), math.nan, math.nan)]
    rows += [(name, sig.get(name, math.nan), math.nan, math.nan) for name in SUMMARY_COLUMNS]
    summary = pd.DataFrame(rows, columns=["figure", "value", "lo", "hi"]).set_index("figure")
    summary.attrs["worst_group"] = s["worst_group"]
    return groups, summary


def display_frame(rep: GroupReport) -> pd.DataFrame:
    """The printed table as strings (Dice % [CI]), for Markdown and LaTeX."""
    groups, summary = report_frames(rep)
    out = pd.DataFrame(index=[str(g) for g in groups.index])
    out["n"] = [str(int(n)) for n in groups["n"]]
    k = rep.audit.metric.scale
    for metric in METRICS:
        out[metric] = [f"{_pct(v, scale=k).strip()} {_interval(lo, hi, scale=k)}".strip()
                       for v, lo, hi in zip(groups[metric], groups[f"{metric}_lo"], groups[f"{metric}_hi"])]
    cvar_col = [c for c in groups.columns if c.startswith("cvar")][0]   # the value, not its _lo/_hi
    out[cvar_col.upper().replace("CVAR", "CVaR")] = [_pct(v, scale=k).strip() for v in groups[cvar_col]]
    out.index.name = rep.attribute
    return out


def summary_line(rep: GroupReport) -> str:
    s, b, t, m = rep.audit.summary, rep.boot, rep.test, rep.audit.metric
    es = f"ES-Dice {_pct(s['es_dice'], 0)}; " if m.higher_is_better else ""
    return (f"SD {m.scale * s['sd']:.2f} {_interval(*b['sd'], scale=m.scale, digits=2)}; SER {s['ser']:.2f} "
            f"{_interval(*b['ser'], scale=1, digits=2)} (>= 0 and >= 1 by construction); {rank_test_text(t)}; "
            f"{es}worst {s['worst_group']} {_pct(s['worst'], 0, scale=m.scale)}; "
            + significance_line(rep.audit.significance, m).replace("\n", "; "))


# --- several seeds of one model ----------------------------------------------------------------

def seed_table(audits: Sequence[Audit]) -> tuple[pd.DataFrame, dict]:
    """Mean ± std over seeds (ddof 1) of every group's Dice and of SD/SER computed per seed.

    Returns (table of strings, aggregate dict from fairness.stats.aggregate_seeds).
    """
    agg = aggregate_seeds([audit_figures(a) for a in audits])
    scale = audits[0].metric.scale
    groups = list(audits[0].table.index)
    rows = {}
    for group in groups:
        row = {"n": _mean_std_text(agg.get(f"n/{group}"), scale=1, digits=0)}
        for metric in METRICS:
            row[metric] = _mean_std_text(agg.get(f"{metric}/{group}"), scale=scale)
        rows[str(group)] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = audits[0].group_col
    return table, agg


def _mean_std_text(entry, scale: float = 100, digits: int = 1) -> str:
    if not entry or entry["n"] == 0 or pd.isna(entry["mean"]):
        return "-"
    std = "" if pd.isna(entry["std"]) else f" ± {scale * entry['std']:.{digits}f}"
    return f"{scale * entry['mean']:.{digits}f}{std}"


def seed_summary_line(agg: dict, metric=DICE) -> str:
    m = metric
    es = f"ES-Dice {_mean_std_text(agg.get('es_dice'))}   " if m.higher_is_better else ""
    return (f"SD {_mean_std_text(agg.get('sd'), scale=m.scale, digits=2)}   "
            f"SER {_mean_std_text(agg.get('ser'), scale=1, digits=2)}   "
            f"{es}worst {_mean_std_text(agg.get('worst'), scale=m.scale)}   "
            f"(mean ± std over {agg['sd']['n']} seeds; SD and SER per seed, then averaged)")


# --- several methods ---------------------------------------------------------------------------

def compare_table(methods: dict[str, dict[str, list[Audit]]]) -> pd.DataFrame:
    """methods: name -> {attribute: [Audit per seed]}. One numeric row per method:
    kidney/tumor/mean (from the first attribute's "all" row) and SD/SER per attribute, each with
    _std over seeds, plus the number of seeds. Dice and SD in % (a distance metric: mm), SER unitless."""
    rows = {}
    for name, by_attr in methods.items():
        row = {}
        for i, (attr, audits) in enumerate(by_attr.items()):
            agg = aggregate_seeds([audit_figures(a) for a in audits])
            k = audits[0].metric.scale
            if i == 0:
                row["seeds"] = len(audits)
                for metric in METRICS:
                    row[metric], row[f"{metric}_std"] = _scaled(agg[f"{metric}/{ALL_ROW}"], k)
            row[f"sd_{attr}"], row[f"sd_{attr}_std"] = _scaled(agg["sd"], k)
            row[f"ser_{attr}"], row[f"ser_{attr}_std"] = _scaled(agg["ser"], 1)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def _scaled(entry: dict, scale: float) -> tuple[float, float]:
    return scale * entry["mean"], scale * entry["std"]


def compare_display(table: pd.DataFrame) -> pd.DataFrame:
    """mean ± std strings, the study's layout."""
    out = pd.DataFrame(index=table.index)
    out["seeds"] = table["seeds"].astype(int).astype(str)
    for col in [c for c in table.columns if not c.endswith("_std") and c != "seeds"]:
        digits = 1 if col in METRICS else 2
        figure, _, attr = col.partition("_")
        out[col if col in METRICS else f"{figure.upper()} {attr}"] = [
            "-" if pd.isna(m) else (f"{m:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}"))
            for m, s in zip(table[col], table[f"{col}_std"])]
    return out


STATISTIC_NAMES = {"mean": "mean {label}", "sd": "SD", "ser": "SER", "worst": "worst group", "gap": "gap"}


def _delta_text(value, lo, hi, digits: int) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:+.{digits}f}" + (f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if pd.notna(lo) else "")


def delta_display(deltas: pd.DataFrame, attr: str, metric=DICE, printed=(("mean", "mean"), ("mean", "sd"))) -> pd.DataFrame:
    """The recipe-level Δ (seeds as the unit; fairness/recipe.py, audit/compare.delta_columns' columns)
    as one row per method and printed (class, statistic): Δ [95% CI], p, its Holm over the screen,
    the detectable Δ (80 % power at 5 %) and the between-seed SD of the per-run statistic."""
    rows = []
    for method in deltas.index:
        r = deltas.loc[method]
        for part, s in printed:
            pre = "" if part == "mean" else f"{part}_"
            digits = 2 if s in ("sd", "ser") else 1
            name = STATISTIC_NAMES[s].format(label=metric.label)
            what = f"Δ {name}" if part == "mean" else f"Δ {part} {name}"
            row = {"method": method, "runs": f"{int(r['runs'])} vs {int(r['baseline_runs'])}", "Δ of": what,
                   "Δ [95% CI]": _delta_text(r.get(f"{pre}delta_{s}_{attr}"), r.get(f"{pre}delta_{s}_lo_{attr}"),
                                             r.get(f"{pre}delta_{s}_hi_{attr}"), digits),
                   "p": format_p(r.get(f"{pre}p_{s}_{attr}")), "Holm": format_p(r.get(f"{pre}p_{s}_holm_{attr}")),
                   "detectable": "-" if pd.isna(r.get(f"{pre}detectable_{s}_{attr}")) else
                   f"{r[f'{pre}detectable_{s}_{attr}']:.{digits}f}",
                   "seed SD": "-" if pd.isna(r.get(f"{pre}seed_sd_{s}_{attr}")) else
                   f"{r[f'{pre}seed_sd_{s}_{attr}']:.{digits}f}"}
            needed = r.get(f"{pre}seeds_for_{s}_{attr}")
            if needed is not None:
                row["seeds for --detect"] = "-" if pd.isna(needed) else ("none: more test cases" if needed == math.inf
                                                                          else f"{int(needed)}")
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "Δ of"])


def model_delta_display(deltas: pd.DataFrame, attr: str, metric=DICE) -> pd.DataFrame:
    """This model's Δ (the cases as the sample, the models fixed; fairness/paired.py), from the
    model_* columns of audit/compare.delta_columns: Δ [CI] per statistic, the Holm p of Δ mean and ΔSD."""
    out = pd.DataFrame(index=deltas.index)
    for s, title, digits in (("mean", f"Δ mean {metric.label}", 1), ("sd", "ΔSD", 2), ("ser", "ΔSER", 2),
                             ("worst", "Δ worst", 1)):
        out[title] = [_delta_text(v, lo, hi, digits) for v, lo, hi in
                      zip(deltas[f"model_delta_{s}_{attr}"], deltas[f"model_delta_{s}_lo_{attr}"],
                          deltas[f"model_delta_{s}_hi_{attr}"])]
    out["p ΔSD (Holm)"] = [format_p(p) for p in deltas[f"model_p_sd_holm_{attr}"]]
    out["p Δ mean (Holm)"] = [format_p(p) for p in deltas[f"model_p_mean_holm_{attr}"]]
    out.index.name = "method"
    return out


def paired_display(deltas: pd.DataFrame, metric=DICE) -> pd.DataFrame:
    """Δ [CI] strings per method (fairness.paired rows: this model's comparison), with the
    Holm-corrected p of ΔSD and Δ mean (columns p_holm, p_holm_mean)."""
    out = pd.DataFrame(index=deltas.index)
    for s, title, digits in (("mean", f"Δ mean {metric.label}", 1), ("sd", "ΔSD", 2), ("ser", "ΔSER", 2),
                             ("worst", "Δ worst", 1)):
        out[title] = [_delta_text(v, lo, hi, digits)
                      for v, lo, hi in zip(deltas[f"delta_{s}"], deltas[f"delta_{s}_lo"], deltas[f"delta_{s}_hi"])]
    out["p ΔSD (Holm)"] = [format_p(p) for p in deltas["p_holm"]]
    out["p Δ mean (Holm)"] = [format_p(p) for p in deltas["p_holm_mean"]]
    out.index.name = "method"
    return out


def pareto_front(dice: Sequence[float], unfairness: Sequence[float], *, higher_is_better: bool = True) -> list[bool]:
    """True for each point that no other point beats: Dice at least as high (a distance: as low) and
    unfairness at least as low, one of them strictly. NaN points are never on the front."""
    if not higher_is_better:
        dice = [-d for d in dice]
    flags = []
    for i, (d, u) in enumerate(zip(dice, unfairness)):
        if pd.isna(d) or pd.isna(u):
            flags.append(False)
            continue
        dominated = any(j != i and not (pd.isna(d2) or pd.isna(u2)) and d2 >= d and u2 <= u and (d2 > d or u2 < u)
                        for j, (d2, u2) in enumerate(zip(dice, unfairness)))
        flags.append(not dominated)
    return flags


# --- writers -----------------------------------------------------------------------------------

def md_text(text) -> str:
    """Free text for Markdown: '&' and '<' escaped, so a viewer renders no tag from a group name."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;")


def md_cell(value) -> str:
    """A table cell's text for Markdown: '&' and '<' escaped (a viewer renders no tag from a group name
    or a metadata value) and '|' escaped (it would split the cell)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def to_markdown(frame: pd.DataFrame) -> str:
    cols = [md_cell(frame.index.name or "")] + [md_cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([md_cell(idx)] + [md_cell(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    text = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return text.replace("±", r"$\pm$").replace(">=", r"$\geq$").replace("<", r"$<$")


def to_latex(frame: pd.DataFrame, caption: str = "") -> str:
    cols = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    lines += [r"\begin{tabular}{l" + "r" * len(frame.columns) + "}", r"\hline",
              " & ".join(latex_escape(c) for c in cols) + r" \\", r"\hline"]
    for idx, row in frame.iterrows():
        lines.append(" & ".join(latex_escape(v) for v in [idx, *row]) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
