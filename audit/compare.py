"""--compare: methods side by side from their run folders (each a run, or a --seeds / --sweep batch),
with the paired Δ against a baseline, the ties a paired test cannot break, the Pareto front and the
trade-off figures.

    from audit.compare import find_runs, load_methods

`args` is evaluate.py's parsed options (--compare, --group, --source, --baseline, --metric and the
statistics' settings).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from audit.results import adjust_for
from data.atomic import write_csv, write_figure, write_text
from data.errors import CaseError


def find_runs(folder: Path) -> list[Path]:
    """A run folder (config.yaml + eval/), or the run folders under a --seeds / --sweep batch."""
    if (folder / "config.yaml").is_file():
        return [folder]
    runs, seen = [], set()
    # os.walk, not Path.glob("**"): a batch assembled from symlinked seed folders must count them all
    for here, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:         # a link back up the tree, or two links to one run: walked once
            subdirs.clear()
            continue
        seen.add(real)
        subdirs.sort()
        if "config.yaml" in files and os.path.isdir(os.path.join(here, "eval")):
            runs.append(Path(here))
    runs.sort()
    if not runs:
        raise CaseError(str(folder), "is not a run folder and holds no finished runs (config.yaml + eval/)")
    return runs


def run_per_case(run: Path, source: str) -> tuple[pd.DataFrame, str]:
    """The run's test per-case Dice: evaluate.py's (original geometry) if there, else train.py's."""
    names = {"auto": ["best", "last"], "train": []}.get(source, [source])
    candidates = [(f"evaluate.py {n}", run / "eval" / n / "per_case.csv") for n in names]
    if source in ("auto", "train"):
        candidates.append(("train.py (preprocessed geometry)", run / "eval" / "per_case.csv"))
    for label, path in candidates:
        if path.is_file():
            return pd.read_csv(path), label
    raise CaseError(str(run), f"has no test results ({', '.join(str(p) for _, p in candidates)})")


def load_methods(args):
    """({method: {attribute: [Audit per run]}}, {method: [per-case frame per run]}, attribute orders)."""
    from config import load_config, yaml_load
    from data.cache import groups_from_table, load_case_table
    from data.groups import parse_attribute
    from data.preprocessing import PreprocessSettings
    from fairness.audit import audit_groups
    from fairness.metrics import metric_view

    metric = compare_metric(args)
    methods, frames, orders, sources = {}, {}, {}, {}
    for folder in map(Path, args.compare):
        by_attr, runs = {}, []
        for run in find_runs(folder):
            per_case, label = run_per_case(run, args.source)
            sources.setdefault(label, []).append(str(run))
            cfg = load_config(saved=yaml_load(run / "config.yaml"))
            settings = PreprocessSettings.from_dict(cfg["data"]["preprocess"])
            for spec in args.group:
                attribute = parse_attribute(spec, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges)
                if attribute.name not in per_case.columns:  # e.g. an intersection not in the run's groups
                    groups = groups_from_table(load_case_table(cfg["data"]["cache"]), spec, settings)
                    per_case[attribute.name] = per_case["case_id"].map(groups)
                orders[attribute.name] = attribute.order
                by_attr.setdefault(attribute.name, []).append(
                    audit_groups(per_case, attribute.name, order=attribute.order, cvar_level=args.cvar_level,
                                 n_perm=args.n_perm, seed=args.seed, covariates=adjust_for(args), metric=metric))
            try:
                runs.append(metric_view(per_case, metric))
            except ValueError as exc:
                raise CaseError(str(run), str(exc)) from None
        name = folder.name if folder.name not in methods else str(folder)
        methods[name], frames[name] = by_attr, runs
    if len(sources) > 1:
        print("warning: runs were scored differently: " + "; ".join(f"{k}: {len(v)} run(s)" for k, v in sources.items())
              + " (evaluate each with --ckpt for a like-for-like table)", file=sys.stderr)
    return methods, frames, orders


def compare_metric(args):
    """The one metric of a comparison (--metric, Dice by default)."""
    from fairness.metrics import get_metric
    names = args.metric or ["dice"]
    if len(names) > 1:
        raise CaseError("--metric", "--compare makes one comparison: give one metric")
    return get_metric(names[0])


def compare_out_dir(args) -> Path:
    out = args.out or Path(os.path.commonpath([Path(f).resolve() for f in args.compare])) / "compare"
    if len(args.compare) == 1:
        out = args.out or Path(args.compare[0]) / "compare"
    return out


