"""The evidence tables of docs/evidence.md ("What the tool finds on its benchmark"), computed from the per-case tables
that bench/fairness_matrix.py wrote; it trains nothing and prints Markdown.

    python bench/evidence_report.py                        # docs/evidence/matrix_sex, matrix_sex_fairmeta,
                                                           # matrix_age, matrix_hidden, matrix_hidden_casemix
                                                           # (the kept tables: --keep; a part not kept is read
                                                           # from bench/out), and bench/out/real_anatomy
                                                           # (never kept: derived from real label maps)
    python bench/evidence_report.py --out bench/out/evidence.md
    python bench/evidence_report.py --sex DIR --sex-levers '' --age '' --hidden '' --hidden-casemix '' --real ''
                                                           # '' skips a part

Per method, over the seeds found (each table says how many):
  - the study's table form: Dice kidney / tumor / mean, SD and SER as mean ± std over seeds, and the
    mean Dice as a share of the baseline's;
  - the gap of the class the planted bias acts on, with one gap-test p per method (Welch; fairness/significance.py): the test is
    run on the per-case Dice averaged over the seeds (the test split is the same for every seed), so
    training noise is averaged out before the groups are compared (fairness/significance.py);
  - the paired Δ against the baseline over the same test cases, with its bootstrap CI, swap p and
    Holm's correction over the methods, computed here from the per-case tables (fairness/paired.py);
  - the twin effect: Dice of the affected test cases' unbiased twins minus their own, averaged
    over the cases and seeds (what the planted mechanism still costs that model at test time).
For a hidden subgroup (matrix_hidden_casemix): FairDRO's own claims, each a paired Δ against the
baseline with Holm over the three: the worst group's Dice, the hidden members' Dice, and the CVaR20
of the group that holds them (fairness/paired.py's paired_delta and paired_cvar).
For fair meta-learning's controls and levers (matrix_sex_fairmeta): the sex tables above, paired
against the baseline trained beside them (same cohort and seed), Holm over the levers.
For the real-anatomy cohort: the raw and case-mix adjusted sex and age gaps, beside the study's
Table 1 and Table 4 figures (SPEC §1).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.atomic import write_figure  # noqa: E402
from fairness.figures import tradeoff_plot  # noqa: E402
from fairness.report import format_p, to_markdown  # noqa: E402
from fairness.summary import fairness_summary  # noqa: E402
from fairness.significance import significance  # noqa: E402

OUT = ROOT / "bench" / "out"
KEPT = ROOT / "docs" / "evidence"
ORDER = {"sex": ["male", "female"], "age": None}
CONFIG_NAMES = {"baseline": "nnU-Net baseline", "resm": "RESM", "stratified": "stratified batches",
                "fairmeta": "fair meta-learning", "fairdro": "FairDRO", "dmoe_only": "FairDRO: dMoE only",
                "dro_only": "FairDRO: DRO only", "plain_moe_dro": "FairDRO: plain MoE + DRO", "unet": "U-Net",
                "vnet": "V-Net", "attention_unet": "Attention U-Net",
                "fairmeta_beta05": "fair meta-learning, β 0.5", "fairmeta_warmup": "fair meta-learning, L_cls warm-up",
                "fairmeta_image": "fair meta-learning, image-only classifier",
                "fairmeta_adversarial": "fair meta-learning, reversed gradient",
                "resm_mean": "RESM, mean target", "resm_2x": "RESM, twice the epochs"}
# SPEC §1, the study on real KiTS19 CT: the baseline's Table 1 and the architectures of Table 4
STUDY = {"baseline": {"kidney": 94.9, "tumor": 78.0, "mean": 86.5, "male": 84.2, "female": 88.9,
                      "SD sex": 2.32, "SER sex": 1.42, "SD age": 3.22, "SER age": 2.08,
                      "age best": 91.8, "age worst": 82.8},
         "attention_unet": {"kidney": 94.8, "tumor": 75.6, "mean": 85.2, "SD sex": 0.40, "SER sex": 1.06,
                            "SD age": 1.66, "SER age": 1.31}}


def pm(values: pd.Series, digits: int = 1) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def signed(value: float, digits: int = 1) -> str:
    return "-" if pd.isna(value) else f"{value:+.{digits}f}"


def name(method: str) -> str:
    return CONFIG_NAMES.get(method, method)


def read_runs(folder: Path, attribute: str = "") -> pd.DataFrame:
    path = folder / (f"runs_{attribute}.csv" if attribute else "runs.csv")
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing: run bench/fairness_matrix.py with --out {folder} first")
    return pd.read_csv(path)


def pooled_cases(folder: Path, method: str, seeds) -> pd.DataFrame:
    """Per-case Dice averaged over a method's seeds (metadata and volumes from the first seed's table)."""
    frames = [pd.read_csv(folder / "runs" / method / f"seed{s}" / "eval" / "per_case.csv").set_index("case_id")
              for s in seeds]
    pooled = frames[0].copy()
    for part in ("kidney", "tumor", "mean"):
        pooled[part] = pd.concat([f[part] for f in frames], axis=1).mean(axis=1)
    return pooled.reset_index()


def pooled_test(folder: Path, method: str, seeds, attribute: str) -> dict:
    """The gaps of the seed-averaged per-case Dice with the gap test's p and the adjusted mean-Dice gap,
    signed first minus second group for two groups, best minus worst otherwise."""
    cases = pooled_cases(folder, method, seeds)
    sig = significance(cases, attribute, order=ORDER[attribute], n_perm=5000, seed=0)
    means = cases.groupby(attribute)[["kidney", "tumor", "mean"]].mean()
    out = {}
    for part, key in (("mean", "gap"), ("kidney", "kidney_gap"), ("tumor", "tumor_gap")):
        if ORDER[attribute]:
            first, second = ORDER[attribute]
            out[part] = 100 * (means.loc[first, part] - means.loc[second, part])
        else:
            out[part] = 100 * sig[key]
        out[f"{part} p"] = sig[f"{key}_p"]
    sign = -1.0 if ORDER[attribute] and out["mean"] < 0 else 1.0
    lo, hi = sorted((sign * 100 * sig["gap_adjusted_lo"], sign * 100 * sig["gap_adjusted_hi"]))
    out.update({"adj": sign * 100 * sig["gap_adjusted"], "adj lo": lo, "adj hi": hi})
    return out


def run_frames(folder: Path, runs: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """Each method's per-case tables, one per seed, in the seeds' order."""
    return {method: [pd.read_csv(folder / "runs" / method / f"seed{s}" / "eval" / "per_case.csv")
                     for s in sorted(r["seed"])] for method, r in runs.groupby("method", sort=False)}


def recipe_deltas(folder: Path, runs: pd.DataFrame, attribute: str, part: str) -> pd.DataFrame:
    """Each recipe's Δ of `part`'s Dice against the baseline's, with the seeds as the unit
    (fairness_matrix.deltas_by_class: every statistic, p raw; the tables below Holm them as one family)."""
    from fairness_matrix import deltas_by_class

    frames = run_frames(folder, runs)
    if "baseline" not in frames or len(frames) < 2:
        return pd.DataFrame()
    return deltas_by_class(frames, attribute, part)


def delta_cell(deltas: pd.DataFrame, method: str, stat: str, holm_p: float, digits: int = 2) -> str:
    """'+0.31 [-0.52, +1.14] p 0.412 (Holm 1.000)', or '-'."""
    if method not in deltas.index or pd.isna(deltas.loc[method].get(f"delta_{stat}", np.nan)):
        return "-"
    row = deltas.loc[method]
    if pd.isna(row[f"p_{stat}"]):
        return f"{row[f'delta_{stat}']:+.{digits}f} (one run: no test)"
    return (f"{row[f'delta_{stat}']:+.{digits}f} [{row[f'delta_{stat}_lo']:+.{digits}f}, "
            f"{row[f'delta_{stat}_hi']:+.{digits}f}] p {format_p(row[f'p_{stat}'])} (Holm {format_p(holm_p)})")


def gap_cell(gap: dict, holm_p: float) -> str:
    if pd.isna(gap["gap"]):
        return "-"
    if pd.isna(gap["p"]):
        return f"{gap['gap']:+.1f} (one run: no test)"
    return f"{gap['gap']:+.1f} [{gap['lo']:+.1f}, {gap['hi']:+.1f}] p {format_p(gap['p'])} (Holm {format_p(holm_p)})"


def study_form(runs: pd.DataFrame, groups: list) -> pd.DataFrame:
    """The study's Tables 2-4: Dice and fairness, mean ± std over seeds, % of the baseline's mean Dice."""
    base = runs.loc[runs["method"] == "baseline", "mean"].mean()
    rows = {}
    for method, r in runs.groupby("method", sort=False):
        row = {"seeds": len(r), "kidney": pm(r["kidney"]), "tumor": pm(r["tumor"]), "mean": pm(r["mean"]),
               "% of baseline": f"{100 * r['mean'].mean() / base:.0f}" if pd.notna(base) else "-"}
        row.update({str(g): pm(r[str(g)]) for g in groups})
        row.update({"SD": pm(r["SD"], 2), "SER": pm(r["SER"], 2)})
        rows[name(method)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out


def evidence(folder: Path, runs: pd.DataFrame, attribute: str, part: str) -> pd.DataFrame:
    """The claims on the planted class `part`, every one with the seeds as the unit (fairness/recipe.py):
    each method's own gap (first minus second group for two groups, best minus worst otherwise; Holm
    over the methods' gaps: is each recipe biased?), and against the baseline its Δ part SD, Δ
    mean-Dice SD and Δ mean Dice (Holm over the table's Δ: one family), the detectable Δ part SD, and
    the twin effect."""
    from fairness.recipe import recipe_gap
    from fairness.significance import holm

    frames = run_frames(folder, runs)
    deltas, deltas_mean = recipe_deltas(folder, runs, attribute, part), recipe_deltas(folder, runs, attribute, "mean")
    gaps = {m: recipe_gap(f, attribute, metric=part, order=ORDER[attribute]) for m, f in frames.items()}
    pick = {"gap": lambda m: gaps[m]["p"], "sd": lambda m: deltas.loc[m, "p_sd"],
            "mean sd": lambda m: deltas_mean.loc[m, "p_sd"], "mean": lambda m: deltas_mean.loc[m, "p_mean"]}
    adjusted = {}
    for family in ([("gap", m) for m in gaps], [(key, m) for key in ("sd", "mean sd", "mean") for m in deltas.index]):
        adjusted.update(zip(family, holm([pick[k](m) for k, m in family])))
    rows = {}
    for method, r in runs.groupby("method", sort=False):
        row = {"seeds": len(r), f"{part} gap (recipe)": gap_cell(gaps[method], adjusted[("gap", method)]),
               f"Δ {part} SD vs baseline": delta_cell(deltas, method, "sd", adjusted.get(("sd", method))),
               "Δ mean-Dice SD vs baseline": delta_cell(deltas_mean, method, "sd", adjusted.get(("mean sd", method))),
               "Δ mean Dice vs baseline": delta_cell(deltas_mean, method, "mean", adjusted.get(("mean", method)), 1),
               f"detectable Δ {part} SD": (f"{deltas.loc[method, 'detectable_sd']:.2f}"
                                          if method in deltas.index and pd.notna(deltas.loc[method, "detectable_sd"])
                                          else "-")}
        if f"twin effect {part}" in r:
            row[f"twin effect ({part})"] = pm(r[f"twin effect {part}"])
        if "affected" in r:
            row["affected cases' mean Dice"] = pm(r["affected"])
        rows[name(method)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    out.attrs["family"] = sum(1 for (k, _), v in adjusted.items() if k != "gap" and pd.notna(v))
    out.attrs["gap_family"] = sum(1 for (k, _), v in adjusted.items() if k == "gap" and pd.notna(v))
    return out


def hidden_table(folder: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """FairDRO's own claim on the `hidden` preset: worst group, within-group CVaR, the hidden members;
    the Δ worst group with the seeds as the unit (Holm over the methods)."""
    from fairness.significance import holm

    deltas = recipe_deltas(folder, runs, "sex", "mean")
    adjusted = dict(zip(deltas.index, holm(deltas["p_worst"].tolist()))) if len(deltas) else {}
    rows = {}
    for method, r in runs.groupby("method", sort=False):
        rows[name(method)] = {"seeds": len(r), "mean": pm(r["mean"]), "worst group": pm(r["worst"]),
                              "worst CVaR20": pm(r["worst CVaR20"]), "ES-Dice": pm(r["ES-Dice"]),
                              "hidden members": pm(r["affected"]) if "affected" in r else "-",
                              "twin effect (members)": pm(r["twin effect mean"]) if "twin effect mean" in r else "-",
                              "Δ worst group vs baseline": delta_cell(deltas, method, "worst", adjusted.get(method),
                                                                      1)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out


def hidden_members(folder: Path) -> set:
    """The hidden subgroup's members of a matrix cohort: the kept cases.csv, or the cohort's kits.json."""
    if (folder / "cases.csv").is_file():
        cases = pd.read_csv(folder / "cases.csv")
        return set(cases.loc[cases["hidden_member"].astype(bool), "case_id"])
    from fairness_matrix import hidden_members as from_cohort

    return from_cohort(folder / "raw")


def fairdro_claims(folder: Path, runs: pd.DataFrame, method: str = "fairdro", attribute: str = "sex") -> pd.DataFrame:
    """FairDRO's three claims against the baseline on the same test cases: the worst group's Dice, the
    hidden members' Dice and the tail (CVaR20) of the group that holds them; each Δ (method − baseline,
    each the mean over its seeds) with the seeds as the unit (fairness/recipe.py: Welch across seeds,
    the test cases' sampling added), Holm over the three."""
    from fairness.recipe import recipe_delta, recipe_delta_of
    from fairness.significance import holm
    from fairness.tails import cvar, tail_size

    def frames(m):
        seeds = sorted(runs.loc[runs["method"] == m, "seed"])
        return [pd.read_csv(folder / "runs" / m / f"seed{s}" / "eval" / "per_case.csv") for s in seeds]

    base, other = frames("baseline"), frames(method)
    members = hidden_members(folder)
    test = set(base[0]["case_id"])
    held = sorted(members & test)
    group = base[0].loc[base[0]["case_id"].isin(held), attribute].iloc[0]
    group_ids = sorted(base[0].loc[base[0][attribute] == group, "case_id"])
    on = lambda fs, ids: [f[f["case_id"].isin(ids)] for f in fs]   # noqa: E731
    worst = recipe_delta(base, other, attribute, order=ORDER.get(attribute))
    member_means = lambda v: v.mean(axis=-1)   # noqa: E731
    values = lambda fs, ids: np.stack([f.set_index("case_id").loc[ids, "mean"].to_numpy(float) for f in fs])  # noqa: E731
    inside = {k: 100 * v if k in ("delta", "lo", "hi") else v
              for k, v in recipe_delta_of(member_means, values(base, held), values(other, held)).items()}
    k_tail = tail_size(len(group_ids), 0.2)
    tail_of = lambda v: np.sort(v, axis=-1)[..., :k_tail].mean(axis=-1)   # noqa: E731  the CVaR20 of each run
    tail = {k: 100 * v if k in ("delta", "lo", "hi") else v
            for k, v in recipe_delta_of(tail_of, values(base, group_ids), values(other, group_ids)).items()}

    def level(fs, ids, how):
        return pd.Series([how(f[f["case_id"].isin(ids)]) for f in fs])

    claims = [
        (f"worst group ({len(test)} cases)", worst["delta_worst"], worst["delta_worst_lo"], worst["delta_worst_hi"],
         worst["p_worst"]),
        (f"hidden members ({len(held)} {group} test cases)", inside["delta"], inside["lo"], inside["hi"], inside["p"]),
        (f"CVaR20 of the {group} cases ({len(group_ids)})", tail["delta"], tail["lo"], tail["hi"], tail["p"])]
    levels = {
        0: lambda fs: pd.Series([100 * f.groupby(attribute)["mean"].mean().min() for f in fs]),
        1: lambda fs: level(fs, held, lambda g: 100 * g["mean"].mean()),
        2: lambda fs: level(fs, group_ids, lambda g: 100 * cvar(g["mean"].to_numpy(), 0.2))}
    p_holm = holm([c[4] for c in claims])
    rows = {}
    for k, (label, delta, lo, hi, p) in enumerate(claims):
        rows[label] = {"nnU-Net baseline": pm(levels[k](base)), name(method): pm(levels[k](other)),
                       "Δ [95% CI]": f"{delta:+.1f} [{lo:+.1f}, {hi:+.1f}]", "p": format_p(p),
                       "Holm p (3 claims)": format_p(p_holm[k])}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "claim"
    return out


# SPEC §1's table: the study's SD of the group mean Dice, the baseline's and each method's (sex, age)
STUDY_SD = {"sex": {"baseline": 2.32, "fairmeta": 1.55, "stratified": 1.20, "resm": 0.75, "unet": 0.80,
                    "vnet": 1.25, "attention_unet": 0.40},
            "age": {"baseline": 3.22, "fairmeta": 3.24, "stratified": 3.33, "resm": 2.52, "unet": 0.88,
                    "vnet": 2.73, "attention_unet": 1.66}}


def seeds_for_study(folder: Path, runs: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """Seeds per method our matrix budget needs to detect each of the study's SD claims (its Δ SD
    against its baseline) with 80 % power at 5 %, from the between-seed spread of the per-run SD
    measured here (the baseline's and the method's, from their runs) and the test cases' part of
    this comparison (fairness.recipe.seeds_needed); and the smallest Δ SD that unlimited seeds would
    detect on these test cases (their own part alone)."""
    from fairness.recipe import detectable_delta, seeds_needed

    frames = run_frames(folder, runs)
    deltas = recipe_deltas(folder, runs, attribute, "mean")
    rows = {}
    base_sd = deltas["seed_sd_sd"].iloc[0] if len(deltas) else np.nan
    for method, study in STUDY_SD[attribute].items():
        if method == "baseline" or method not in frames:
            continue
        target = abs(study - STUDY_SD[attribute]["baseline"])
        row = deltas.loc[method] if method in deltas.index else None
        if row is None:
            continue
        # the two methods' between-seed SDs of the per-run SD, and the case part of this comparison
        own = pd.Series([run_sd(f, attribute) for f in frames[method]]).std(ddof=1)
        base = pd.Series([run_sd(f, attribute) for f in frames["baseline"]]).std(ddof=1)
        case_var = max(row["se_sd"] ** 2 - base ** 2 / len(frames["baseline"]) - own ** 2 / len(frames[method]), 0.0)
        needed = seeds_needed(base, own, case_var, target)
        rows[name(method)] = {"study's SD (baseline → method)": f"{STUDY_SD[attribute]['baseline']:.2f} → {study:.2f}",
                              "|Δ SD|": f"{target:.2f}", "seed SD of SD here (baseline, method)": f"{base:.2f}, {own:.2f}",
                              "test cases' part (SD)": f"{case_var ** 0.5:.2f}",
                              "detectable with unlimited seeds": f"{detectable_delta(case_var ** 0.5, 1e6, estimated=False):.2f}",
                              "seeds per method": "none: more test cases" if needed == np.inf else f"{needed:.0f}"}
    del base_sd
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out


def run_sd(per_case: pd.DataFrame, attribute: str) -> float:
    """One run's SD (ddof 0) of the group mean Dice, in points."""
    return 100 * float(per_case.groupby(attribute)["mean"].mean().std(ddof=0))


def real_table(folder: Path) -> pd.DataFrame:
    """Real anatomy, no planted bias: raw and adjusted sex and age gaps beside the study's."""
    by = {"sex": read_runs(folder), "age": read_runs(folder, "age")}
    rows = {}
    for method, r in by["sex"].groupby("method", sort=False):
        seeds = r["seed"].tolist()
        sex, age = pooled_test(folder, method, seeds, "sex"), pooled_test(folder, method, seeds, "age")
        a = by["age"][by["age"]["method"] == method]
        label = f"{name(method)} ({len(r)} seed{'s' if len(r) > 1 else ''})"
        rows[label] = {
            "kidney": pm(r["kidney"]), "tumor": pm(r["tumor"]), "mean": pm(r["mean"]),
            "male": pm(r["male"]), "female": pm(r["female"]), "SD sex": pm(r["SD"], 2), "SER sex": pm(r["SER"], 2),
            "gap m − f (p)": f"{signed(sex['mean'])} ({format_p(sex['mean p'])})",
            "adjusted m − f [95% CI]": f"{signed(sex['adj'])} [{signed(sex['adj lo'])}, {signed(sex['adj hi'])}]",
            "SD age": pm(a["SD"], 2), "SER age": pm(a["SER"], 2),
            "age gap best − worst (p)": f"{age['mean']:.1f} ({format_p(age['mean p'])})",
            "adjusted age gap [95% CI]": f"{signed(age['adj'])} [{signed(age['adj lo'])}, {signed(age['adj hi'])}]"}
        if method in STUDY:
            s = STUDY[method]
            study = {k: (f"{s[k]:.2f}" if k.startswith(("SD", "SER")) else f"{s[k]:.1f}") if k in s else "-"
                     for k in rows[label]}
            if "male" in s:
                study["gap m − f (p)"] = f"{s['male'] - s['female']:+.1f}"
                study["age gap best − worst (p)"] = f"{s['age best'] - s['age worst']:.1f}"
            rows[f"{name(method)}, study (real CT)"] = study
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    return out


def recipe_note(runs: pd.DataFrame, family: int | None = None, gap_family: int | None = None) -> str:
    """What the gap and Δ columns answer: the recipe question, over which seeds, Holm over what."""
    counts = sorted(set(runs.groupby("method")["seed"].size()))
    holm = (f"; Holm over the table's {gap_family} recipe gaps, and over its {family} Δ" if family else "")
    return (f"each recipe's gap and Δ with the seeds as the unit ({' or '.join(map(str, counts))} seeds per method; "
            f"Welch across seeds with the test cases' own sampling added, fairness/recipe.py){holm}")


def evidence_parts(folder: Path, runs: pd.DataFrame, attribute: str, part: str) -> list[str]:
    table = evidence(folder, runs, attribute, part)
    parts = [to_markdown(table), recipe_note(runs, table.attrs.get("family"), table.attrs.get("gap_family")) + "\n"]
    seeds = seeds_for_study(folder, runs, attribute)
    if len(seeds):
        parts += [f"Seeds per method to detect the study's own SD claims by {attribute} (80 % power at 5 %) at this "
                  "budget, from the spreads measured here:", to_markdown(seeds)]
    return parts


def class_tradeoff(folder: Path, runs: pd.DataFrame, attribute: str, part: str, path: Path) -> None:
    """The trade-off figure with the fairness of one class (SD and SER of its group means, per seed)
    against the mean Dice: a bias planted in one class can hide in the mean's fairness."""
    rows = {}
    for method, r in runs.groupby("method", sort=False):
        figures = []
        for seed in r["seed"]:
            cases = pd.read_csv(folder / "runs" / method / f"seed{seed}" / "eval" / "per_case.csv")
            figures.append(fairness_summary(cases.groupby(attribute)[part].mean().to_dict(), scale="fraction"))
        sd, ser = pd.Series([100 * f["sd"] for f in figures]), pd.Series([f["ser"] for f in figures])
        rows[method] = {"mean": r["mean"].mean(), "mean_std": r["mean"].std(ddof=1), f"sd_{attribute}": sd.mean(),
                        f"sd_{attribute}_std": sd.std(ddof=1), f"ser_{attribute}": ser.mean(),
                        f"ser_{attribute}_std": ser.std(ddof=1)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    write_figure(path, tradeoff_plot(table, attribute, fairness_of=part, title=(
        f"Mean Dice against the fairness of the {part} Dice by {attribute} (mean ± std over seeds)")))


def seeds_line(runs: pd.DataFrame) -> str:
    counts = runs.groupby("method", sort=False)["seed"].apply(lambda s: " ".join(map(str, sorted(s))))
    return "seeds per method: " + "; ".join(f"{name(m)} {s}" for m, s in counts.items())


def sections(args) -> list[str]:
    out = []
    for folder, title in ((args.sex, "Sex"), (args.sex_levers, "Fair meta-learning's levers")):
        if folder:   # the poor protocol acts on the kidney Dice
            runs = read_runs(folder)
            out += [f"### {title}: `poor_protocol_female` ({seeds_line(runs)})",
                    to_markdown(study_form(runs, ["male", "female"])),
                    *evidence_parts(folder, runs, "sex", "kidney")]
    if args.sex and args.figure:
        class_tradeoff(args.sex, read_runs(args.sex), "sex", "kidney", args.figure)
    if args.age:
        runs = read_runs(args.age)
        groups = [c for c in ("[0,50)", "[50,60)", "[60,70)", ">=70") if c in runs]
        out += [f"### Age: `small_tumors_young` ({seeds_line(runs)})",
                to_markdown(study_form(runs, groups)), *evidence_parts(args.age, runs, "age", "tumor")]
    if args.hidden:
        runs = read_runs(args.hidden)
        out += [f"### Hidden failure: `hidden_female` ({seeds_line(runs)})", to_markdown(hidden_table(args.hidden, runs)),
                recipe_note(runs) + "\n"]
    if args.hidden_casemix:
        runs = read_runs(args.hidden_casemix)
        out += [f"### Hidden case mix: `hidden_small_tumors_female` ({seeds_line(runs)})",
                to_markdown(hidden_table(args.hidden_casemix, runs)),
                "FairDRO's claims, paired against the baseline on the same test cases:",
                to_markdown(fairdro_claims(args.hidden_casemix, runs)) + "\n"]
    if args.real:
        out += [f"### Real anatomy ({seeds_line(read_runs(args.real))})", to_markdown(real_table(args.real))]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    folder = lambda s: Path(s) if s else None  # noqa: E731  ('' skips a part)
    kept = lambda name: KEPT / name if (KEPT / name).is_dir() else OUT / name  # noqa: E731
    p.add_argument("--sex", type=folder, default=kept("matrix_sex"))
    p.add_argument("--sex-levers", type=folder, default=kept("matrix_sex_fairmeta"),
                   help="fair meta-learning's controls and levers on the sex cohort, with their own baseline")
    p.add_argument("--age", type=folder, default=kept("matrix_age"))
    p.add_argument("--hidden", type=folder, default=kept("matrix_hidden"))
    p.add_argument("--hidden-casemix", type=folder, default=kept("matrix_hidden_casemix"),
                   help="the hidden case-mix matrix (configs/bias/hidden_small_tumors_female.yaml), with FairDRO's "
                        "claims tested")
    p.add_argument("--real", type=folder, default=OUT / "real_anatomy")
    p.add_argument("--out", type=Path, help="also write the Markdown here")
    p.add_argument("--figure", type=Path, help="write the sex matrix's trade-off figure on the kidney Dice here (PNG)")
    args = p.parse_args(argv)
    for part in ("sex", "sex_levers", "age", "hidden", "hidden_casemix", "real"):   # a default folder not there: skipped
        folder = getattr(args, part)
        if folder is not None and folder == p.get_default(part) and not (folder / "runs.csv").is_file():
            print(f"note: no {part.replace('_', '-')} tables at {folder.relative_to(ROOT)}; skipped (see docs/evidence.md's "
                  "commands)", file=sys.stderr)
            setattr(args, part, None)
    text = "\n".join(sections(args))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
