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
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from data.atomic import write_csv, write_figure, write_text
from data.errors import CaseError, format_failures, report_error
from data.arguments import number, whole
from data.lock import refuse_finished, results_folder
from data.untrusted import case_list, case_path
from data.progress import track
from engine.interrupts import Interrupted, on_interrupt
from engine.interrupts import install as install_interrupts, report as report_interrupt
from fairness.metrics import METRICS as METRIC_NAMES


def prediction_path(pred_dir: Path, case_id: str) -> Path:
    for candidate in (case_path(pred_dir, case_id, ".nii.gz"), case_path(pred_dir, case_id) / "segmentation.nii.gz"):
        if candidate.is_file():
            return candidate
    raise CaseError(case_id, f"no prediction in {pred_dir} ({case_id}.nii.gz or {case_id}/segmentation.nii.gz)")


def meta_columns(meta: dict, attributes) -> dict:
    """A case's BMI (the covariate bmi_kg_m2, NaN if unknown) and its group under each attribute (GroupError if none)."""
    from data.groups import FIELDS, GroupError, numeric_value
    try:
        bmi = numeric_value(meta, FIELDS["bmi"])
    except GroupError:
        bmi = float("nan")
    return {"bmi_kg_m2": bmi, **{attribute.name: attribute.group_of(meta) for attribute in attributes}}


def score_predictions(pred_dir: Path, gt_dir: Path, *, metadata_path=None, cases=None, label_scheme="kits19",
                      group_specs=("sex",), age_edges=None, bmi_edges=None, progress=True, metrics=("dice",),
                      tolerance_mm=None, with_image_features=False):
    """Per-case Dice (and the asked surface metrics), the reference's geometry (fairness/features.py),
    with_image_features the CT's measurements where the reference folder holds it, and group columns
    for every reference case that has a prediction."""
    import numpy as np

    from data.groups import GroupError, parse_attribute
    from data.kits import load_case, scan_cohort
    from data.labels import LabelScheme
    from data.nifti import read_geometry, read_volume
    from data.preprocessing import class_volumes_ml
    from fairness.features import geometry_features, image_features
    from fairness.metrics import case_scores
    from fairness.surface import DEFAULT_TOLERANCE_MM

    scheme = LabelScheme.parse(label_scheme)
    attributes = [parse_attribute(s, age_edges=age_edges, bmi_edges=bmi_edges) for s in group_specs]
    cohort = scan_cohort(gt_dir, metadata_path=metadata_path, cases=cases)
    rows, failures = [], list(cohort.failures)
    for record in track(cohort.records, desc="evaluate", enabled=progress):
        try:
            pred_file = prediction_path(pred_dir, record.case_id)
            ref = load_case(record, scheme, with_image=with_image_features)
            if not ref.labels.any():  # KiTS Dice is undefined without a reference kidney
                raise CaseError(record.case_id, f"reference label map is empty (no kidney) in "
                                f"{record.label_path.name}: nothing to score against")
            pred_shape = read_geometry(pred_file, where=record.case_id)[0]   # the header: before any data
            if pred_shape != ref.shape:
                raise CaseError(record.case_id, f"prediction shape {pred_shape} differs from the "
                                f"reference {ref.shape}: predictions must be in the original geometry")
            pred = read_volume(pred_file, where=record.case_id)   # its header's shape checked just above
            if not np.allclose(pred.spacing, ref.spacing, rtol=1e-3):
                raise CaseError(record.case_id, f"prediction spacing {pred.spacing} differs from the "
                                f"reference {ref.spacing}")
            if not np.allclose(pred.affine, ref.affine, atol=1e-3):
                raise CaseError(record.case_id, f"{pred_file.name} has another affine than the reference "
                                f"{record.label_path.name} (orientation or origin): predictions must be in the "
                                "original geometry")
            pred_labels = scheme.apply(pred.array, where=f"{record.case_id} prediction")
            rows.append({"case_id": record.case_id,
                         **case_scores(pred_labels, ref.labels, spacing=ref.spacing, metrics=metrics,
                                       tolerance_mm=DEFAULT_TOLERANCE_MM if tolerance_mm is None else tolerance_mm),
                         **class_volumes_ml(ref.labels, ref.spacing), **geometry_features(ref.labels, ref.spacing),
                         **(image_features(ref.image, ref.labels) if ref.image is not None else {}),
                         **meta_columns(record.meta, attributes),
                         "reference_file": str(record.label_path.resolve()), "prediction_file": str(pred_file.resolve())})
        except GroupError as exc:
            failures.append(CaseError(record.case_id, str(exc)))
        except CaseError as exc:
            failures.append(exc)
        except MemoryError:   # one case too large for this machine: the others are still scored
            failures.append(CaseError(record.case_id, "out of memory while scoring it"))
    return pd.DataFrame(rows), attributes, failures


