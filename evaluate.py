"""Fairness audit of segmentations: per-case KiTS19 Dice, the study's group tables, SD and SER.

    # a trained model: predict its run's test split, write NIfTI in the original geometry, audit
    python evaluate.py --ckpt runs/demo-X/best.pt --group sex age
    python evaluate.py --ckpt runs/demo-X/best.pt --group sex,age --mirror        # intersection, TTA
    python evaluate.py --ckpt runs/demo-X/last.pt --data other_cohort/ --group age   # another cohort
    # several seeds of one recipe: mean ± std over seeds, SD and SER per seed then averaged
    python evaluate.py --ckpt runs/resm_sex/seed*/best.pt --group sex
    # methods side by side (the study's Tables 2-4) and the Dice-fairness trade-off
    python evaluate.py --compare runs/baseline_nnunet runs/resm_sex runs/fairmeta_sex --group sex age
    python evaluate.py --compare runs/baseline_nnunet runs/resm_sex --baseline baseline_nnunet   # paired Δ
    # audit predictions made by any tool (nnU-Net, MONAI, ours) against a KiTS-layout folder
    python evaluate.py --pred preds/ --gt ../shared/kits19 --meta ../shared/kits19/kits.json --group age
    # audit nnU-Net's own scores (summary.json of nnUNetv2_evaluate_folder or a fold's validation)
    python evaluate.py --nnunet-summary fold_0/validation/summary.json --meta raw/kits.json --group sex age
    # the fairness numbers of published group Dice (e.g. SPEC Table 1: SD 2.35, SER 1.42)
    python evaluate.py --group-dice male=84.2 female=88.9

--ckpt rebuilds the model from the checkpoint alone (its saved config), predicts each case with
the sliding window on the preprocessed case, writes the labels back in the original geometry
(eval/<ckpt>/predictions/CASE.nii.gz, with the original affine and header: they overlay on the CT
in 3D Slicer or ITK-SNAP) and scores them there against the original label map. An interrupted
evaluation continues where it stopped (predictions already written are scored, not redone).
Outputs, per attribute: groups_<attr>.csv, summary_<attr>.csv, report_<attr>.md / .tex,
box_<attr>.png, and TensorBoard scalars and figures in the same folder; per_case.csv (Dice, the
voxel counts behind it, class volumes, groups) and the same per-case scores as nnU-Net's
summary.json, which also names the files scored (regions "(1, 2)" kidney and "2" tumor,
data/nnunet.py); results are never
overwritten without --overwrite.

--nnunet-summary reads nnU-Net v2's summary.json and audits its per-case scores as they are (no
label map is scored again), joined by case id (the reference file's name) to the metadata
(--meta, or --gt's kits.json). Kidney is the region (1, 2), tumor 2; a label-based summary (keys
"1", "2") gives kidney from labels 1 and 2 with TP/FP/FN summed, a lower bound that a note flags.
The class volumes (covariates of the adjusted gap) are n_ref times the voxel volume from the
reference file's header, where it can be read (as the summary names it, or under --gt).

Every table gives, per group, n and Dice kidney / tumor / mean with Student-t 95% CIs, the
worst-20% CVaR (--cvar-level) with a bootstrap CI, then SD and SER with bootstrap CIs (cases
resampled within groups, seeded: --n-boot, --seed), a rank test of the groups' per-case Dice
(Mann-Whitney U for two groups, Kruskal-Wallis for more), ES-Dice, the worst group, the best-worst
gap with its interval, the studentised test that the group means differ, what noise alone gives,
the detectable gap and the adjusted gap (fairness/significance.py, docs/statistics.md). Every
p-value of a screen is printed with its Holm adjustment over the screen's family.

Predictions are label maps in the original geometry of the reference, named
PRED/case_XXXXX.nii.gz (nnU-Net's naming: the folder nnUNetv2_predict writes is read as it is, its
dataset.json, plans.json and predict_from_raw_data_args.json left alone) or
PRED/case_XXXXX/segmentation.nii.gz. Dice is
KiTS19's: kidney = label > 0, tumor = label 2, mean of the two; a class empty in both reference
and prediction is excluded (NaN) and counted (fairness/case_dice.py). SD is the population std
of the group mean Dice in Dice %, SER = max(1 - D_g) / min(1 - D_g).

--metric nsd / hd95 / assd asks every table, statistic and figure for a surface metric instead
(fairness/metrics.py, fairness/surface.py: from the true voxel spacing; NSD at --surface-tolerance
mm, 2 by default); HD95 and ASSD are in mm and lower is better (the worst group is the highest,
SER = worst / best distance). Their files carry the metric's name: groups_sex_nsd.csv, ...

This script parses the options and dispatches; what each mode computes is the audit package's
(audit/modes.py and the modules it calls), importable from a notebook.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit.modes import group_dice, run_audit, run_checkpoints, run_compare
from audit.results import discovery_families
from data.arguments import number, whole
from data.errors import report_error
from data.groups import parse_attribute
from data.untrusted import case_list
from engine.interrupts import Interrupted
from engine.interrupts import install as install_interrupts, report as report_interrupt
from fairness.metrics import METRICS as METRIC_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_argument_group("what to audit (one of)")
    mode.add_argument("--ckpt", nargs="+", metavar="PT", help="checkpoint(s) of train.py; several: mean ± std over them")
    mode.add_argument("--compare", nargs="+", metavar="RUN", type=Path,
                      help="run folders or --seeds/--sweep batch folders, one method each, side by side")
    mode.add_argument("--pred", type=Path, help="folder of predicted label maps (original geometry), with --gt")
    mode.add_argument("--nnunet-summary", type=Path, metavar="SUMMARY_JSON",
                      help="nnU-Net v2's summary.json: audit its per-case scores as they are, with --meta")
    mode.add_argument("--group-dice", nargs="+", metavar="GROUP=DICE",
                      help="summarise given group mean Dice (in %% or fractions) instead of scoring files")
    parser.add_argument("--group", nargs="+", default=["sex"],
                        help="grouping attribute(s): sex, age, bmi, age:40,60, sex,age (intersection), any "
                             "metadata field (default: sex)")
    parser.add_argument("--gt", type=Path, help="with --pred: KiTS-layout folder of reference label maps + metadata; "
                        "with --nnunet-summary: where to find the reference label maps' headers (volumes)")
    parser.add_argument("--meta", type=Path, help="metadata JSON (default: the folder's kits.json)")
    parser.add_argument("--cases", type=case_list, help="only these case ids (a,b,c)")
    ck = parser.add_argument_group("with --ckpt")
    ck.add_argument("--split", default="test", choices=["test", "val", "train", "all"],
                    help="which cases of the run's cache (default: the test split)")
    ck.add_argument("--data", type=Path, help="predict this KiTS-layout folder instead (preprocessed like the run)")
    ck.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    ck.add_argument("--amp", default="auto", help="autocast on CUDA: auto, bf16, fp16, off")
    ck.add_argument("--overlap", type=number(low=0, high=1, open_high=True), help="sliding-window overlap (default: the run's eval.overlap, 0.5)")
    ck.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                    help="test-time mirroring (default: the run's eval.mirror) over the flips of the run's "
                         "eval.mirror_axes (all three axes: 8 flips)")
    ck.add_argument("--mirror-axes", type=int, nargs="+", choices=[0, 1, 2], metavar="AXIS",
                    help="the axes --mirror flips, 0 z, 1 y, 2 x (default: the run's eval.mirror_axes; "
                         "2 alone is the left-right flip, 2 forward passes a tile instead of 8)")
    ck.add_argument("--tile-batch", type=whole(minimum=1), help="tiles per forward pass (default: the run's eval.tile_batch)")
    add_compare_options(parser.add_argument_group("with --compare"))
    me = parser.add_argument_group("metrics")
    me.add_argument("--metric", nargs="+", metavar="NAME", choices=list(METRIC_NAMES),
                    help="per-case metric(s) every table, statistic and figure is made for: dice (KiTS19's, the "
                         "default), nsd (normalised surface Dice), hd95, assd (mm, lower is better); several: a set "
                         "of tables each (default: dice; --ckpt: the run's eval.metrics)")
    me.add_argument("--surface-tolerance", type=number(low=0), metavar="MM",
                    help="NSD tolerance in mm (default: the run's eval.surface_tolerance_mm, else 2)")
    st = parser.add_argument_group("statistics")
    st.add_argument("--cvar-level", type=number(low=0, high=1, open_low=True), default=0.2,
                    help="within-group tail: the CVaR of the worst fraction of a group's cases (0.2)")
    st.add_argument("--alpha", type=float, help=argparse.SUPPRESS)  # the old name: refused with its new one
    st.add_argument("--n-boot", type=whole(minimum=20), default=2000, help="bootstrap resamples (2000; at least 20)")
    st.add_argument("--n-perm", type=whole(minimum=100), default=5000,
                    help="draws of the noise-alone bootstrap and of the gap test's parametric bootstrap with more than "
                         "two groups (5000; at least 100)")
    st.add_argument("--adjust-for", nargs="+", metavar="COLUMN",
                    help="case-mix covariates of the adjusted gap: per-case columns, log_<column> for "
                         "log(1 + column); default log_tumor_ml log_kidney_ml bmi; 'none' for no adjustment")
    st.add_argument("--seed", type=whole(minimum=0), default=0, help="bootstrap seed (0)")
    dis = parser.add_argument_group("discovery (failing subgroups nobody named; docs/discovery.md)")
    dis.add_argument("--discover", action="store_true",
                     help="search rules of one or two conditions on the cases' features for the slice that does "
                          "worst, each half of the cases searching and the other testing (Holm); writes "
                          "slices.csv and slice_members.csv")
    dis.add_argument("--discover-region", default="mean", choices=["mean", "kidney", "tumor"],
                     help="with --discover: the per-case value searched, the mean of kidney and tumor (default) "
                          "or one region: a failure of one region can hide in the mean (docs/discovery.md)")
    dis.add_argument("--features", default="auto", metavar="FAMILIES",
                     help="with --discover: auto (every family available, the default) or a comma list of "
                          "metadata, derived (volumes, tumor count, slice thickness, spacing, field of view), image "
                          "(noise, kidney and tumor HU, contrast: needs the CT, read from the reference or raw folder), "
                          "embedding (with --ckpt: the model's pooled bottleneck, its principal components and "
                          "k-means clusters; the vectors are saved as embeddings.csv)")
    parser.add_argument("--out", type=Path, help="results folder (default: RUN/eval/<ckpt> for --ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in the folder")
    parser.add_argument("--label-scheme", default="kits19", help="label map of --gt and --pred, or the labels of "
                        "--nnunet-summary's keys (kits19 default)")
    parser.add_argument("--overall", type=number(), help="with --group-dice: Dice over all cases, for ES-Dice")
    parser.add_argument("--no-report", action="store_true",
                        help="do not write report.html (the audit as one self-contained page) in the results folder")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def add_compare_options(cmp) -> None:
    cmp.add_argument("--baseline", metavar="NAME",
                     help="the method (folder name) the others are compared with: Δ mean Dice, ΔSD, ΔSER, Δ worst "
                          "group, Δ gap (and the kidney and tumor gaps) with 95%% CIs and Holm p-values over the "
                          "screen. With 2+ runs (seeds) per method the recipe question, seeds as the unit; with one, "
                          "this model's, the test cases as the sample (docs/audit.md)")
    cmp.add_argument("--seed-variance", default="own", choices=["own", "pooled"],
                     help="the recipe-level test's between-seed variance: own (Welch across seeds, the default) or "
                          "pooled over the table's methods (more power with 2-3 seeds; only when the recipes' seed "
                          "spreads are alike: docs/statistics.md)")
    cmp.add_argument("--detect", type=number(low=0, open_low=True), metavar="DELTA",
                     help="also print the seeds per method a recipe-level comparison needs to detect a true Δ of "
                          "DELTA (points for Dice, SD, worst and gap; a ratio for SER) with 80%% power, from the "
                          "between-seed spread measured")
    cmp.add_argument("--source", default="auto",
                     help="which results of each run: auto (evaluate.py's best, then last, else train.py's), "
                          "train, or an eval/ subfolder name such as best")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # the report's footer quotes it
    if args.alpha is not None:
        parser.error("--alpha is now --cvar-level (the within-group CVaR level)")
    modes = [m for m in ("ckpt", "compare", "pred", "nnunet_summary", "group_dice") if getattr(args, m)]
    if len(modes) != 1:
        parser.error("give exactly one of --ckpt, --compare, --pred (with --gt), --nnunet-summary or --group-dice")
    if args.discover and modes[0] in ("compare", "group_dice"):
        parser.error("--discover goes with --ckpt, --pred or --nnunet-summary (it needs the per-case scores)")
    if args.discover:
        try:
            discovery_families(args)
        except ValueError as exc:
            parser.error(f"--features: {exc}")
    try:
        for spec in args.group:     # a bad attribute (a name that would make a path) fails before any scoring
            parse_attribute(spec)
        if args.group_dice:
            return group_dice(args)
        if args.ckpt:
            return run_checkpoints(args)
        if args.compare:
            return run_compare(args)
        if args.pred is not None and args.gt is None:
            parser.error("--pred needs --gt, the folder of reference label maps")
        return run_audit(args)
    except Exception as exc:   # bad input of any kind: one line (Ctrl-C and SIGTERM are not Exceptions)
        return report_error(exc, debug=args.debug)


if __name__ == "__main__":
    install_interrupts()
    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(report_interrupt(exc, debug="--debug" in sys.argv))
