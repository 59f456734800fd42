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


from fairness.recipe import PRINTED_DELTAS as PRINTED  # noqa: E402  (class, statistic) a screen prints


def recipe_question(frames: dict) -> bool:
    """Whether a comparison answers the recipe question: every method has 2 or more runs."""
    return all(len(runs) >= 2 for runs in frames.values())


def _prefix(part: str) -> str:
    return "" if part == "mean" else f"{part}_"


def delta_columns(frames: dict, orders: dict, args) -> pd.DataFrame:
    """Δ against --baseline per method, attribute and class, both questions (SPEC §5a), one row per
    method other than the baseline:

    this recipe   seeds as the unit (fairness/recipe.py): delta_<s>[_lo/_hi]_<attr>, p_<s>_<attr>,
                  detectable_<s>_<attr>, seed_sd_<s>_<attr> (the mean class; kidney_delta_<s>_...,
                  tumor_... for the classes), seeds_for_<s>_<attr> with --detect; screen_holm adds
                  the Holm p's
    this model    the cases as the sample, the trained models fixed (fairness/paired.py): the same
                  names prefixed model_
    """
    from fairness.metrics import CLASSES
    from fairness.paired import paired_delta
    from fairness.recipe import recipe_delta, table_pooled_spreads

    if args.baseline not in frames:
        raise CaseError(args.baseline, f"--baseline is not one of the compared methods ({', '.join(frames)})")
    measure = compare_metric(args)
    others = [name for name in frames if name != args.baseline]
    rows = {name: {"runs": len(frames[name]), "baseline_runs": len(frames[args.baseline])} for name in others}
    for attr in orders:
        pooled = {}
        if args.seed_variance == "pooled":     # one between-seed variance per statistic over the table
            for part in CLASSES:
                pooled[part] = table_pooled_spreads(frames, attr, metric=part, order=orders[attr], measure=measure)
                for s, (_, dof, p) in pooled[part].items():
                    for row in rows.values():
                        row[f"{_prefix(part)}pooled_dof_{s}_{attr}"] = dof
                        row[f"{_prefix(part)}homogeneity_p_{s}_{attr}"] = p
        for name in others:
            row = rows[name]
            for part in CLASSES:
                recipe = recipe_delta(frames[args.baseline], frames[name], attr, metric=part, order=orders[attr],
                                      measure=measure, detect=args.detect, pooled=pooled.get(part))
                model = paired_delta(frames[args.baseline], frames[name], attr, metric=part, order=orders[attr],
                                     n_boot=args.n_boot, seed=args.seed, measure=measure)
                row.update({f"{_prefix(part)}{key}_{attr}": value for key, value in recipe.items()
                            if key not in ("runs_baseline", "runs_method")})
                row.update({f"model_{_prefix(part)}{key}_{attr}": value for key, value in model.items()})
    deltas = pd.DataFrame.from_dict(rows, orient="index")
    deltas["question"] = ["recipe" if min(len(frames[args.baseline]), len(frames[m])) >= 2 else "model"
                          for m in deltas.index]
    return deltas


def recipe_gap_columns(frames: dict, orders: dict, args) -> pd.DataFrame:
    """Each method's own gap with the seeds as the unit (fairness.recipe.recipe_gap), per attribute
    and class: recipe_gap_<class>_<attr> with _lo, _hi, _p, _first, _second, _seed_sd; NaN p and a
    note for a method of one run."""
    from fairness.metrics import CLASSES
    from fairness.recipe import recipe_gap

    measure = compare_metric(args)
    rows = {}
    for name, runs in frames.items():
        row = {}
        for attr in orders:
            for part in CLASSES:
                gap = recipe_gap(runs, attr, metric=part, order=orders[attr], measure=measure)
                for key in ("gap", "lo", "hi", "p", "first", "second", "seed_sd", "note"):
                    row[f"recipe_gap_{part}{'' if key == 'gap' else '_' + key}_{attr}"] = gap[key]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def screen_holm(table: pd.DataFrame, orders: dict) -> int:
    """Holm over the screen, one family per question it prints: every recipe-level Δ (PRINTED, every
    method and attribute: p_<s>_<attr> -> p_<s>_holm_<attr>, the family's size in holm_family), and
    every method's own gap (recipe_gap_<c>_p_<attr> -> recipe_gap_<c>_p_holm_<attr>, gap_holm_family).
    The model-level Δ (model_*) get their own over their Δ mean and ΔSD. Returns the Δ family's size."""
    from fairness.metrics import CLASSES
    from fairness.significance import holm

    def apply(columns: list[tuple[str, str]]) -> int:
        slots = [(m, c, h) for c, h in columns if c in table for m in table.index if pd.notna(table.loc[m, c])]
        for (m, _, h), value in zip(slots, holm([table.loc[m, c] for m, c, _ in slots])):
            table.loc[m, h] = value
        return len(slots)

    table["gap_holm_family"] = apply([(f"recipe_gap_{part}_p_{attr}", f"recipe_gap_{part}_p_holm_{attr}")
                                      for attr in orders for part in CLASSES])
    size = apply([(f"{_prefix(part)}p_{s}_{attr}", f"{_prefix(part)}p_{s}_holm_{attr}")
                  for attr in orders for part, s in PRINTED])
    table["holm_family"] = size
    apply([(f"model_p_{s}_{attr}", f"model_p_{s}_holm_{attr}") for attr in orders for s in ("mean", "sd")])
    return size