def summary_cases(args):
    """The per-case table of an nnU-Net summary.json (Dice as nnU-Net computed it) joined to the metadata."""
    from data.groups import GroupError, parse_attribute
    from data.kits import METADATA_NAME, load_metadata, validate_meta
    from data.nnunet import FILE_COLUMNS, read_summary
    from data.preprocessing import volumes_ml
    from fairness.features import header_features

    meta_path = args.meta or (args.gt / METADATA_NAME if args.gt is not None else None)
    if meta_path is None:
        raise CaseError(str(args.nnunet_summary), "--nnunet-summary needs the metadata: --meta kits.json (or --gt)")
    metadata = load_metadata(meta_path)
    attributes = [parse_attribute(s) for s in args.group]
    table = read_summary(args.nnunet_summary, label_scheme=args.label_scheme)
    rows, failures, unsized = [], list(table.failures), 0
    for row in table.frame.to_dict("records"):
        case_id = row["case_id"]
        if args.cases and case_id not in args.cases:
            continue
        try:
            if case_id not in metadata:
                raise CaseError(case_id, f"not in the metadata file {meta_path}")
            validate_meta(case_id, metadata[case_id])
            geometry = reference_geometry(row["reference_file"], case_id, args.gt)
            unsized += geometry is None
            volumes = {"kidney_ml": float("nan"), "tumor_ml": float("nan")} if geometry is None else volumes_ml(
                kidney_voxels=row["kidney_tp"] + row["kidney_fn"], tumor_voxels=row["tumor_tp"] + row["tumor_fn"],
                spacing=geometry[1])
            header = {} if geometry is None else header_features(*geometry)   # no tumor count: voxels unread
            files = {k: row.pop(k) for k in FILE_COLUMNS}
            rows.append({**row, **volumes, **header, **meta_columns(metadata[case_id], attributes), **files})
        except GroupError as exc:
            failures.append(CaseError(case_id, str(exc)))
        except CaseError as exc:
            failures.append(exc)
    if unsized:
        table.notes.append(f"{unsized} case(s) have no reference label map at the path the summary names (or under "
                           "--gt): their kidney and tumor volumes, covariates of the adjusted gap, are unknown")
    return pd.DataFrame(rows), attributes, failures, table.notes


def reference_geometry(reference_file, case_id: str, gt: Path | None):
    """(shape, spacing) of a case's reference label map from its header; None where none is found."""
    from data.nifti import read_geometry

    candidates = [Path(reference_file)] if isinstance(reference_file, str) and reference_file else []
    if gt is not None:
        candidates += [gt / case_id / "segmentation.nii.gz", gt / f"{case_id}.nii.gz"]
    for path in candidates:
        if path.is_file():
            return read_geometry(path, where=case_id)[:2]
    return None


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
    if family:
        print(f"\n(Holm over the {family} tests this screen prints: attributes x classes x tests; "
              "'Holm' beside each p)")
    return reports


def write_report(rep, per_case: pd.DataFrame, attribute: str, out_dir: Path | None, *, title: str, writer,
                 name: str):
    from fairness.figures import group_boxplot
    from fairness.metrics import metric_view
    from fairness.report import display_frame, format_report, report_frames, summary_line, to_latex, to_markdown

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
               f"**{title}, by {attribute}** ({metric.label} {metric.unit}, 95% CI: Student t for group means)\n\n"
               f"{to_markdown(shown)}\n{summary_line(rep)}\n")
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


