"""Per-case tables of predictions made elsewhere: label maps scored against a KiTS-layout reference
folder, or nnU-Net's own summary.json read as it is, each joined to the cases' metadata and groups.

    from audit.predictions import score_predictions
    per_case, attributes, failures = score_predictions(Path("preds"), Path("../shared/kits19"), group_specs=["sex"])

What `evaluate.py --pred` and `--nnunet-summary` score; the tables and statistics are audit/results.py's.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.errors import CaseError
from data.progress import track
from data.untrusted import case_path


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


def audit_metadata(args) -> dict | None:
    """The metadata of --pred / --nnunet-summary (--meta, else --gt's kits.json); None without one."""
    from data.kits import METADATA_NAME, load_metadata

    path = args.meta or (args.gt / METADATA_NAME if args.gt is not None else None)
    return load_metadata(path) if path is not None and Path(path).is_file() else None
