"""The study's mitigation matrix at CPU size: every shipped mitigation and architecture config,
trained at one budget on one procedural cohort, several seeds, audited by one attribute.

    python bench/fairness_matrix.py                                  # the matrix budget, seed 0 (~60 min)
    python bench/fairness_matrix.py --seeds 0 1 2 --bias configs/bias/small_tumors_female.yaml
    python bench/fairness_matrix.py --methods baseline resm_sex --epochs 10 --cases 24 --test 10   # a quick look
    # real anatomy: a cohort synthesised around the 210 real label maps, the study's plain 160/50 split
    python bench/fairness_matrix.py --raw bench/out/real_anatomy/raw --stratify none --test 50 --epochs 16 \
        --methods baseline attention_unet --seeds 0 1 2 --also age --out bench/out/real_anatomy

The budget (the defaults): configs/demo.yaml's recipe (kidney field of view, nnU-Net 8 -> 64
features, AdamW 3e-3 poly, batch Dice, bf16 where native) on 72 procedural cases, 40 test cases
stratified by the attribute, 80 epochs of 16 steps (1280 steps, about 5 minutes a run on 2 cores).
The cohort carries the bias of --bias only (default: none; the demo's own planted bias is not used).

Each method is a shipped config (configs/resm_sex.yaml, ...) with extra settings: its model name,
sampler and fairness sections are laid over the demo recipe, so the methods differ only in what
their config changes; the cohort, the split, the seeds and the budget are the same. Runs go to
--out/runs/METHOD/seedK via train.py; a finished run (eval/per_case.csv) is reused, so a
re-issued command resumes by run. A run folder without a result is an interrupted run: it is
continued with train.py --resume (one stopped before its first last.pt is named, to be removed).
Variants outside the default list change one setting of a config (fairmeta_beta05, resm_mean, ...;
resm_2x trains RESM for twice the epochs: its min target makes shorter epochs).

Per run: kidney / tumor / mean Dice of the test split, per-group mean Dice, SD, SER, worst group,
ES-Dice, worst-group CVaR20, the gap (male - female for sex, best - worst group otherwise) of mean,
kidney and tumor Dice with their gap-test p-values (fairness/significance.py), and the wall
minutes. With --bias, also the mean Dice of the test cases the bias acts on ("affected": for
`hidden`, the members) and the twin effect: each run's last.pt scored by evaluate.py on the affected
test cases and on their twins (the cohort synthesised without the bias, OUT/raw_null: same plans,
same draws), Dice(twin) - Dice(case) averaged: what the mechanism costs that model at test time.

After the runs: summary (mean +- std over seeds, and each method's mean Dice as a share of the
baseline's: a mitigation that kills the segmenter is "fair" and useless), then
`evaluate.py --compare OUT/runs/* --baseline baseline` (side-by-side table, each recipe's own gap and
its Δ against the baseline with the seeds as the unit, Holm over the screen, the trade-off figure,
in OUT/compare), and the same recipe-level Δ on kidney and tumor Dice alone (a planted bias may act
on one class). Writes runs.csv, summary.csv/md, recipe_kidney.csv/md, recipe_tumor.csv/md and
compare/ under --out. The A/A control (`baseline_aa`: the baseline's recipe on seeds K + 100) is a
method like the others: a recipe-level test must find nothing there.

With --keep DIR (procedural cohorts only), the evidence behind the tables is also copied to DIR, in
--out's own layout so that bench/evidence_report.py reads either: runs.csv (runs_<attr>.csv), each
run's per-case table (runs/METHOD/seedK/eval/per_case.csv) and its twins' (eval/twin_*/per_case.csv),
and cases.csv (which cases the bias acts on, and the hidden members). A few KB a run: docs/evidence.md's
evidence tables are regenerated from docs/evidence/ without training.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import run_logged  # noqa: E402
from config import load_config  # noqa: E402
from fairness.audit import audit_groups  # noqa: E402
from fairness.recipe import recipe_delta  # noqa: E402
from fairness.significance import holm  # noqa: E402
from fairness.report import to_markdown  # noqa: E402

ATTRIBUTE_ORDER = {"sex": ["male", "female"], "age": None}

# method -> "config.yaml [section.key=value ...]"; ATTR in the spec becomes the attribute
METHODS = {
    "baseline": "baseline_nnunet.yaml",
    "resm": "resm_ATTR.yaml",
    "stratified": "stratified_ATTR.yaml",
    "fairmeta": "fairmeta_ATTR.yaml",
    "fairdro": "fairdro_ATTR.yaml",
    "dmoe_only": "fairdro_sex_dmoe_only.yaml fairness.attribute=ATTR",
    "dro_only": "fairdro_sex_dro_only.yaml fairness.attribute=ATTR",
    "plain_moe_dro": "fairdro_sex_plain_moe.yaml fairness.attribute=ATTR",
    "unet": "unet.yaml",
    "vnet": "vnet.yaml",
    "attention_unet": "attention_unet.yaml",
    # variants, not in the default list
    "fairmeta_image": "fairmeta_ATTR.yaml fairness.fairmeta.input=image",  # control: L_cls cannot reach the segmenter
    "fairmeta_adversarial": "fairmeta_ATTR.yaml fairness.fairmeta.adversarial=true",  # the segmenter works against L_cls
    "fairmeta_warmup": "fairmeta_ATTR.yaml fairness.fairmeta.cls_warmup=0.5",     # lever: L_cls ramps in over half the run
    "fairmeta_beta05": "fairmeta_ATTR.yaml fairness.fairmeta.cls_weight=0.5",     # lever: a quarter of the study's beta
    "resm_mean": "resm_ATTR.yaml fairness.resm.target=mean",   # lever: groups resampled to the mean size,
                                                               # so an epoch is the cohort's and the steps the baseline's
    "resm_2x": "resm_ATTR.yaml",                               # lever: the study's min target for twice the epochs
    "fairdro_study": "fairdro_ATTR.yaml fairness.dro.warmup=0.0",            # DRO from the first step
    "dro_only_study": "fairdro_sex_dro_only.yaml fairness.attribute=ATTR fairness.dro.warmup=0.0",
    # the A/A control: the baseline's recipe trained on other seeds (train.seed = seed + SEED_OFFSET),
    # compared with the baseline as any method is: a recipe-level test must find nothing here
    "baseline_aa": "baseline_nnunet.yaml",
}
DEFAULT_METHODS = ["baseline", "resm", "stratified", "fairmeta", "fairdro", "dmoe_only", "dro_only",
                   "plain_moe_dro", "unet", "vnet", "attention_unet"]
# the model keys a method's config may change; widths stay the recipe's so only the design differs
MODEL_KEYS = ("name", "deep_supervision")
# stratified batches need a batch divisible by the groups: the study's batch 4 (one case per age group)
# where the recipe's 2 does not divide; the same epochs, so the same patches seen, in half the steps
BATCH_OVERRIDES = {("stratified", "age"): ["train.batch_size=4"]}
# RESM's min target shrinks the epoch to (groups x the smallest group) cases, so at the same epochs it
# takes fewer steps than the baseline (sex 1040 of 1280, age 640). nnU-Net's epochs are a fixed number
# of iterations, so the study's RESM did not; this variant gives it twice the epochs.
EPOCH_FACTOR = {"resm_2x": 2}
# the A/A control's runs are seeds the baseline never uses: runs/baseline_aa/seedK trains train.seed K + 100
SEED_OFFSET = {"baseline_aa": 100}


def method_overrides(spec: str, attribute: str) -> list[str]:
    """The model name, sampler and fairness sections of a shipped config, as --set overrides."""
    config_name, *extra = spec.replace("ATTR", attribute).split()
    cfg = load_config(ROOT / "configs" / config_name, extra)
    sets = [f"model.{k}={json.dumps(cfg['model'][k])}" for k in MODEL_KEYS if k in cfg["model"]]
    sets += [f"sampler.{k}={json.dumps(v)}" for k, v in cfg["sampler"].items()]
    for k, v in cfg["fairness"].items():
        if isinstance(v, dict):
            sets += [f"fairness.{k}.{kk}={json.dumps(vv)}" for kk, vv in v.items()]
        else:
            sets.append(f"fairness.{k}={json.dumps(v)}")
    return sets


def train_run(method: str, seed: int, args) -> Path:
    """Train (or continue) one run; its folder."""
    run = args.out / "runs" / method / f"seed{seed}"
    if (run / "eval" / "per_case.csv").is_file():
        return run
    log = args.out / "logs" / f"{method}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs * EPOCH_FACTOR.get(method, 1)
    if (run / "last.pt").is_file():
        cmd = [sys.executable, "train.py", "--resume", str(run), "--no-progress"]
        what = "continuing"
    elif run.exists():   # train.py refuses an existing folder; say why here, not only in the log
        sys.exit(f"error: {run} exists without last.pt (stopped before its first checkpoint); remove it "
                 "and re-issue the command")
    else:
        cmd = [sys.executable, "train.py", "--config", args.config, "--name", f"{method}/seed{seed}", "--no-progress"]
        batch = BATCH_OVERRIDES.get((method, args.attribute), [])
        for s in (common_overrides(args, seed + SEED_OFFSET.get(method, 0)) + method_overrides(METHODS[method], args.attribute) + batch
                  + [f"train.epochs={epochs}", f"eval.every={epochs}", steps_override(args, batch)]):
            cmd += ["--set", s]
        what = "training"
    print(f"== {method} seed {seed}: {what} {epochs} epochs (log {log})", flush=True)
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not (run / "eval" / "per_case.csv").is_file():
        sys.exit(f"error: {method} seed {seed} failed (exit {done.returncode}); see {log}")
    print(f"   done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return run


def common_overrides(args, seed: int) -> list[str]:
    stratify = args.attribute if args.stratify is None else ("null" if args.stratify == "none" else args.stratify)
    sets = [f"data.raw={args.raw or args.out / 'raw'}", f"data.cache={args.out / 'cache'}",
            f"data.synthesize_cases={0 if args.raw else args.cases}", f"data.test={args.test}",
            f"data.stratify={stratify}", f"train.out_dir={args.out / 'runs'}", f"train.epochs={args.epochs}",
            f"train.seed={seed}", f"eval.every={args.epochs}", "train.log_every=1000",
            f"data.synthesize_bias={args.bias if args.bias is not None else 'null'}"]  # not the recipe's own
    return sets


def steps_override(args, batch_override: list[str]) -> str:
    """train.steps_per_epoch for one run: `equal` gives every method ceil(training cases / its batch)
    steps an epoch, whatever its sampler draws (RESM's min target would train fewer: 1040 of 1280 for
    sex, 640 for age); `pass` leaves an epoch one pass over what the sampler draws (how the evidence
    tables of before 2026-12-02 were trained)."""
    if args.steps_per_epoch == "pass":
        return "train.steps_per_epoch=null"
    from data.splits import make_split

    recipe = load_config(ROOT / args.config, batch_override)
    total = len(json.loads((args.raw / "kits.json").read_text())) if args.raw is not None else args.cases
    train = len(make_split([f"c{i}" for i in range(total)], test=args.test, val=recipe["data"]["val"])["train"])
    return f"train.steps_per_epoch={-(-train // recipe['train']['batch_size'])}"


def run_row(method: str, seed: int, run: Path, attribute: str) -> dict:
    per_case = pd.read_csv(run / "eval" / "per_case.csv")
    audit = audit_groups(per_case, attribute, order=ATTRIBUTE_ORDER.get(attribute))
    t, s, sig = audit.table, audit.summary, audit.significance
    groups = [g for g in t.index if g != "all"]
    row = {"method": method, "seed": seed, "kidney": 100 * t.loc["all", "kidney"],
           "tumor": 100 * t.loc["all", "tumor"], "mean": 100 * t.loc["all", "mean"]}
    row.update({str(g): 100 * t.loc[g, "mean"] for g in groups})
    row.update({"SD": 100 * s["sd"], "SER": s["ser"], "worst": 100 * s["worst"], "ES-Dice": 100 * s["es_dice"],
                "worst CVaR20": 100 * min(audit.cvar.values()),
                "gap": signed_gap(t, groups, "mean", sig["gap"]), "gap p": sig["gap_p"]})
    # significance's adjusted gap is raw-best minus raw-worst group: signed like `gap` with two groups
    sign = -1.0 if len(groups) == 2 and row["gap"] < 0 else 1.0
    lo, hi = sorted((sign * adjusted(sig, "_lo"), sign * adjusted(sig, "_hi")))
    row.update({"gap adj": sign * adjusted(sig, ""), "gap adj lo": lo, "gap adj hi": hi})
    for part in ("kidney", "tumor"):      # a planted bias may act on one class only
        row.update({f"{part} gap": signed_gap(t, groups, part, sig[f"{part}_gap"]),
                    f"{part} gap p": sig[f"{part}_gap_p"]})
    row["minutes"] = run_minutes(run)
    return row


def adjusted(sig: dict, end: str) -> float:
    """The gap adjusted for case mix (fairness/adjusted.py: log tumor and kidney volume, BMI) in
    points: the raw best group minus the raw worst one."""
    return 100 * sig[f"gap_adjusted{end}"]


def signed_gap(table: pd.DataFrame, groups: list, column: str, unsigned: float) -> float:
    """First group minus second (male - female) with two groups; best minus worst with more."""
    if len(groups) == 2:
        return 100 * (table.loc[groups[0], column] - table.loc[groups[1], column])
    return 100 * unsigned


def run_minutes(run: Path) -> float:
    """Training + test time of a run: config.yaml is written first, eval/per_case.csv last."""
    return ((run / "eval" / "per_case.csv").stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 60


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """mean +- std over seeds per method, and mean Dice as a share of the baseline's."""
    numeric = [c for c in runs.columns if c not in ("method", "seed")]
    grouped = runs.groupby("method", sort=False)
    mean, std = grouped[numeric].mean(), grouped[numeric].std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    out["seeds"] = grouped.size()
    for col in numeric:
        out[col] = [_pm(m, s, col) for m, s in zip(mean[col], std[col])]
    if "baseline" in mean.index:
        out["% of baseline"] = (100 * mean["mean"] / mean.loc["baseline", "mean"]).round(0).astype(int)
    return out