def cmd_audit(args) -> int:
    """--pred (label maps scored here) or --nnunet-summary (nnU-Net's scores as they are)."""
    if args.out is not None:   # before the scoring; asked again under the folder's lock
        refuse_finished(args.out, overwrite=args.overwrite, marker=FINISHED)
    if args.nnunet_summary is not None:
        per_case, attributes, failures, notes = summary_cases(args)
        source, title = args.nnunet_summary, f"nnU-Net's scores in {args.nnunet_summary}"
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        if not args.pred.is_dir():
            raise CaseError(str(args.pred), "prediction folder not found")
        per_case, attributes, failures = score_predictions(
            args.pred, args.gt, metadata_path=args.meta, cases=args.cases, label_scheme=args.label_scheme,
            group_specs=args.group, progress=not args.no_progress, metrics=args.metric or ["dice"],
            tolerance_mm=args.surface_tolerance,
            with_image_features=args.discover and "image" in discovery_families(args))
        source, title = args.pred, f"predictions in {args.pred}"
    if per_case.empty:
        print(format_failures(failures), file=sys.stderr)
        raise CaseError(str(source), "no case could be scored")
    # the bootstrap draws by row: one order (by case id) makes the same cases the same audit, whatever
    # order --cases or a summary listed them in
    per_case = per_case.sort_values("case_id", kind="stable", ignore_index=True)
    out = args.out
    with results_folder(out, overwrite=args.overwrite, marker=FINISHED) if out is not None else nullcontext():
        write_reports(per_case, attributes, out, args, title=title, metrics=args.metric or ["dice"])
        if args.discover:
            discover_failures(per_case, audit_metadata(args), out, args, metrics=args.metric or ["dice"])
        what = ([("predictions", str(args.pred)), ("references", str(args.gt))] if args.pred is not None
                else [("nnU-Net summary", str(args.nnunet_summary))])
        write_page(out, per_case, args, title=title, audited=what + [("metadata", str(args.meta or "-"))])
        if out is not None:
            save_per_case(per_case, out)
    print(f"\nscored {len(per_case)} case(s), {len(failures)} failed" + (f"; tables in {out}" if out else ""))
    if failures:
        print(format_failures(failures), file=sys.stderr)
        return 1
    return 0


def discovery_families(args) -> tuple:
    from fairness.discovery import feature_families
    return feature_families(args.features)


def audit_metadata(args) -> dict | None:
    """The metadata of --pred / --nnunet-summary (--meta, else --gt's kits.json); None without one."""
    from data.kits import METADATA_NAME, load_metadata

    path = args.meta or (args.gt / METADATA_NAME if args.gt is not None else None)
    return load_metadata(path) if path is not None and Path(path).is_file() else None


def discover_failures(per_case: pd.DataFrame, metadata, out: Path | None, args, *, metrics, embeddings=None) -> None:
    """--discover: failing subgroups of the first metric, searched on half the cases and confirmed
    on the other (fairness/discovery.py); slices.csv and slice_members.csv beside the tables."""
    from fairness.discovery import run_discovery
    from fairness.metrics import get_metric, metric_view

    metric = get_metric(metrics[0])
    run_discovery(metric_view(per_case, metric), metadata, families=discovery_families(args), metric=metric,
                  seed=args.seed, out_dir=out, region=args.discover_region, embeddings=embeddings)


# ----------------------------------------------------------------------------- --ckpt
def ckpt_out_dir(ckpt_path: Path, args, index: int, n: int) -> Path:
    run_dir = ckpt_path.parent
    name = ckpt_path.stem + (f"-{args.data.name}" if args.data is not None else "")
    if args.split != "test" and args.data is None:
        name += f"-{args.split}"
    if args.out is None:
        return run_dir / "eval" / name
    return args.out if n == 1 else args.out / f"{index:02d}-{run_dir.name}-{name}"


def load_model(ckpt_path: Path, args):
    """(checkpoint, its config, the network on the device in eval mode, the window options)."""
    from config import load_config
    from engine.runtime import amp_settings, pick_device
    from engine.scoring import WindowOptions
    from models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    try:
        cfg = load_config(saved=ckpt["config"])
    except ValueError as exc:  # a checkpoint from an older (or newer) fairkits
        raise ValueError(f"{ckpt_path}: its saved config does not fit this version of fairkits ({exc})") from None
    model = model_from_checkpoint(ckpt, where=str(ckpt_path))
    model.deep_supervision = False
    device = pick_device(args.device)
    amp_dtype, _ = amp_settings(args.amp, device)
    model.to(device).eval()
    ev = cfg["eval"]
    options = WindowOptions(patch_size=tuple(cfg["train"]["patch_size"]),
                            overlap=ev["overlap"] if args.overlap is None else args.overlap,
                            mirror=ev["mirror"] if args.mirror is None else args.mirror,
                            tile_batch=args.tile_batch or ev["tile_batch"], device=device, amp_dtype=amp_dtype)
    return ckpt, cfg, model, options


