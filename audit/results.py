"""The audit's outputs for one per-case table: every attribute's group report printed and written
(groups_/summary_/report_<attr> .csv/.md/.tex, box_<attr>.png, TensorBoard scalars), failure
discovery, report.html, the scores as per_case.csv and nnU-Net's summary.json, and the mean ± std
over several checkpoints.

    from audit.results import write_reports
    reports = write_reports(per_case, attributes, out_dir, args, title="my model")

`args` is evaluate.py's parsed options (build_parser): the statistics' settings (--n-boot, --n-perm,
--seed, --cvar-level, --adjust-for) and the report's. The statistics themselves live in fairness/.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.atomic import write_csv, write_figure, write_text


FINISHED = "per_case.csv"   # written last: a results folder holding it is finished


def save_per_case(per_case: pd.DataFrame, out: Path) -> None:
    """The scores as nnU-Net's summary.json (naming the files scored), then per_case.csv without the file
    names (the same results in another folder give the same table); per_case.csv last: it marks the folder
    finished."""
    from data.nnunet import FILE_COLUMNS, summary_from_per_case, write_summary

    write_summary(out / "summary.json", summary_from_per_case(per_case))
    write_csv(per_case.drop(columns=list(FILE_COLUMNS), errors="ignore"), out / "per_case.csv", index=False)


def write_page(out: Path | None, per_case, args, *, title: str, audited: list, settings=None,
               gallery_absent: str = "") -> None:
    """report.html in the audit folder (fairness/html_report.py), unless --no-report."""
    if out is None or args.no_report:
        return
    import shlex

    from fairness.html_report import ReportContext, config_digest, write_html_report
    from models.checkpoint import git_commit

    settings = settings if settings is not None else {k: v for k, v in vars(args).items() if k != "argv"}
    context = ReportContext(title=title, audited=audited, command="python evaluate.py " + shlex.join(args.argv),
                            commit=git_commit(), config_digest=config_digest(settings), seeds=str(args.seed),
                            n_boot=args.n_boot, n_perm=args.n_perm, gallery_absent=gallery_absent)
    print(f"report: {write_html_report(out, context, per_case)}")


def adjust_for(args) -> list:
    """The case-mix covariates of the adjusted gap: --adjust-for, else the defaults."""
    from fairness.adjusted import DEFAULT_COVARIATES
    return list(DEFAULT_COVARIATES) if args.adjust_for is None else [c for c in args.adjust_for if c != "none"]


def report_name(attribute: str, metric: str) -> str:
    """The file stem of one attribute's tables: groups_<this>.csv; Dice's keep their plain names."""
    return attribute if metric == "dice" else f"{attribute}_{metric}"


def write_reports(per_case: pd.DataFrame, attributes, out_dir: Path | None, args, *, title: str,
                  writer=None, metrics=("dice",)) -> dict:
    """Print and save the audit of every attribute and metric; returns {report_name: GroupReport}.
    Every p-value of the screen is Holm-adjusted over the screen's family before anything is shown."""
    from fairness.metrics import get_metric, metric_view
    from fairness.report import group_report, report_family

    reports, shown_as = {}, {}
    for metric in map(get_metric, metrics):
        metric_view(per_case, metric)          # a missing metric is one error before any table
        for attribute in attributes:
            name = report_name(attribute.name, metric.name)
            reports[name] = group_report(per_case, attribute.name, order=attribute.order,
                                         cvar_level=args.cvar_level, n_perm=args.n_perm,
                                         covariates=adjust_for(args), n_boot=args.n_boot, seed=args.seed,
                                         metric=metric)
            shown_as[name] = attribute.name
    family = report_family(list(reports.values()))
    for name, rep in reports.items():
        write_report(rep, per_case, shown_as[name], out_dir, title=title, writer=writer, name=name)
    from fairness.recipe import THIS_MODEL

    print(f"\n{THIS_MODEL}")
    if family:
        print(f"\n(Holm over the {family} tests this screen prints: attributes x classes x tests; "
              "'Holm' beside each p)")
    return reports


def write_report(rep, per_case: pd.DataFrame, attribute: str, out_dir: Path | None, *, title: str, writer,
                 name: str):
    from fairness.figures import group_boxplot
    from fairness.metrics import metric_view
    from fairness.report import (display_frame, format_report, md_text, report_frames, summary_line, to_latex,
                                 to_markdown)

    metric = rep.audit.metric
    what = "" if metric.name == "dice" else f" ({metric.label}, {metric.unit})"
    print(f"\n{title}, grouped by {attribute}{what}:\n{format_report(rep)}")
    if out_dir is None:
        return rep
    groups, summary = report_frames(rep)
    write_csv(groups, out_dir / f"groups_{name}.csv")
    write_csv(summary, out_dir / f"summary_{name}.csv")
    shown = display_frame(rep)
    write_text(out_dir / f"report_{name}.md",
               md_text(f"**{title}, by {attribute}** ({metric.label} {metric.unit}, 95% CI: bootstrap-t for group "
                       "means)") + f"\n\n{to_markdown(shown)}\n{md_text(summary_line(rep))}\n")
    write_text(out_dir / f"report_{name}.tex",
               to_latex(shown, caption=f"{title}, by {attribute}, {metric.label} ({metric.unit}). "
                                       f"{summary_line(rep)}"))
    fig = group_boxplot(metric_view(per_case, metric), attribute, order=list(rep.audit.table.index.drop("all")),
                        title=f"{title}: {metric.label} per case by {attribute}", metric=metric)
    write_figure(out_dir / f"box_{name}.png", fig)
    if writer is not None:
        tag = f"eval/{name}"
        s = rep.audit.summary
        for key in ("sd", "ser", "es_dice", "worst", "gap"):
            writer.add_scalar(f"{tag}/{key}", s[key], 0)
        writer.add_scalar(f"{tag}/p_value", rep.test["p"], 0)
        for key in ("sd_p", "ser_p", "gap_p", "gap_p_holm", "mdg80", "gap_adjusted"):
            writer.add_scalar(f"{tag}/{key}", rep.audit.significance.get(key, float("nan")), 0)
        for group, row in rep.audit.table.iterrows():
            writer.add_scalar(f"{tag}/mean_{metric.name}/{group}", row["mean"], 0)
        writer.add_figure(f"{tag}/box", fig, 0)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return rep