def _pm(mean: float, std: float, col: str) -> str:
    digits = 3 if col.endswith(" p") else 2 if col == "SER" else 1
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def compare_methods(args, methods: list[str]) -> Path:
    """evaluate.py --compare over the method folders: the side-by-side table, the recipe-level Δ against
    the baseline with Holm's correction, and the trade-off figure (what a user runs on their own runs)."""
    out = args.out / "compare"
    cmd = [sys.executable, "evaluate.py", "--compare", *[args.out / "runs" / m for m in methods],
           "--group", args.attribute, "--out", out, "--overwrite", "--source", "train"]
    if "baseline" in methods:
        cmd += ["--baseline", "baseline"]
    print(f"== comparing {len(methods)} methods: python {' '.join(map(str, cmd[1:]))}", flush=True)
    run_logged(cmd, args.out / "logs" / "compare.log")
    return out


def deltas_by_class(frames: dict[str, list[pd.DataFrame]], attribute: str, part: str) -> pd.DataFrame:
    """The recipe-level Δ against the baseline on one class's Dice (fairness/recipe.py: the seeds as the
    unit; every statistic), one row per method, with the runs of each side, Holm over the methods x
    (ΔSD, Δ mean): p_sd_holm, p_mean_holm. A method of one run, or a baseline of one, has NaN p's."""
    rows = {m: recipe_delta(frames["baseline"], runs, attribute, metric=part, order=ATTRIBUTE_ORDER.get(attribute))
            for m, runs in frames.items() if m != "baseline"}
    deltas = pd.DataFrame.from_dict(rows, orient="index")
    adjusted = holm(deltas["p_sd"].tolist() + deltas["p_mean"].tolist())
    deltas["p_sd_holm"], deltas["p_mean_holm"] = adjusted[:len(deltas)], adjusted[len(deltas):]
    return deltas


