"""The mitigations' effect at CPU size: baseline, RESM, stratified batches, fair meta-learning and
FairDRO (with its ablations: dMoE only, DRO only, plain MoE + DRO) for the sex attribute, each
trained with the same small budget on the procedural cohort, then one table of kidney / tumor /
mean Dice, per-sex Dice, SD, SER, worst-group Dice, ES-Dice, worst-group CVaR20 and the
Mann-Whitney p of the sexes' per-case Dice (the study's Tables 2-3, in miniature).

    python bench/fairness_matrix.py --methods baseline resm_sex stratified_sex fairmeta_sex   # ~25 min, 2 quiet cores
    python bench/fairness_matrix.py                       # all eight methods, ~50 min
    python bench/fairness_matrix.py --epochs 10 --cases 24 --methods baseline resm_sex   # quicker look

Every method starts from configs/demo.yaml (the CPU-sized recipe) with the mitigation's
sampler / fairness section from its own config (configs/resm_sex.yaml, ...), the same seed, the
same cohort, the same sex-stratified split, and the same number of epochs. Runs go to
--out/runs/METHOD (an existing run is reused, so an interrupted bench resumes by method).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

import train  # noqa: E402
from config import load_config  # noqa: E402
from fairness.audit import audit_groups  # noqa: E402
from fairness.stats import group_difference_test  # noqa: E402

METHODS = {
    "baseline": "baseline_nnunet.yaml",
    "resm_sex": "resm_sex.yaml",
    "stratified_sex": "stratified_sex.yaml",
    "fairmeta_sex": "fairmeta_sex.yaml",
    "fairmeta_image_sex": "fairmeta_sex.yaml fairness.fairmeta.input=image",  # control: L_cls cannot reach the segmenter
    "fairmeta_a2_b1_sex": "fairmeta_sex.yaml fairness.fairmeta.seg_weight=2.0 fairness.fairmeta.cls_weight=1.0",  # the sweep's lightest L_cls
    "fairdro_sex": "fairdro_sex.yaml",
    "dmoe_only_sex": "fairdro_sex_dmoe_only.yaml",
    "dro_only_sex": "fairdro_sex_dro_only.yaml",
    "plain_moe_dro_sex": "fairdro_sex_plain_moe.yaml",
    "fairdro_a05_sex": "fairdro_sex.yaml fairness.dro.cvar_level=0.5",  # a wider tail: more samples give gradient
    "dro_only_a05_sex": "fairdro_sex_dro_only.yaml fairness.dro.cvar_level=0.5",
    "dro_a1_eta0_sex": "fairdro_sex_dro_only.yaml fairness.dro.cvar_level=1.0 fairness.dro.eta=0.0",  # = ERM on DRO's per-sample loss
    "dmoe_balanced_sex": "fairdro_sex_dmoe_only.yaml fairness.dmoe.balance_weight=0.01",  # load-balancing loss on
}


def mitigation_overrides(spec: str) -> list[str]:
    """The sampler and fairness sections (the mitigation and its settings) of a study config, as
    --set overrides. spec: "config.yaml [section.key=value ...]"."""
    config_name, *extra = spec.split()
    cfg = load_config(ROOT / "configs" / config_name, extra)
    sets = [f"sampler.{k}={json.dumps(v)}" for k, v in cfg["sampler"].items()]
    for k, v in cfg["fairness"].items():
        if isinstance(v, dict):
            sets += [f"fairness.{k}.{kk}={json.dumps(vv)}" for kk, vv in v.items()]
        else:
            sets.append(f"fairness.{k}={json.dumps(v)}")
    return sets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fairness_matrix")
    p.add_argument("--cases", type=int, default=32, help="procedural cohort size (default 32)")
    p.add_argument("--test", type=int, default=10, help="test cases, stratified by sex (default 10)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per method (default 40)")
    p.add_argument("--batch", type=int, default=2, help="batch size (2: stratified gives 1 + 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="default: all; the study's four are baseline resm_sex stratified_sex fairmeta_sex")
    args = p.parse_args(argv)

    common = [f"data.raw={args.out / 'raw'}", f"data.cache={args.out / 'cache'}",
              f"data.synthesize_cases={args.cases}", f"data.synthesize_seed={args.seed}",
              f"data.test={args.test}", "data.stratify=sex", f"train.out_dir={args.out / 'runs'}",
              f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", f"train.seed={args.seed}",
              f"eval.every={args.epochs}", "train.log_every=1000"]
    rows = []
    for method in args.methods:
        run = args.out / "runs" / method
        if not (run / "eval" / "per_case.csv").is_file():
            if run.exists():
                print(f"{method}: incomplete run folder {run}; remove it to rerun", file=sys.stderr)
                return 2
            argv_train = ["--config", str(ROOT / "configs" / "demo.yaml"), "--name", method, "--no-progress"]
            for s in common + mitigation_overrides(METHODS[method]):
                argv_train += ["--set", s]
            print(f"== {method}: training {args.epochs} epochs", flush=True)
            train.main(argv_train)
        per_case = pd.read_csv(run / "eval" / "per_case.csv")
        audit = audit_groups(per_case, "sex", order=["male", "female"])
        t, s = audit.table, audit.summary
        worst_cvar_group = min(audit.cvar, key=lambda g: audit.cvar[g])
        test = group_difference_test(per_case, "sex", metric="mean", order=["male", "female"])
        rows.append({"method": method, "kidney": 100 * t.loc["all", "kidney"], "tumor": 100 * t.loc["all", "tumor"],
                     "mean": 100 * t.loc["all", "mean"], "male": 100 * t.loc["male", "mean"],
                     "female": 100 * t.loc["female", "mean"], "SD sex": 100 * s["sd"], "SER sex": s["ser"],
                     "worst": 100 * s["worst"], "ES-Dice": 100 * s["es_dice"],
                     "worst CVaR20": 100 * audit.cvar[worst_cvar_group], "MWU p": test["p"],
                     "minutes": run_minutes(run)})
    table = pd.DataFrame(rows).set_index("method")
    print(f"\nprocedural cohort: {args.cases} cases (seed {args.seed}), {args.test} test cases stratified by sex, "
          f"{args.epochs} epochs per method, batch {args.batch}; Dice in %, SD in Dice %\n")
    print(table.round(2).to_markdown() if _has_tabulate() else table.round(2).to_string())
    table.to_csv(args.out / "fairness_matrix.csv")
    print(f"\ntable -> {args.out / 'fairness_matrix.csv'}")
    return 0


def run_minutes(run: Path) -> float:
    """Training + test time of a run: config.yaml is written first, eval/per_case.csv last."""
    return ((run / "eval" / "per_case.csv").stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 60


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