def metric_suffix(args) -> str:
    metric = compare_metric(args)
    return "" if metric.name == "dice" else f"_{metric.name}"


def paired_columns(table: pd.DataFrame, frames: dict, orders: dict, args) -> pd.DataFrame:
    """Δ against --baseline per method and attribute (fairness/paired.py), Holm over the table."""
    from fairness.paired import paired_delta
    from fairness.significance import holm
    from fairness.report import paired_display

    if args.baseline not in frames:
        raise CaseError(args.baseline, f"--baseline is not one of the compared methods ({', '.join(frames)})")
    attrs = list(orders)
    for k, attr in enumerate(attrs):
        rows = {name: paired_delta(frames[args.baseline], runs, attr, order=orders[attr], n_boot=args.n_boot,
                                   seed=args.seed, measure=compare_metric(args))
                for name, runs in frames.items() if name != args.baseline}
        deltas = pd.DataFrame.from_dict(rows, orient="index")
        deltas["p_holm"] = holm(deltas["p_sd"].tolist())          # the fairness claim: did SD change?
        deltas["p_holm_mean"] = holm(deltas["p_mean"].tolist())
        print(f"\nagainst {args.baseline}, by {attr} (paired over the same test cases, {args.n_boot} bootstrap "
              f"resamples within groups; Δ of the means over seeds; Holm over {len(deltas)} method(s)):\n"
              f"{paired_display(deltas, compare_metric(args)).to_string()}")
        suffixed = deltas.add_suffix(f"_{attr}")
        table = table.join(suffixed if k else deltas.join(suffixed))
    return table


def ties(frames: dict, leader: str, attr: str, statistic: str, orders: dict, args) -> str:
    """', not distinguishable from X (paired p 0.41)': the methods a paired test cannot tell from the
    leader, which point means alone would rank below it."""
    from fairness.paired import indistinguishable

    same = indistinguishable(frames, leader, attr, statistic, order=orders[attr], n_boot=args.n_boot,
                             seed=args.seed, measure=compare_metric(args))
    if not same:
        return ", beyond noise from every other method (paired swap test, 5 %)"
    return ", not distinguishable from " + ", ".join(
        f"{m} (paired p {p:.2f})" if p == p else f"{m} (no paired test: a group of fewer than 2 scored cases)"
        for m, p in same.items())


def write_comparison(table, shown, frames, orders, methods, metric, suffix: str, out: Path, args) -> None:
    """The comparison's lines, trade-off figures and tables (compare.csv last: it marks it finished)."""
    from fairness.figures import tradeoff_plot
    from fairness.report import pareto_front, to_latex, to_markdown

    unit = f"{metric.label} {metric.unit}"
    print(f"\nmethods side by side ({unit} and SD in {metric.unit}: mean ± std over seeds):\n{shown.to_string()}")
    pick = max if metric.higher_is_better else min
    for attr in methods[next(iter(methods))]:
        for figure in ("sd", "ser"):
            front = pareto_front(table["mean"].tolist(), table[f"{figure}_{attr}"].tolist(),
                                 higher_is_better=metric.higher_is_better)
            table[f"pareto_{figure}_{attr}"] = front
        best = pick(table.index, key=lambda m: table.loc[m, "mean"])
        on_front = [m for m, f in table[f"pareto_sd_{attr}"].items() if f]
        fairest = table.loc[on_front, f"sd_{attr}"].idxmin() if on_front else None
        print(f"by {attr}: best mean {metric.label} {best} ({table.loc[best, 'mean']:.1f}, "
              f"SD {table.loc[best, f'sd_{attr}']:.2f}){ties(frames, best, attr, 'mean', orders, args)}; "
              f"Pareto front on {metric.label} vs SD: {', '.join(on_front)}"
              + (f"; fairest on it {fairest} (SD {table.loc[fairest, f'sd_{attr}']:.2f}, "
                 f"{metric.label} {table.loc[fairest, 'mean']:.1f}){ties(frames, fairest, attr, 'sd', orders, args)}"
                 if fairest else ""))
        fig = tradeoff_plot(table, attr, metric=metric)
        write_figure(out / f"tradeoff_{attr}{suffix}.png", fig)
        import matplotlib.pyplot as plt
        plt.close(fig)
    if args.baseline is not None:
        table = paired_columns(table, frames, orders, args)
    write_text(out / f"compare{suffix}.md", to_markdown(shown))
    write_text(out / f"compare{suffix}.tex", to_latex(shown, caption=f"{unit} and fairness, mean ± std over seeds"))
    write_csv(table, out / f"compare{suffix}.csv")