def deltas_display(deltas: pd.DataFrame) -> pd.DataFrame:
    """Δ [CI] (Holm p) of the mean Dice and the SD, and the detectable ΔSD, per method."""
    from fairness.report import format_p

    def cell(row, s, digits):
        if pd.isna(row[f"delta_{s}"]):
            return "-"
        interval = f" [{row[f'delta_{s}_lo']:+.{digits}f}, {row[f'delta_{s}_hi']:+.{digits}f}]" \
            if pd.notna(row[f"delta_{s}_lo"]) else ""
        return f"{row[f'delta_{s}']:+.{digits}f}{interval} (Holm p {format_p(row[f'p_{s}_holm'])})"

    return pd.DataFrame({"runs": [f"{r['runs_method']} vs {r['runs_baseline']}" for _, r in deltas.iterrows()],
                         "Δ mean Dice": [cell(r, "mean", 1) for _, r in deltas.iterrows()],
                         "ΔSD": [cell(r, "sd", 2) for _, r in deltas.iterrows()],
                         "detectable ΔSD": [f"{v:.2f}" if pd.notna(v) else "-" for v in deltas["detectable_sd"]]},
                        index=deltas.index)


def affected_cases(raw: Path) -> set[str]:
    """The cases whose files the planted bias changed (kits.json synthetic_bias): those with a twin."""
    cases = json.loads((raw / "kits.json").read_text())
    return {c["case_id"] for c in cases
            if any(k not in ("share", "hidden") for k in (c.get("synthetic_bias") or {}))}


