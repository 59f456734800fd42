"""Fairness audit of segmentations: per-case KiTS19 Dice, the study's group table, SD and SER.

    # audit predictions made by any tool (nnU-Net, MONAI, ours) against a KiTS-layout folder
    python evaluate.py --pred preds/ --gt ../shared/kits19 --group sex
    python evaluate.py --pred preds/ --gt raw/demo --group age --out audit/   # writes per_case.csv
    python evaluate.py --pred preds/ --gt raw/demo --group sex,age            # an intersection
    # the fairness numbers of published group Dice (e.g. SPEC Table 1: SD 2.35, SER 1.42)
    python evaluate.py --group-dice male=84.2 female=88.9

Predictions are label maps in the original geometry of the reference, named
PRED/case_XXXXX.nii.gz (nnU-Net's naming) or PRED/case_XXXXX/segmentation.nii.gz. Dice is
KiTS19's: kidney = label > 0, tumor = label 2, mean of the two; a class empty in both reference
and prediction is excluded (NaN) and counted (fairness/case_dice.py). SD is the population std
of the group mean Dice in Dice %, SER = max(1 - D_g) / min(1 - D_g).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import pandas as pd

from data.errors import CaseError, format_failures


def prediction_path(pred_dir: Path, case_id: str) -> Path:
    for candidate in (pred_dir / f"{case_id}.nii.gz", pred_dir / case_id / "segmentation.nii.gz"):
        if candidate.is_file():
            return candidate
    raise CaseError(case_id, f"no prediction in {pred_dir} ({case_id}.nii.gz or {case_id}/segmentation.nii.gz)")


def score_predictions(pred_dir: Path, gt_dir: Path, *, metadata_path=None, cases=None, label_scheme="kits19",
                      group_specs=("sex",), age_edges=None, bmi_edges=None, progress=True):
    """Per-case Dice and group columns for every reference case that has a prediction."""
    import numpy as np
    from tqdm import tqdm

    from data.groups import GroupError, parse_attribute
    from data.kits import load_case, scan_cohort
    from data.labels import LabelScheme
    from data.nifti import read_volume
    from fairness import kits_case_dice

    scheme = LabelScheme.parse(label_scheme)
    attributes = [parse_attribute(s, age_edges=age_edges, bmi_edges=bmi_edges) for s in group_specs]
    cohort = scan_cohort(gt_dir, metadata_path=metadata_path, cases=cases)
    rows, failures = [], list(cohort.failures)
    for record in tqdm(cohort.records, desc="evaluate", unit="case", disable=not progress):
        try:
            pred_file = prediction_path(pred_dir, record.case_id)
            ref = load_case(record, scheme, with_image=False)
            pred = read_volume(pred_file, where=record.case_id)
            if pred.array.shape != ref.shape:
                raise CaseError(record.case_id, f"prediction shape {pred.array.shape} differs from the "
                                f"reference {ref.shape}: predictions must be in the original geometry")
            if not np.allclose(pred.spacing, ref.spacing, rtol=1e-3):
                raise CaseError(record.case_id, f"prediction spacing {pred.spacing} differs from the "
                                f"reference {ref.spacing}")
            pred_labels = scheme.apply(pred.array, where=f"{record.case_id} prediction")
            row = {"case_id": record.case_id, **kits_case_dice(pred=pred_labels, ref=ref.labels)}
            for attribute in attributes:
                row[attribute.name] = attribute.group_of(record.meta)
            rows.append(row)
        except GroupError as exc:
            failures.append(CaseError(record.case_id, str(exc)))
        except CaseError as exc:
            failures.append(exc)
    return pd.DataFrame(rows), attributes, failures


def _write_csv(frame: pd.DataFrame, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CaseError(str(path), "exists; pass --overwrite to replace it (or choose another --out)")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frame.to_csv(tmp, index=path.name != "per_case.csv")
    os.replace(tmp, path)


def cmd_audit(args) -> int:
    from fairness.audit import audit_groups, format_audit
    if not args.pred.is_dir():
        raise CaseError(str(args.pred), "prediction folder not found")
    per_case, attributes, failures = score_predictions(
        args.pred, args.gt, metadata_path=args.meta, cases=args.cases, label_scheme=args.label_scheme,
        group_specs=args.group, progress=not args.no_progress)
    if per_case.empty:
        print(format_failures(failures), file=sys.stderr)
        raise CaseError(str(args.pred), "no case could be scored")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        _write_csv(per_case, args.out / "per_case.csv", args.overwrite)
    for attribute in attributes:
        audit = audit_groups(per_case, attribute.name, order=attribute.order, alpha=args.alpha)
        print(format_audit(audit))
        print()
        if args.out is not None:
            _write_csv(audit.table, args.out / f"groups_{attribute.name}.csv", args.overwrite)
    print(f"scored {len(per_case)} case(s), {len(failures)} failed"
          + (f"; tables in {args.out}" if args.out is not None else ""))
    if failures:
        print(format_failures(failures), file=sys.stderr)
        return 1
    return 0


def cmd_group_dice(args) -> int:
    from fairness import fairness_summary
    groups = {}
    for item in args.group_dice:
        name, sep, value = item.rpartition("=")  # group names may hold "=", like ">=70"
        try:
            groups[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise CaseError(item, "expected GROUP=DICE, e.g. male=84.2")
    s = fairness_summary(groups, overall=args.overall)
    unit = "%" if s["scale"] == "percent" else ""
    print(f"groups {len(groups)}: SD {s['sd']:.2f}{unit}   SER {s['ser']:.2f}   "
          f"worst {s['worst_group']} {s['worst']:g}   gap {s['gap']:.2f}"
          + (f"   ES-Dice {s['es_dice']:.2f}" if args.overall is not None else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", type=Path, help="folder of predicted label maps (original geometry)")
    parser.add_argument("--gt", type=Path, help="KiTS-layout folder with the reference label maps and metadata")
    parser.add_argument("--meta", type=Path, help="metadata JSON (default GT/kits.json)")
    parser.add_argument("--cases", type=lambda t: [c for c in t.split(",") if c], help="only these case ids")
    parser.add_argument("--group", nargs="+", default=["sex"],
                        help="grouping attribute(s): sex, age, bmi, age:40,60, sex,age, any metadata field")
    parser.add_argument("--label-scheme", default="kits19", help="label map of GT and predictions (kits19 default)")
    parser.add_argument("--alpha", type=float, default=0.2, help="CVaR level: the worst fraction of a group")
    parser.add_argument("--out", type=Path, help="write per_case.csv and groups_<attr>.csv here")
    parser.add_argument("--overwrite", action="store_true", help="replace tables already in --out")
    parser.add_argument("--group-dice", nargs="+", metavar="GROUP=DICE",
                        help="summarise given group mean Dice (in %% or fractions) instead of scoring files")
    parser.add_argument("--overall", type=float, help="with --group-dice: Dice over all cases, for ES-Dice")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.group_dice:
            return cmd_group_dice(args)
        if args.pred is None or args.gt is None:
            parser.error("give --pred and --gt (or --group-dice)")
        return cmd_audit(args)
    except (CaseError, ValueError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