def checkpoint_cases(ckpt_path: Path, cfg: dict, args, out_dir: Path):
    """(cache, case table, case ids, raw folder, metadata) of what --ckpt evaluates."""
    from data.cache import load_cache_settings, load_case_table
    from data.preprocessing import PreprocessSettings, run_preprocessing
    from data.splits import load_split

    settings = PreprocessSettings.from_dict(cfg["data"]["preprocess"])
    if args.data is not None:  # another cohort, preprocessed the way the model was trained
        raw, metadata, cache = args.data, args.meta, out_dir / "cache"
        result = run_preprocessing(raw, cache, settings, metadata_path=metadata, progress=not args.no_progress)
        if result.failures:
            print(format_failures(result.failures), file=sys.stderr)
        table = load_case_table(cache)
        case_ids = table.index.tolist()
    else:
        raw = Path(cfg["data"]["raw"]) if cfg["data"]["raw"] else None
        metadata, cache = cfg["data"]["metadata"], Path(cfg["data"]["cache"])
        table = load_case_table(cache)
        split = load_split(cache / "splits.json", known_cases=table.index.tolist())
        case_ids = table.index.tolist() if args.split == "all" else split[args.split]
        if args.split == "test" and not split["val"] and ckpt_path.stem == "best":
            print(f"warning: {ckpt_path} was chosen on these test cases (the run had no validation split): its "
                  "test figures are optimistic; last.pt is the unbiased one", file=sys.stderr)
    if load_cache_settings(cache) != settings:
        raise CaseError(str(cache), f"was preprocessed with other settings than {ckpt_path} was trained on")
    if args.cases:
        unknown = [c for c in args.cases if c not in table.index]
        if unknown:
            raise CaseError(",".join(unknown), f"not in the cache {cache}")
        case_ids = [c for c in case_ids if c in set(args.cases)] if args.data is None and args.split != "all" \
            else list(args.cases)
    if not case_ids:
        raise CaseError(str(cache), f"no cases to evaluate (split {args.split!r} is empty)")
    return cache, table, settings, case_ids, raw, metadata


def original_records(raw, metadata, case_ids) -> dict:
    """{case_id: CaseRecord} of the cases whose original label map is in the raw folder."""
    from data.kits import scan_cohort

    records = {}
    if raw is not None and raw.is_dir():
        records = {r.case_id: r for r in scan_cohort(raw, metadata_path=metadata, cases=case_ids).records}
    if len(records) < len(case_ids):
        print(f"note: {len(case_ids) - len(records)} case(s) have no original label map under {raw}: scored "
              "in the preprocessed geometry and not written as NIfTI", file=sys.stderr)
    return records