def hidden_members(raw: Path) -> set[str]:
    """The hidden subgroup's members (kits.json synthetic_bias.hidden.member): FairDRO's own claim."""
    cases = json.loads((raw / "kits.json").read_text())
    return {c["case_id"] for c in cases if ((c.get("synthetic_bias") or {}).get("hidden") or {}).get("member")}


def merged_runs(kept: Path, new: pd.DataFrame) -> pd.DataFrame:
    """The kept runs table with this command's runs laid over it: a run kept by an earlier command
    (another --out, other --methods) stays, one retrained here is replaced."""
    if not kept.is_file():
        return new
    old = pd.read_csv(kept)
    fresh = set(zip(new["method"], new["seed"]))
    old = old[[(m, s) not in fresh for m, s in zip(old["method"], old["seed"])]]
    return pd.concat([old, new], ignore_index=True)


def keep_evidence(args, rows: list[dict]) -> None:
    """Copy what docs/evidence.md's tables are computed from into --keep (see the module docstring)."""
    from data.atomic import atomic_write, write_csv

    keep = args.keep.resolve()
    keep.mkdir(parents=True, exist_ok=True)
    for table in ["runs.csv", *[f"runs_{a}.csv" for a in args.also]]:
        write_csv(merged_runs(keep / table, pd.read_csv(args.out / table)), keep / table, index=False)
    for row in rows:
        run = args.out / "runs" / row["method"] / f"seed{row['seed']}"
        for table in [run / "eval" / "per_case.csv", *sorted(run.glob("eval/twin_*/per_case.csv"))]:
            target = keep / table.relative_to(args.out)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda tmp, t=table: shutil.copyfile(t, tmp))
    if args.bias is not None:
        raw = args.out / "raw"
        affected, members = affected_cases(raw), hidden_members(raw)
        ids = sorted(affected | members)
        write_csv(pd.DataFrame({"case_id": ids, "affected": [c in affected for c in ids],
                                "hidden_member": [c in members for c in ids]}), keep / "cases.csv", index=False)
    print(f"evidence tables kept -> {keep}")