def print_gaps(table: pd.DataFrame, frames: dict, orders: dict, measure) -> None:
    """Each method's own gap, seeds as the unit: is this recipe biased?"""
    from fairness.metrics import CLASSES
    from fairness.report import format_p

    for attr in orders:
        rows = {}
        for name in table.index:
            row = {"runs": len(frames[name])}
            for part in CLASSES:
                g = lambda key: table.loc[name, f"recipe_gap_{part}{'' if key == 'gap' else '_' + key}_{attr}"]  # noqa: E731
                if pd.isna(g("gap")):
                    row[part] = "-"
                    continue
                pair = f"{g('first')} − {g('second')}"
                interval = f" [{g('lo'):+.1f}, {g('hi'):+.1f}]" if pd.notna(g("lo")) else ""
                test = (f" p {format_p(g('p'))}, Holm {format_p(table.loc[name, f'recipe_gap_{part}_p_holm_{attr}'])}"
                        if pd.notna(g("p")) else " (one run: no recipe-level test)")
                row[part] = f"{pair} {g('gap'):+.1f}{interval}{test}"
            rows[name] = row
        shown = pd.DataFrame.from_dict(rows, orient="index")
        shown.index.name = "method"
        family = int(table["gap_holm_family"].iloc[0]) if "gap_holm_family" in table else 0
        print(f"\neach RECIPE's own gap by {attr} ({measure.label} {measure.unit}; the seeds and the test cases are the "
              f"sample; the pair picked on the seed-averaged means, simultaneous over the pairs with more than two "
              f"groups; Holm over the {family} recipe gaps this screen prints):\n{shown.to_string()}")


def print_deltas(table: pd.DataFrame, frames: dict, orders: dict, args, measure) -> None:
    """The screen's Δ lines: the recipe question where every method has 2+ runs, else the model one,
    each named as such."""
    from fairness.report import delta_display, model_delta_display

    deltas = table.drop(index=args.baseline)
    family = int(table["holm_family"].iloc[0]) if "holm_family" in table else 0
    for attr in orders:
        if recipe_question(frames):
            runs = ", ".join(f"{m} {len(r)}" for m, r in frames.items())
            test = ("one between-seed variance pooled over the table's methods" if args.seed_variance == "pooled"
                    else "Welch across seeds")
            print(f"\nTHIS RECIPE against {args.baseline}'s, by {attr}: the seeds are the sample (runs: {runs}); "
                  f"{test}, the test cases' own sampling added (fairness/recipe.py); Holm over the {family} "
                  f"recipe-level tests this screen prints:\n{delta_display(deltas, attr, measure, PRINTED).to_string()}")
        else:
            short = [m for m, r in frames.items() if len(r) < 2]
            print(f"\nTHESE MODELS against {args.baseline}'s, by {attr}: the test cases are the sample and the trained "
                  f"models fixed (paired swap test); not an answer about the recipes: {', '.join(short)} "
                  f"{'has' if len(short) == 1 else 'have'} one run (train 2 or more seeds of each, 5 or more to detect "
                  f"a few points, then --compare again):\n{model_delta_display(deltas, attr, measure).to_string()}")
    if recipe_question(frames):
        print("(this model's comparison, the test cases as the sample and the trained models fixed, is in "
              "compare.csv's model_* columns: it does not say whether one recipe is fairer)")


def ties(frames: dict, leader: str, attr: str, statistic: str, orders: dict, args) -> str:
    """', not distinguishable from X (p 0.41)': the methods a test cannot tell from the leader, which
    point means alone would rank below it: the recipe-level test where every method has 2+ runs,
    else the paired (this model) one, named."""
    if recipe_question(frames):
        from fairness.recipe import recipe_ties
        same = recipe_ties(frames, leader, attr, statistic, order=orders[attr], measure=compare_metric(args))
        test = "recipe-level test, seeds as the unit, 5 %"
    else:
        from fairness.paired import indistinguishable
        same = indistinguishable(frames, leader, attr, statistic, order=orders[attr], n_boot=args.n_boot,
                                 seed=args.seed, measure=compare_metric(args))
        test = "paired swap test on these models, 5 %: not a recipe claim"
    if not same:
        return f", beyond noise from every other method ({test})"
    return ", not distinguishable from " + ", ".join(
        f"{m} (p {p:.2f})" if p == p else f"{m} (no test: fewer than 2 runs or 2 scored cases)"
        for m, p in same.items()) + f" ({test})"


def write_comparison(table, shown, frames, orders, methods, metric, suffix: str, out: Path, args) -> None:
    """The comparison's lines, trade-off figures and tables (compare.csv last: it marks it finished)."""
    from fairness.figures import tradeoff_plot
    from fairness.report import pareto_front, to_latex, to_markdown

    unit = f"{metric.label} {metric.unit}"
    print(f"\nmethods side by side ({unit} and SD in {metric.unit}: mean ± std over seeds):\n{shown.to_string()}")
    table = table.join(recipe_gap_columns(frames, orders, args))
    before = set(table.columns)
    if args.baseline is not None:
        table = table.join(delta_columns(frames, orders, args))
    screen_holm(table, orders)
    if args.baseline is not None:           # the first attribute's Δ columns also without its suffix
        first = next(iter(orders))
        plain = [c for c in table.columns if c not in before and c.endswith(f"_{first}")]
        table = table.join(table[plain].rename(columns=lambda c: c[:-len(first) - 1]))
    print_gaps(table, frames, orders, metric)
    if args.baseline is not None:
        print_deltas(table, frames, orders, args, metric)
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
    write_text(out / f"compare{suffix}.md", to_markdown(shown))
    write_text(out / f"compare{suffix}.tex", to_latex(shown, caption=f"{unit} and fairness, mean ± std over seeds"))
    write_csv(table, out / f"compare{suffix}.csv")
