"""Does the audit find a bias that is there, and stay quiet when there is none? (SPEC §4, §5)

Trains the demo recipe (configs/demo.yaml: kidney field of view) on two procedural cohorts that
differ only in a planted bias, with several seeds, and audits each run by sex:

    planted   a bias file (default configs/bias/poor_protocol_female.yaml: women's scans at noise
              x3 and enhancement x0.2) with counterfactual twins: every woman's case also rendered
              without the effect (same anatomy and draws)
    null      configs/bias/none.yaml: the same cohort with no effect

Per run it prints the gap of group mean Dice (male - female, original geometry, evaluate.py
--ckpt), its gap-test p-value (Welch), the 95th percentile of noise alone, the minimum detectable gap, the
gap adjusted for case mix, the same gap and p-value for kidney Dice alone and, for the planted
cohort:
    twin_effect        Dice of the woman's twin minus Dice of her biased case, averaged over the
                       test women: what the mechanism costs this model at test time, case by case
                       (also for kidney Dice)
    gap_to_twins       men's mean Dice minus the twins': what is left of the gap without the effect
    cost_female/male   Dice of the null cohort's model on the clean case minus the planted model's
                       on the biased one (the null cohort is the planted one unbiased: same plans,
                       split and seed): what planting cost each group, training and test together;
                       gap_made_by_bias is their difference
Writes planted_bias.csv and planted_bias.md in --out.

Runs are kept under --out and reused (a re-issued command resumes by run); synthesis and
preprocessing happen once per cohort. About 9 minutes per run on 2 quiet cores at the defaults
(72 cases, 40 test cases stratified by sex, 80 epochs of 16 steps), plus about a minute of
evaluation per run.

    python bench/planted_bias.py                           # 3 seeds, planted and null
    python bench/planted_bias.py --seeds 0 --noise 5 --out bench/out/pb_noise5 --skip-null
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import run_logged  # noqa: E402
from fairness.audit import audit_groups  # noqa: E402
from fairness.report import to_markdown  # noqa: E402


def train_cohort(label: str, bias: Path, args, twins: bool) -> Path:
    out = args.out
    sets = [f"data.raw={out / f'raw_{label}'}", f"data.cache={out / f'cache_{label}'}",
            f"data.synthesize_cases={args.cases}", f"data.synthesize_bias={bias}", f"data.test={args.test}",
            "data.stratify=sex", f"data.synthesize_twins={'true' if twins else 'false'}",
            f"train.epochs={args.epochs}", f"eval.every={args.epochs}", f"train.out_dir={out / 'runs'}"]
    cmd = [sys.executable, "train.py", "--config", args.config, "--name", label, "--no-progress",
           "--seeds", *map(str, args.seeds)]
    for s in sets:
        cmd += ["--set", s]
    print(f"training {label}: seeds {' '.join(map(str, args.seeds))} (log {out / f'{label}.log'})", flush=True)
    run_logged(cmd, out / f"{label}.log")
    return out / "runs" / label


def evaluated(run_dir: Path, log: Path, extra=(), name: str = "last") -> pd.DataFrame:
    """evaluate.py --ckpt last.pt (original geometry), once; its per-case table."""
    out = run_dir / "eval" / name
    if not (out / "per_case.csv").is_file():
        cmd = [sys.executable, "evaluate.py", "--ckpt", run_dir / "last.pt", "--group", "sex", "--no-progress",
               "--n-boot", "200", *extra]
        if name != "last":
            cmd += ["--out", out]
        run_logged(cmd, log)
    return pd.read_csv(out / "per_case.csv")


def audit_row(label: str, seed: int, per_case: pd.DataFrame) -> dict:
    audit = audit_groups(per_case, "sex", order=["male", "female"])
    means = audit.table["mean"]
    sig = audit.significance
    return {"cohort": label, "seed": seed, "n_male": int(audit.table.loc["male", "n"]),
            "n_female": int(audit.table.loc["female", "n"]), "male": 100 * means["male"],
            "female": 100 * means["female"], "gap_male_minus_female": 100 * (means["male"] - means["female"]),
            "gap_p": sig["gap_p"], "gap_null95": 100 * sig["gap_null95"], "mdg80": 100 * sig["mdg80"],
            "gap_adjusted": 100 * sig["gap_adjusted"], "gap_adjusted_lo": 100 * sig["gap_adjusted_lo"],
            "gap_adjusted_hi": 100 * sig["gap_adjusted_hi"],
            "kidney_gap_male_minus_female": 100 * (audit.table.loc["male", "kidney"] - audit.table.loc["female", "kidney"]),
            "kidney_gap_p": sig["kidney_gap_p"], "kidney_gap_null95": 100 * sig["kidney_gap_null95"],
            "kidney_mdg80": 100 * sig["kidney_mdg80"]}


def twin_effect(run_dir: Path, biased: pd.DataFrame, twins_raw: Path, log: Path) -> dict:
    """Mean over the test cases that have a twin of Dice(twin) - Dice(biased case), in points."""
    with_twin = {c["case_id"] for c in json.loads((twins_raw / "kits.json").read_text())}
    cases = sorted(set(biased["case_id"]) & with_twin)
    twins = evaluated(run_dir, log, extra=["--data", twins_raw, "--cases", ",".join(cases)], name="twins")
    out = {"twin_cases": len(cases)}
    # the gap splits into what the mechanism costs at test time (the twin effect) and what is left
    # between men and the women's clean twins (anatomy, or what training on biased cases taught)
    men = biased.loc[~biased["case_id"].isin(with_twin), "mean"]
    out["gap_to_twins"] = float(100 * (men.mean() - twins.set_index("case_id").loc[cases, "mean"].mean()))
    for metric in ("mean", "kidney"):
        effect = 100 * (twins.set_index("case_id").loc[cases, metric] - biased.set_index("case_id").loc[cases, metric])
        prefix = "twin_effect" if metric == "mean" else "twin_effect_kidney"
        out.update({prefix: float(effect.mean()), f"{prefix}_sd": float(effect.std(ddof=1)),
                    f"{prefix}_positive": int((effect > 0).sum())})
    return out


def counterfactual(planted: pd.DataFrame, null: pd.DataFrame) -> dict:
    """The bias's whole effect, case by case: the null cohort is the planted one without the bias
    (same plans, same split, same seed), so Dice(null model, clean case) - Dice(planted model,
    biased case) is what planting cost each test case, at training and test time together. Its
    female - male difference is the part of the planted gap the bias made (the rest is the
    gap the null cohort has anyway)."""
    a, b = planted.set_index("case_id"), null.set_index("case_id")
    if sorted(a.index) != sorted(b.index):
        return {}
    cost = 100 * (b["mean"] - a.loc[b.index, "mean"])
    female, male = cost[b["sex"] == "female"], cost[b["sex"] == "male"]
    return {"cost_female": float(female.mean()), "cost_male": float(male.mean()),
            "gap_made_by_bias": float(female.mean() - male.mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "planted_bias")
    p.add_argument("--config", default="configs/demo.yaml", help="the training recipe (default: the demo's)")
    p.add_argument("--bias", type=Path, default=ROOT / "configs" / "bias" / "poor_protocol_female.yaml",
                   help="the planted bias file (default: configs/bias/poor_protocol_female.yaml)")
    p.add_argument("--noise", type=float, help="plant women at this noise factor instead of --bias")
    p.add_argument("--cases", type=int, default=72)
    p.add_argument("--test", type=int, default=40, help="test cases, stratified by sex (40)")
    p.add_argument("--epochs", type=int, default=80, help="epochs of ceil(train cases / batch) steps (80)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--skip-null", action="store_true")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    planted = args.bias
    if args.noise is not None:
        planted = args.out / "planted.yaml"
        planted.write_text(f"# low dose for women, strong enough for a test set of {args.test}\n"
                           f"sex:\n  female: {{noise: {args.noise:g}}}\n")
    cohorts = [("planted", planted.resolve(), True)]
    if not args.skip_null:
        cohorts.append(("null", ROOT / "configs" / "bias" / "none.yaml", False))
    rows, tables = [], {}
    for label, bias, twins in cohorts:
        batch = train_cohort(label, bias, args, twins)
        for seed in args.seeds:
            run_dir = batch / f"seed{seed}"
            log = args.out / f"{label}.log"
            per_case = evaluated(run_dir, log)
            tables[label, seed] = per_case
            row = audit_row(label, seed, per_case)
            if twins:
                row.update(twin_effect(run_dir, per_case, args.out / f"raw_{label}_twins", log))
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    for row in rows:
        if row["cohort"] == "planted" and ("null", row["seed"]) in tables:
            row.update(counterfactual(tables["planted", row["seed"]], tables["null", row["seed"]]))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "planted_bias.csv", index=False)
    shown = table.copy()
    for col in shown.columns:
        if shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v, c=col: f"{v:.3f}" if c.endswith("_p") else f"{v:.1f}")
    (args.out / "planted_bias.md").write_text(to_markdown(shown.set_index("cohort")))
    print("\n" + shown.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