def null_cohort(args) -> Path:
    """The cohort synthesised without its bias: each affected case's twin (same plan, same draws)."""
    raw = args.out / "raw_null"
    if not (raw / "kits.json").is_file():
        data = load_config(ROOT / args.config)["data"]
        cmd = [sys.executable, "preprocess.py", "synthesize", "--out", raw, "--cases", args.cases,
               "--fov", data["synthesize_fov"], "--seed", data["synthesize_seed"],
               "--bias", ROOT / "configs" / "bias" / "none.yaml", "--no-progress"]
        print(f"== synthesising the twins: the cohort without its bias ({raw})", flush=True)
        run_logged(cmd, args.out / "logs" / "twins.log")
    return raw


def twin_effect(run: Path, cases: list[str], null_raw: Path, log: Path) -> dict:
    """Dice of the affected test cases' twins minus their own (evaluate.py --ckpt last.pt, original
    geometry, both sides): what the planted mechanism costs this model at test time, case by case."""
    scores = {}
    for name, extra in (("biased", []), ("twins", ["--data", null_raw])):
        out = run / "eval" / f"twin_{name}"
        if not (out / "per_case.csv").is_file():
            run_logged([sys.executable, "evaluate.py", "--ckpt", run / "last.pt", "--cases", ",".join(cases),
                        "--out", out, "--overwrite", "--group", "sex", "--no-progress", "--n-boot", "200", *extra], log)
        scores[name] = pd.read_csv(out / "per_case.csv").set_index("case_id").loc[cases]
    row = {"twin n": len(cases)}
    for part in ("mean", "kidney", "tumor"):
        effect = 100 * (scores["twins"][part] - scores["biased"][part])
        row[f"twin effect {part}"] = float(effect.mean())
    row["twin effect better"] = int((scores["twins"]["mean"] > scores["biased"]["mean"]).sum())
    return row