def evaluate_checkpoint(ckpt_path: Path, args, out_dir: Path):
    """Predict, write back, score one checkpoint; returns (per_case, attributes, failures, metrics,
    metadata, embeddings, config): metadata {case_id: entry} from the raw folder's kits.json, else the
    case table's; embeddings (with --discover and the embedding family) the pooled bottleneck vectors,
    one row per case (else None); config the checkpoint's resolved config (the report's digest)."""
    from data.cache import groups_from_table, table_metadata, with_covariates
    from data.group_index import GroupIndex
    from data.groups import parse_attribute
    from data.kits import load_case
    from data.labels import LabelScheme
    from engine.scoring import CaseScorer
    from fairness.features import image_features

    ckpt, cfg, model, options = load_model(ckpt_path, args)
    cache, table, settings, case_ids, raw, metadata = checkpoint_cases(ckpt_path, cfg, args, out_dir)
    records = original_records(raw, metadata, case_ids)
    # each case routed by its group exactly as in training: the group index the checkpoint stores
    index = None
    if model.routes_by_group:
        stored = ckpt.get("group_index") or {"attribute": cfg["fairness"]["attribute"]}
        index = GroupIndex.from_table(table, settings, stored["attribute"], groups=stored.get("groups"))
    metrics = checkpoint_metrics(args, cfg)
    tolerance = cfg["eval"]["surface_tolerance_mm"] if args.surface_tolerance is None else args.surface_tolerance
    scorer = CaseScorer(model, cache, options, index=index, anisotropy_threshold=settings.anisotropy_threshold,
                        metrics=metrics, tolerance_mm=tolerance)
    scheme = LabelScheme.parse(settings.label_scheme)
    attributes = [parse_attribute(s, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges) for s in args.group]
    columns = {a.name: groups_from_table(table, spec, settings) for a, spec in zip(attributes, args.group)}
    rows, failures = [], []
    with_image = args.discover and "image" in discovery_families(args)   # --discover's CT measurements
    with_embedding = args.discover and "embedding" in discovery_families(args)   # and the model's own view
    vectors = {}
    bar = track(case_ids, desc=f"evaluate {ckpt_path.parent.name}/{ckpt_path.name}", enabled=not args.no_progress)
    for case_id in bar:
        try:
            row = scorer.score(case_id, record=records.get(case_id), scheme=scheme, pred_dir=out_dir / "predictions")
            if with_image and records.get(case_id) is not None and records[case_id].image_path is not None:
                case = load_case(records[case_id], scheme, with_image=True)   # the original CT, in HU
                row.update(image_features(case.image, case.labels))
            if with_embedding:
                vectors[case_id] = scorer.embed(case_id)
            rows.append({**row, **{name: col[case_id] for name, col in columns.items()}})
            bar.set_postfix_str(f"{case_id} mean Dice {row['mean']:.3f}")
        except CaseError as exc:
            failures.append(exc)
    if scorer.reused:
        print(f"kept {scorer.reused} prediction(s) already in {out_dir / 'predictions'} (an earlier, interrupted "
              "evaluation)")
    metadata = {cid: r.meta for cid, r in records.items()} or table_metadata(table)
    embeddings = pd.DataFrame.from_dict(vectors, orient="index").add_prefix("e") if vectors else None
    return with_covariates(pd.DataFrame(rows), table), attributes, failures, metrics, metadata, embeddings, cfg


def checkpoint_metrics(args, cfg: dict) -> list[str]:
    """--metric, else the run's eval.metrics; Dice first, always."""
    from fairness.metrics import check_metrics
    return check_metrics(args.metric or cfg["eval"]["metrics"])


def cmd_ckpt(args) -> int:
    from torch.utils.tensorboard import SummaryWriter

    paths = [Path(p) for p in args.ckpt]
    for path in paths:
        if not path.is_file():
            raise CaseError(str(path), "checkpoint not found")
    all_reports, failed = [], 0
    for i, path in enumerate(paths):
        out_dir = ckpt_out_dir(path, args, i, len(paths))
        on_interrupt(lambda exc, path=path, out_dir=out_dir:
                     f"while evaluating {path}; the predictions written to {out_dir / 'predictions'} are kept: "
                     "the same command continues from them")
        with results_folder(out_dir, overwrite=args.overwrite, marker=FINISHED):
            per_case, attributes, failures, metrics, metadata, embeddings, config = evaluate_checkpoint(path, args,
                                                                                                        out_dir)
            if per_case.empty:
                print(format_failures(failures), file=sys.stderr)
                raise CaseError(str(path), "no case could be scored")
            writer = SummaryWriter(str(out_dir))
            title = f"{path.parent.name}/{path.name}, {len(per_case)} cases"
            all_reports.append(write_reports(per_case, attributes, out_dir, args, title=title, writer=writer,
                                             metrics=metrics))
            writer.close()
            if args.discover:
                discover_failures(per_case, metadata, out_dir, args, metrics=metrics, embeddings=embeddings)
            write_page(out_dir, per_case, args, title=title, settings=config,
                       audited=[("model", str(path)), ("cases", str(args.data or "the run's test split"))])
            save_per_case(per_case, out_dir)
        print(f"\n{path}: scored {len(per_case)} case(s), {len(failures)} failed; results in {out_dir}")
        if failures:
            print(format_failures(failures), file=sys.stderr)
            failed += 1
    if len(paths) > 1:
        agg_dir = args.out if args.out is not None else \
            Path(os.path.commonpath([p.parent.resolve() for p in paths])) / f"eval-{paths[0].stem}-seeds"
        with results_folder(agg_dir, overwrite=args.overwrite, marker="checkpoints.txt"):
            write_seed_tables(all_reports, paths, agg_dir)
        print(f"\nseed aggregate in {agg_dir}")
    return 1 if failed else 0