def write_seed_tables(all_reports, paths, agg_dir: Path, per_cases=None) -> None:
    """Each attribute's figures as mean ± std over the checkpoints, and, with the checkpoints' per-case
    tables, the recipe's own gap with the seeds as the unit (fairness.recipe.recipe_gap; Holm over the
    screen's attributes x classes): recipe_<attr>.csv. checkpoints.txt (last) lists them."""
    from fairness.report import seed_summary_line, seed_table, to_latex, to_markdown

    gaps = recipe_gaps(all_reports, per_cases) if per_cases is not None else {}
    for name in all_reports[0]:
        table, agg = seed_table([r[name].audit for r in all_reports])
        line = seed_summary_line(agg, all_reports[0][name].audit.metric)
        m = all_reports[0][name].audit.metric
        print(f"\n{len(paths)} checkpoints, grouped by {name} ({m.label} {m.unit}, mean ± std over seeds):\n"
              f"{table.to_string()}\n{line}")
        write_csv(pd.DataFrame(agg).T.rename_axis("figure"), agg_dir / f"seeds_{name}.csv")
        write_text(agg_dir / f"seeds_{name}.md", to_markdown(table) + f"\n{line}\n")
        write_text(agg_dir / f"seeds_{name}.tex", to_latex(table, caption=f"By {name}. {line}"))
        if name in gaps:
            print(recipe_gap_text(gaps[name], m, len(paths)))
            write_csv(gaps[name], agg_dir / f"recipe_{name}.csv")
    write_text(agg_dir / "checkpoints.txt", "\n".join(str(p.resolve()) for p in paths) + "\n")


def recipe_gaps(all_reports, per_cases) -> dict:
    """{report name: frame of the recipe's own gap per class (gap, lo, hi, p, p_holm, seed_sd, the
    pair, each model's own gap)}: Holm over every row of every frame (one screen)."""
    from fairness.metrics import CLASSES, metric_view
    from fairness.recipe import recipe_gap
    from fairness.significance import holm

    out = {}
    for name, rep in all_reports[0].items():
        metric, attr = rep.audit.metric, rep.audit.group_col
        order = [g for g in rep.audit.table.index if g != "all"]
        views = [metric_view(pc, metric) for pc in per_cases]
        rows = {}
        for part in CLASSES:
            gap = recipe_gap(views, attr, metric=part, order=order, measure=metric)
            if gap["first"] is not None:        # each model's own gap between the same two groups
                means = [v.groupby(attr)[part].mean() for v in views]
                gap["models"] = ", ".join(f"{metric.scale * (m.get(gap['first']) - m.get(gap['second'])):+.1f}"
                                          for m in means)
            rows[part] = gap
        out[name] = pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")
    cells = [(name, part) for name, frame in out.items() for part in frame.index]
    for (name, part), value in zip(cells, holm([out[n].loc[p, "p"] for n, p in cells])):
        out[name].loc[part, "p_holm"] = value
    for frame in out.values():
        frame["holm_family"] = sum(1 for n, p in cells if pd.notna(out[n].loc[p, "p"]))
    return out


def recipe_gap_text(frame: pd.DataFrame, metric, runs: int) -> str:
    """The recipe's own gap, one line per class, beside each model's own."""
    from fairness.report import format_p

    lines = [f"this RECIPE's own gap ({runs} runs: the seeds and the test cases are the sample; "
             f"{metric.label} {metric.unit}; Holm over the {int(frame['holm_family'].iloc[0])} recipe gaps of this screen):"]
    for part, r in frame.iterrows():
        if pd.isna(r["gap"]):
            continue
        interval = f" [{r['lo']:+.1f}, {r['hi']:+.1f}]" if pd.notna(r["lo"]) else ""
        test = (f"p {format_p(r['p'])}, Holm {format_p(r['p_holm'])}, seed SD {r['seed_sd']:.1f}" if pd.notna(r["p"])
                else r["note"])
        lines.append(f"  {part}: {r['first']} − {r['second']} {r['gap']:+.1f}{interval} ({test}); each model's own: "
                     f"{r.get('models', '-')}")
    return "\n".join(lines)


def discovery_families(args) -> tuple:
    from fairness.discovery import feature_families
    return feature_families(args.features)


def discover_failures(per_case: pd.DataFrame, metadata, out: Path | None, args, *, metrics, embeddings=None) -> None:
    """--discover: failing subgroups of the first metric, searched on half the cases and confirmed
    on the other (fairness/discovery.py); slices.csv and slice_members.csv beside the tables."""
    from fairness.discovery import run_discovery
    from fairness.metrics import get_metric, metric_view

    metric = get_metric(metrics[0])
    run_discovery(metric_view(per_case, metric), metadata, families=discovery_families(args), metric=metric,
                  seed=args.seed, out_dir=out, region=args.discover_region, embeddings=embeddings)