def write_table(frame: pd.DataFrame, stem: Path, header: str) -> None:
    frame.to_csv(stem.with_suffix(".csv"))
    stem.with_suffix(".md").write_text(header + "\n\n" + to_markdown(frame))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fairness_matrix")
    p.add_argument("--config", default="configs/matrix.yaml", help="the training recipe (default: configs/matrix.yaml, the demo's recipe of 2026-12-02)")
    p.add_argument("--attribute", default="sex", choices=sorted(ATTRIBUTE_ORDER))
    p.add_argument("--bias", type=Path, help="a bias file planted in the cohort (default: none)")
    p.add_argument("--raw", type=Path, help="train on this KiTS-layout cohort instead of a procedural one (e.g. "
                   "synthesised around the real label maps: preprocess.py synthesize --from-labels)")
    p.add_argument("--stratify", help="split stratified by this attribute (default: --attribute); none: a plain "
                   "seeded split, the study's")
    p.add_argument("--also", nargs="+", default=[], choices=sorted(ATTRIBUTE_ORDER),
                   help="audit the same runs by these attributes too (summary_<attr>.md each)")
    p.add_argument("--cases", type=int, default=72, help="procedural cohort size (72)")
    p.add_argument("--test", type=int, default=40, help="test cases, stratified by the attribute (40)")
    p.add_argument("--epochs", type=int, default=80, help="epochs of ceil(train cases / batch) steps (80)")
    p.add_argument("--steps-per-epoch", choices=["equal", "pass"], default="equal",
                   help="equal (default): every method trains ceil(train cases / batch) steps an epoch, so the "
                        "same steps; pass: an epoch is one pass over what the sampler draws (RESM's min target "
                        "then trains fewer steps; the evidence tables measured before 2026-12-02)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--no-twins", dest="twins", action="store_false",
                   help="with --bias: skip scoring each run on the affected test cases' unbiased twins")
    p.add_argument("--keep", type=Path, help="also copy the per-case tables behind the evidence tables here "
                   "(e.g. docs/evidence/matrix_sex; procedural cohorts only)")
    args = p.parse_args(argv)
    if args.keep is not None and args.raw is not None:
        p.error("--keep holds procedural cohorts only: a --raw cohort may be derived from data that must not be "
                "committed (the real KiTS19 label maps)")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bias is not None:
        args.bias = args.bias.resolve()
    if args.raw is not None:
        args.raw = args.raw.resolve()
    rows, frames = [], {}
    for seed in args.seeds:
        for method in args.methods:
            run = train_run(method, seed, args)
            rows.append(run_row(method, seed, run, args.attribute))
            frames.setdefault(method, []).append(pd.read_csv(run / "eval" / "per_case.csv"))
            pd.DataFrame(rows).to_csv(args.out / "runs.csv", index=False)
    if args.bias is not None:
        affected = affected_cases(args.out / "raw")
        for row in rows:   # the cases the bias acts on (for `hidden`, the members: FairDRO's own claim)
            frame = frames[row["method"]][args.seeds.index(row["seed"])]
            row["affected"] = 100 * frame.loc[frame["case_id"].isin(affected), "mean"].mean()
    if args.bias is not None and args.twins:
        null_raw = null_cohort(args)
        for row in rows:
            run = args.out / "runs" / row["method"] / f"seed{row['seed']}"
            test = pd.read_csv(run / "eval" / "per_case.csv")["case_id"]
            cases = sorted(set(test) & affected)
            print(f"== {row['method']} seed {row['seed']}: scoring {len(cases)} affected test cases and their twins",
                  flush=True)
            row.update(twin_effect(run, cases, null_raw, args.out / "logs" / "twins.log"))
        pd.DataFrame(rows).to_csv(args.out / "runs.csv", index=False)
    runs = pd.DataFrame(rows)
    bias = args.bias.name if args.bias is not None else "none"
    order = ATTRIBUTE_ORDER.get(args.attribute)
    gap = f"{order[0]} - {order[1]}" if order else "best - worst group"
    cohort = f"cohort {args.raw}" if args.raw else f"procedural cohort: {args.cases} cases"
    split = "a plain seeded split" if args.stratify == "none" else f"stratified by {args.stratify or args.attribute}"
    header = (f"{cohort}, bias {bias}, {args.test} test cases, {split}, {args.epochs} epochs per run, seeds {' '.join(map(str, args.seeds))}; "
              f"Dice in %, SD in Dice %, gap = {gap}")
    summary = summarise(runs)
    write_table(summary, args.out / "summary", header)
    print("\n" + header + "\n")
    print(summary.to_string())
    if "baseline" in frames and len(frames) > 1:
        compare_methods(args, list(frames))
        for part in ("kidney", "tumor"):
            deltas = deltas_by_class(frames, args.attribute, part)
            write_table(deltas, args.out / f"recipe_{part}",
                        f"{part} Dice, each recipe against the baseline's with the seeds as the unit (Welch across "
                        f"seeds, the test cases' sampling added), Holm over {len(deltas)} methods x (ΔSD, Δ mean)")
            print(f"\n{part} Dice, THIS RECIPE against the baseline's (seeds as the sample):\n"
                  f"{deltas_display(deltas).to_string()}")
    for attribute in args.also:
        extra = pd.DataFrame([run_row(r["method"], r["seed"], args.out / "runs" / r["method"] / f"seed{r['seed']}",
                                      attribute) for r in rows])
        extra.to_csv(args.out / f"runs_{attribute}.csv", index=False)
        order = ATTRIBUTE_ORDER.get(attribute)
        gap = f"{order[0]} - {order[1]}" if order else "best - worst group"
        write_table(summarise(extra), args.out / f"summary_{attribute}",
                    header.rsplit("gap = ", 1)[0] + f"gap = {gap} (audited by {attribute})")
        print(f"\nby {attribute}:\n{summarise(extra).to_string()}")
    if args.keep is not None:
        keep_evidence(args, rows)
    print(f"\ntables -> {args.out / 'summary.md'}, {args.out / 'runs.csv'}, {args.out / 'compare'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