def write_seed_tables(all_reports, paths, agg_dir: Path) -> None:
    """Each attribute's figures as mean ± std over the checkpoints; checkpoints.txt (last) lists them."""
    from fairness.report import seed_summary_line, seed_table, to_latex, to_markdown

    for name in all_reports[0]:
        table, agg = seed_table([r[name].audit for r in all_reports])
        line = seed_summary_line(agg, all_reports[0][name].audit.metric)
        m = all_reports[0][name].audit.metric
        print(f"\n{len(paths)} checkpoints, grouped by {name} ({m.label} {m.unit}, mean ± std over seeds):\n"
              f"{table.to_string()}\n{line}")
        write_csv(pd.DataFrame(agg).T.rename_axis("figure"), agg_dir / f"seeds_{name}.csv")
        write_text(agg_dir / f"seeds_{name}.md", to_markdown(table) + f"\n{line}\n")
        write_text(agg_dir / f"seeds_{name}.tex", to_latex(table, caption=f"By {name}. {line}"))
    write_text(agg_dir / "checkpoints.txt", "\n".join(str(p.resolve()) for p in paths) + "\n")


# ----------------------------------------------------------------------------- --compare
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


def cmd_compare(args) -> int:
    from fairness.report import compare_display, compare_table

    metric, suffix = compare_metric(args), metric_suffix(args)
    methods, frames, orders = load_methods(args)
    table = compare_table(methods)
    shown = compare_display(table)
    out = compare_out_dir(args)
    with results_folder(out, overwrite=args.overwrite, marker=f"compare{suffix}.csv"):
        write_comparison(table, shown, frames, orders, methods, metric, suffix, out, args)
        write_page(out, None, args, title=f"{len(methods)} methods compared ({metric.label})",
                   audited=[("methods", ", ".join(methods)), ("baseline", str(args.baseline or "-"))],
                   gallery_absent="a comparison draws no cases: each method's own audit folder has its report")
    print(f"\ntables and figures in {out}")
    return 0


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


def cmd_group_dice(args) -> int:
    from fairness import fairness_summary
    groups = {}
    for item in args.group_dice:
        name, sep, value = item.rpartition("=")  # group names may hold "=", like ">=70"
        try:
            dice = float(value)
        except ValueError:
            sep = ""
        if not sep or not name or not math.isfinite(dice if sep else 0.0):
            raise CaseError(item, "expected GROUP=DICE with a finite Dice, e.g. male=84.2")
        if name in groups:
            raise CaseError(item, f"group {name} is given twice ({name}={groups[name]:g} and {item})")
        groups[name] = dice
    s = fairness_summary(groups, overall=args.overall)
    unit = "%" if s["scale"] == "percent" else ""
    print(f"groups {len(groups)}: SD {s['sd']:.2f}{unit}   SER {s['ser']:.2f}   "
          f"worst {s['worst_group']} {s['worst']:g}   gap {s['gap']:.2f}"
          + (f"   ES-Dice {s['es_dice']:.2f}" if args.overall is not None else ""))
    return 0


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
                    help="test-time mirroring over all 8 flips (default: the run's eval.mirror)")
    ck.add_argument("--tile-batch", type=whole(minimum=1), help="tiles per forward pass (default: the run's eval.tile_batch)")
    cmp = parser.add_argument_group("with --compare")
    cmp.add_argument("--baseline", metavar="NAME",
                     help="the method (folder name) the others are compared with, paired over the same test "
                          "cases: Δ mean Dice, ΔSD, ΔSER, Δ worst group with bootstrap CIs and Holm p-values")
    cmp.add_argument("--source", default="auto",
                     help="which results of each run: auto (evaluate.py's best, then last, else train.py's), "
                          "train, or an eval/ subfolder name such as best")
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
        if args.group_dice:
            return cmd_group_dice(args)
        if args.ckpt:
            return cmd_ckpt(args)
        if args.compare:
            return cmd_compare(args)
        if args.pred is not None and args.gt is None:
            parser.error("--pred needs --gt, the folder of reference label maps")
        return cmd_audit(args)
    except Exception as exc:   # bad input of any kind: one line (Ctrl-C and SIGTERM are not Exceptions)
        return report_error(exc, debug=args.debug)


if __name__ == "__main__":
    install_interrupts()
    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(report_interrupt(exc, debug="--debug" in sys.argv))
