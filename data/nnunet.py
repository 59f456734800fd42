"""nnU-Net v2's formats, in and out: the raw dataset, splits_final.json and summary.json.

Export (`preprocess.py export-nnunet`): a KiTS-layout cohort (RAW/case_XXXXX/imaging.nii.gz and
segmentation.nii.gz, RAW/kits.json) becomes the nnU-Net v2 raw dataset NNUNET_RAW/DatasetNNN_Name/:
    imagesTr/CASE_0000.nii.gz   the CT (channel 0), hard-linked to the raw file
    labelsTr/CASE.nii.gz        the label map: linked when the label scheme leaves its values as
                                they are, written mapped when it does not (KiTS21/23's cyst 3 -> 1
                                or 0): a link would hand nnU-Net the unmapped values
    imagesTs/, labelsTs/        with a split: its test cases, never among the training cases
    dataset.json                channel_names {"0": "CT"}; labels as KiTS19's regions: background 0,
                                kidney [1, 2] (label > 0), tumor 2; regions_class_order [1, 2];
                                numTraining; file_ending ".nii.gz"
    splits_final.json           with a split: ours as nnU-Net's fold 0 (below)
    fairkits_export.json        what it was made from: raw folder, metadata, label scheme, split
Links fall back to copies where the file system cannot link (another device, no hard links) or
with copy=True. Every write is atomic (a link or copy is made under a temporary name and renamed;
a linked target is replaced, never written through, so the raw file stays as it was). Re-running
is idempotent and resumes: a target that is already the file it should be (the same inode, the
same bytes, or for a mapped label map the same voxels and affine) is left alone; a target with
other content is an error naming it, unless overwrite=True. A label target linked by an earlier
export under the same label scheme is trusted without reading it again (the manifest records the
scheme; another scheme is refused without overwrite). Case files in the dataset folder that this
export would not write (a case left out, a split changed) are refused, or removed with overwrite.
A case that cannot be exported is listed by name and the others go on; dataset.json and the
split are then not written, so nnU-Net never trains on a dataset with cases silently missing.

The split (our splits.json, data/splits.py) as nnU-Net's: imagesTr holds our train and val
cases, imagesTs our test cases, and splits_final.json has one fold, fold 0, with train = our
train and val = our val, so `nnUNetv2_train N 3d_fullres 0` trains on exactly our training
cases. A split without validation cases gets val = train: nnU-Net's fold "all" (it then reports
its pseudo-Dice on training cases, and `nnUNetv2_train N 3d_fullres all` is the same run). nnU-Net
reads the file from nnUNet_preprocessed/DatasetNNN_Name/splits_final.json; nnU-Net 2.8 copies it
there from the raw dataset folder while planning (nnUNetv2_plan_and_preprocess; a release that does
not needs it copied by hand, or `preprocessed` given to write it there too).

summary.json (nnUNetv2_evaluate_folder, a fold's validation/summary.json): `metric_per_case`, a
list of {"reference_file", "prediction_file", "metrics": {KEY: {"Dice", "IoU", "TP", "FP", "FN",
"TN", "n_pred", "n_ref"}}}, plus "mean" (per KEY, nanmean over cases) and "foreground_mean" (mean
of the KEYs' means). KEY is str() of nnU-Net's label or region: a label is "2", a region tuple
"(1, 2)"; with our dataset.json the regions are (1, 2) and 2, so the keys are "(1, 2)" (kidney)
and "2" (tumor). nnU-Net's Dice is 2 TP / (2 TP + FP + FN) and NaN when TP + FP + FN = 0, which
is our rule (a class empty in reference and prediction is NaN: excluded from group means and
counted; fairness/case_dice.py). The case id is the reference file's name without its ending
(case_00012.nii.gz), or its folder for a KiTS-layout file (case_00012/segmentation.nii.gz).
  read_summary maps a summary onto our per-case table without reading a label map: kidney is the
  entry whose labels are those the label scheme maps to kidney or tumor ({1, 2} for KiTS19,
  {1, 2, 3} for kits23-cyst-kidney), tumor the entry of the labels mapped to tumor ({2}).
  A label-based summary (keys "1" and "2", e.g. `nnUNetv2_evaluate_simple -l 1 2`) has no kidney
  region; kidney is then derived from labels 1 and 2 with TP, FP and FN summed. That is exact for
  n_ref, n_pred and the volumes, but its Dice is a lower bound: a voxel labelled kidney in one
  map and tumor in the other is a kidney true positive yet counted as FP of one label and FN of
  the other, so the summed Dice is the region's minus 2 C / (n_pred + n_ref), C such voxels. A
  note says so; a region summary is exact.
  summary_from_per_case writes our per-case table (with the voxel counts of
  fairness.case_dice.kits_case_counts) as nnU-Net writes it for the two regions, in our labels.

Usage:
    result = export_raw_dataset("raw/k19", "nnUNet_raw", dataset_id=501, split_path="cache/k19/splits.json")
    result.dataset_dir, result.actions, result.json_files, result.failures, result.splits_files
    table = read_summary("nnUNet_results/.../fold_0/validation/summary.json")
    table.frame, table.failures, table.notes          # frame: case_id, kidney, tumor, mean, counts, files
    write_summary("audit/summary.json", summary_from_per_case(per_case))
"""
from __future__ import annotations

import errno
import filecmp
import json
import math
import os
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.atomic import atomic_link, atomic_write, remove_stale_temporaries
from data.errors import CaseError, WriteError
from data.kits import CaseRecord, scan_cohort
from data.labels import LabelScheme, present_values
from data.nifti import read_geometry, read_volume, write_volume
from data.splits import load_split
from data.untrusted import check_case_id, read_json, short
from fairness.case_dice import COUNTS, case_mean, dice_from_counts

FILE_ENDING = ".nii.gz"
CHANNEL = "_0000"                       # the CT is channel 0
LABELS = {"background": 0, "kidney": [1, 2], "tumor": 2}
REGIONS_CLASS_ORDER = [1, 2]
DATASET_FILE = "dataset.json"
SPLITS_FILE = "splits_final.json"
MANIFEST_FILE = "fairkits_export.json"
CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
# str() of nnU-Net's region tuple and label, which is how its summary.json names them
KIDNEY_KEY, TUMOR_KEY = str((1, 2)), str(2)
METRIC_NAMES = ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
FILE_COLUMNS = ("reference_file", "prediction_file")     # a summary's file names, as per-case columns
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")      # fullmatch: `$` would let a trailing newline through
LINK_ERRORS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


# ----------------------------------------------------------------------------- export
def dataset_folder_name(dataset_id: int, name: str) -> str:
    """DatasetNNN_Name, as nnU-Net finds datasets by id (three digits, 1 to 999)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id {dataset_id!r} is not in 1..999 (nnU-Net's DatasetNNN)")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"dataset name {short(name)} may hold only letters, digits, '_' and '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def dataset_json(*, n_training: int, name: str) -> dict:
    return {"channel_names": {"0": "CT"}, "labels": LABELS, "regions_class_order": REGIONS_CLASS_ORDER,
            "numTraining": n_training, "file_ending": FILE_ENDING, "name": name,
            "description": "KiTS-layout cohort exported by fairkits (preprocess.py export-nnunet): kidney = labels "
                           f"1 and 2, tumor = label 2 (KiTS19's regions); source and label scheme in {MANIFEST_FILE}"}


def splits_final(split: dict) -> list[dict]:
    """Our split as nnU-Net's folds: fold 0 = our train / val (val = train when there is none)."""
    train = sorted(split["train"])
    return [{"train": train, "val": sorted(split["val"]) or train}]


@dataclass
class ExportResult:
    dataset_dir: Path
    train_ids: list[str] = field(default_factory=list)     # imagesTr: our train + val
    test_ids: list[str] = field(default_factory=list)      # imagesTs
    actions: Counter = field(default_factory=Counter)      # case files linked / copied / written / kept / removed
    json_files: dict = field(default_factory=dict)         # dataset.json, splits_final.json: path -> written / kept
    failures: list[CaseError] = field(default_factory=list)
    splits_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_raw_dataset(raw, nnunet_raw, *, dataset_id: int, name: str = "KiTS19Fair", metadata_path=None,
                       cases: list[str] | None = None, split_path=None, label_scheme: str = "kits19",
                       preprocessed=None, overwrite: bool = False, copy: bool = False,
                       progress: bool = True) -> ExportResult:
    """Write (or complete) NNUNET_RAW/DatasetNNN_Name from a KiTS-layout folder; see the module docstring."""
    from data.progress import track

    raw, nnunet_raw = Path(raw), Path(nnunet_raw)
    try:
        folder = dataset_folder_name(dataset_id, name)
        scheme = LabelScheme.parse(label_scheme)
    except ValueError as exc:
        raise CaseError("export-nnunet", str(exc)) from None
    result = ExportResult(dataset_dir=nnunet_raw / folder)
    _check_dataset_id(nnunet_raw, folder)
    split = load_split(split_path) if split_path is not None else None
    if split is not None and cases is not None:
        raise CaseError(str(split_path), "a split names the cases itself: give either a split or a case list")
    wanted = [*split["train"], *split["val"], *split["test"]] if split is not None else cases
    cohort = scan_cohort(raw, metadata_path=metadata_path, require_imaging=True, cases=wanted)
    result.failures += cohort.failures
    test = set(split["test"]) if split is not None else set()
    plan = {r.case_id: ("Ts" if r.case_id in test else "Tr") for r in cohort.records}
    result.train_ids = sorted(c for c, where in plan.items() if where == "Tr")
    result.test_ids = sorted(c for c, where in plan.items() if where == "Ts")
    if not result.train_ids and not cohort.failures:
        raise CaseError(str(raw), "no training case to export")
    trusted = _check_manifest(result.dataset_dir, scheme, overwrite)
    _remove_temporaries(result.dataset_dir)
    strays = _strays(result.dataset_dir, {**plan, **{f.where: None for f in cohort.failures}}, overwrite)
    declared = _declared_files(result, split, plan, name, preprocessed)
    if not cohort.failures:   # refuse a conflicting dataset.json / split before placing any file
        for path, text in declared.items():
            _write_json(path, text, overwrite, check_only=True)
    for path in strays:
        path.unlink()
        result.actions["removed"] += 1
    _write_manifest(result.dataset_dir, raw, cohort.metadata_path, scheme, split_path)
    bar = track(cohort.records, desc="export-nnunet", enabled=progress)
    for record in bar:
        try:
            for action in export_case(record, result.dataset_dir, plan[record.case_id], scheme,
                                      trusted=trusted, overwrite=overwrite, copy=copy):
                result.actions[action] += 1
            bar.set_postfix_str(record.case_id)
        except CaseError as exc:
            result.failures.append(exc)
    if result.failures:
        result.notes.append(f"{DATASET_FILE} and {SPLITS_FILE} not written: fix the failed cases (or leave them "
                            "out with --cases / another split) and run the same command again")
        return result
    for path, text in declared.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        result.json_files[path] = _write_json(path, text, overwrite)
    if split is not None and not split["val"]:
        result.notes.append(f"the split has no validation cases: fold 0 validates on its {len(result.train_ids)} "
                            "training cases (nnU-Net's fold 'all')")
    return result


def _declared_files(result: ExportResult, split, plan: dict, name: str, preprocessed) -> dict:
    """{path: JSON text} of dataset.json and, with a split, splits_final.json (twice with `preprocessed`)."""
    text = json.dumps(dataset_json(n_training=len(result.train_ids), name=name), indent=4)
    files = {result.dataset_dir / DATASET_FILE: text}
    if split is not None:
        folds = json.dumps(splits_final({k: [c for c in split[k] if c in plan] for k in ("train", "val")}), indent=4)
        result.splits_files = [result.dataset_dir / SPLITS_FILE]
        if preprocessed is not None:
            result.splits_files.append(Path(preprocessed) / result.dataset_dir.name / SPLITS_FILE)
        files.update({path: folds for path in result.splits_files})
    return files


def export_case(record: CaseRecord, dataset_dir: Path, subset: str, scheme: LabelScheme, *, trusted: bool,
                overwrite: bool, copy: bool) -> list[str]:
    """Place one case's label map and CT; returns what happened to each file (linked, copied, ...)."""
    case_id = record.case_id
    image_dst = dataset_dir / f"images{subset}" / f"{case_id}{CHANNEL}{FILE_ENDING}"
    label_dst = dataset_dir / f"labels{subset}" / f"{case_id}{FILE_ENDING}"
    for folder in (image_dst.parent, label_dst.parent):
        folder.mkdir(parents=True, exist_ok=True)
    if trusted and label_dst.exists() and os.path.samefile(record.label_path, label_dst):
        # linked by an earlier export under this label scheme: its values were checked then
        return [_place(record.image_path, image_dst, case_id, overwrite=overwrite, copy=copy), "kept"]
    seg = read_volume(record.label_path, where=case_id)
    mapped = scheme.apply(seg.array, where=case_id)
    shape, _, affine = read_geometry(record.image_path, where=case_id)
    if shape != tuple(seg.array.shape):
        raise CaseError(case_id, f"image shape {shape} differs from label shape {tuple(seg.array.shape)}")
    if not np.allclose(affine, seg.affine, atol=1e-3):
        raise CaseError(case_id, f"image and label affines disagree (largest difference "
                        f"{float(np.abs(affine - seg.affine).max()):g})")
    values = present_values(seg.array)
    if all(scheme.as_dict[int(v)] == int(v) for v in values):   # the file already holds our labels
        label_action = _place(record.label_path, label_dst, case_id, overwrite=overwrite, copy=copy)
    else:
        label_action = _write_mapped(mapped, seg, label_dst, case_id, overwrite=overwrite)
    return [_place(record.image_path, image_dst, case_id, overwrite=overwrite, copy=copy), label_action]


def _place(src: Path, dst: Path, case_id: str, *, overwrite: bool, copy: bool) -> str:
    """dst as a hard link to src (a copy where linking fails, or with copy); 'kept' if it already is."""
    if dst.exists():
        if os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False):
            return "kept"
        if not overwrite:
            raise CaseError(case_id, f"{dst} exists with other content than {src}; pass --overwrite to replace it")
    if not copy:
        try:
            atomic_link(src, dst)   # os.replace swaps the name: a linked old target's data is untouched
            return "linked"
        except WriteError as exc:
            if exc.error.errno not in LINK_ERRORS:
                raise
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    return "copied"


def _write_mapped(mapped: np.ndarray, seg, dst: Path, case_id: str, *, overwrite: bool) -> str:
    """A label map in our values, written (never linked), with the original affine and header."""
    if dst.exists():
        have = read_volume(dst, where=f"{case_id} ({dst})")
        if have.array.shape == mapped.shape and np.array_equal(have.array, mapped) \
                and np.allclose(have.affine, seg.affine, atol=1e-6):
            return "kept"
        if not overwrite:
            raise CaseError(case_id, f"{dst} exists with other labels than the label scheme gives; pass "
                            "--overwrite to replace it")
    write_volume(dst, mapped, seg.affine, header=seg.header)
    return "written"


def _write_json(path: Path, text: str, overwrite: bool, *, check_only: bool = False) -> str:
    """A JSON file written once: the same content again is 'kept', other content needs overwrite."""
    if path.exists():
        try:
            same = read_json(path) == json.loads(text)
        except CaseError:
            same = False
        if same:
            return "kept"
        if not overwrite:
            raise CaseError(str(path), "exists with other content; pass --overwrite to replace it")
    if check_only:
        return "to write"
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return "written"


def _check_dataset_id(nnunet_raw: Path, folder: str) -> None:
    """nnU-Net finds a dataset by its id alone and refuses an id that two folders share."""
    if not nnunet_raw.is_dir():
        return
    prefix = folder.split("_", 1)[0] + "_"
    others = sorted(p.name for p in nnunet_raw.iterdir() if p.name.startswith(prefix) and p.name != folder)
    if others:
        raise CaseError(str(nnunet_raw / folder), f"dataset id {prefix[7:10]} is taken by {', '.join(others)}: "
                        "choose another --id")


def _check_manifest(dataset_dir: Path, scheme: LabelScheme, overwrite: bool) -> bool:
    """Whether links made earlier can be trusted (same label scheme); another scheme needs overwrite."""
    path = dataset_dir / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        earlier = read_json(path).get("label_scheme")
    except (CaseError, AttributeError):
        return False
    if earlier == str(scheme):
        return True
    if not overwrite:
        raise CaseError(str(dataset_dir), f"was exported with label scheme {{{earlier}}}, not {{{scheme}}}; pass "
                        "--overwrite to export it again with this one")
    return False


def _remove_temporaries(dataset_dir: Path) -> None:
    """Temporaries of a killed export: a label map's ends in .nii.gz, which nnU-Net would take for a case."""
    for folder in (dataset_dir, *(dataset_dir / sub for sub in CASE_FOLDERS)):
        if folder.is_dir():
            remove_stale_temporaries(folder)


def _write_manifest(dataset_dir: Path, raw: Path, metadata: Path, scheme: LabelScheme, split_path) -> None:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    record = {"raw": str(raw.resolve()), "metadata": str(Path(metadata).resolve()), "label_scheme": str(scheme),
              "split": str(Path(split_path).resolve()) if split_path is not None else None}
    atomic_write(dataset_dir / MANIFEST_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"))


def _strays(dataset_dir: Path, plan: dict, overwrite: bool) -> list[Path]:
    """Case files this export would not write (plan: case id -> 'Tr', 'Ts', or None for a failed case):
    refused, or with overwrite returned to be removed."""
    strays = []
    for sub in CASE_FOLDERS:
        if not (dataset_dir / sub).is_dir():
            continue
        for path in sorted((dataset_dir / sub).glob(f"*{FILE_ENDING}")):
            if path.name.startswith("."):
                continue   # a live writer's temporary
            case_id = path.name[:-len(FILE_ENDING)]
            case_id = case_id[:-len(CHANNEL)] if sub.startswith("images") and case_id.endswith(CHANNEL) else case_id
            if case_id in plan and plan[case_id] in (None, sub[-2:]):
                continue   # a failed case keeps what it has: the next run, once fixed, completes it
            strays.append(path)
    if strays and not overwrite:
        shown = ", ".join(f"{p.parent.name}/{p.name}" for p in strays[:5])
        raise CaseError(str(dataset_dir), f"holds {len(strays)} case file(s) this export would not write ({shown}"
                        f"{' ...' if len(strays) > 5 else ''}); pass --overwrite to remove them, or use another --id")
    return strays


# ----------------------------------------------------------------------------- summary.json
def parse_key(key: str) -> frozenset[int]:
    """The labels of a summary key: "2" -> {2}, "(1, 2)" -> {1, 2}, "(2,)" -> {2}."""
    text = str(key).strip().strip("()[]")
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"metric key {key!r} is neither a label (\"2\") nor a region (\"(1, 2)\")") from None


def case_id_from_file(path: str) -> str:
    """case_00012 from .../case_00012.nii.gz (nnU-Net) or .../case_00012/segmentation.nii.gz (KiTS)."""
    p = Path(str(path))
    stem = p.name[:-len(FILE_ENDING)] if p.name.endswith(FILE_ENDING) else p.stem
    return p.parent.name if stem in ("segmentation", "imaging") and p.parent.name else stem


@dataclass
class SummaryTable:
    frame: pd.DataFrame                      # case_id, kidney, tumor, mean, COUNTS, reference_file, prediction_file
    failures: list[CaseError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_summary(path, *, label_scheme: str = "kits19") -> SummaryTable:
    """nnU-Net's summary.json as our per-case table (no label map is read); see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise CaseError(str(path), "summary file not found")
    summary = read_json(path)
    cases = summary.get("metric_per_case") if isinstance(summary, dict) else None
    if not isinstance(cases, list):
        raise CaseError(str(path), "has no list 'metric_per_case': not an nnU-Net summary.json")
    try:
        mapping = LabelScheme.parse(label_scheme).as_dict
    except ValueError as exc:
        raise CaseError(str(path), str(exc)) from None
    classes = {"kidney": frozenset(s for s, d in mapping.items() if d > 0),
               "tumor": frozenset(s for s, d in mapping.items() if d == 2)}
    table, rows, summed = SummaryTable(frame=pd.DataFrame()), {}, 0
    for i, entry in enumerate(cases):
        where = f"{path.name} entry {i}"
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
                raise CaseError(where, "has no 'metrics'")
            case_id = case_id_from_file(entry.get("reference_file") or "")
            if not case_id:
                raise CaseError(where, "has no reference_file to take the case id from")
            check_case_id(case_id, where=where)
            where = case_id
            if case_id in rows:
                raise CaseError(case_id, f"is listed twice in {path.name}")
            row, was_summed = _case_row(entry, classes, where)
            if row["kidney_tp"] + row["kidney_fn"] == 0:   # as when scoring files: KiTS Dice needs a kidney
                raise CaseError(case_id, "reference label map is empty (no kidney): nothing to score against")
            rows[case_id] = {"case_id": case_id, **row, "reference_file": entry.get("reference_file"),
                             "prediction_file": entry.get("prediction_file")}
            summed += was_summed
        except CaseError as exc:
            table.failures.append(exc)
    table.frame = pd.DataFrame(list(rows.values()))
    if summed:
        table.notes.append(f"{path.name} is label-based (no kidney region): kidney Dice of {summed} case(s) from "
                           f"labels {', '.join(map(str, sorted(classes['kidney'])))} with TP/FP/FN summed, a lower "
                           "bound (voxels labelled kidney in one map and tumor in the other count as errors); "
                           "evaluate with the regions of our dataset.json, or audit the files with --pred, for "
                           "the exact value")
    return table


def _case_row(entry: dict, classes: dict, where: str) -> tuple[dict, bool]:
    try:
        metrics = {parse_key(k): v for k, v in entry["metrics"].items()}
    except ValueError as exc:
        raise CaseError(where, str(exc)) from None
    row, summed = {}, False
    for name, labels in classes.items():
        if labels in metrics:
            tp, fp, fn, tn = _counts(metrics[labels], where, labels)
            value = _number(metrics[labels], "Dice", where, labels)
            expected = dice_from_counts(tp=tp, fp=fp, fn=fn)
            if not (math.isnan(value) and math.isnan(expected)) and not abs(value - expected) <= 1e-9:
                raise CaseError(where, f"Dice {value} of {_key(labels)} disagrees with its TP/FP/FN ({expected})")
        elif labels and all(frozenset([label]) in metrics for label in labels):
            parts = [_counts(metrics[frozenset([label])], where, label) for label in sorted(labels)]
            tp, fp, fn = (sum(p[k] for p in parts) for k in range(3))
            tn = sum(parts[0]) - tp - fp - fn
            value, summed = dice_from_counts(tp=tp, fp=fp, fn=fn), summed or len(labels) > 1
        else:
            raise CaseError(where, f"has no entry for {name} ({_key(labels)}) or its labels; its keys are "
                            f"{', '.join(sorted(entry['metrics']))}")
        row.update({name: value, f"{name}_tp": tp, f"{name}_fp": fp, f"{name}_fn": fn})
        row["voxels"] = tp + fp + fn + tn
    row["mean"] = case_mean(kidney=row["kidney"], tumor=row["tumor"])
    return {k: row[k] for k in ("kidney", "tumor", "mean", *COUNTS)}, summed


def _key(labels) -> str:
    labels = sorted(labels) if not isinstance(labels, int) else [labels]
    return str(labels[0]) if len(labels) == 1 else str(tuple(labels))


def _number(metrics: dict, name: str, where: str, labels) -> float:
    value = metrics.get(name) if isinstance(metrics, dict) else None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CaseError(where, f"{_key(labels)} has no number {name!r}")
    return float(value)


def _counts(metrics: dict, where: str, labels) -> tuple[int, int, int, int]:
    values = [_number(metrics, name, where, labels) for name in ("TP", "FP", "FN", "TN")]
    if not all(math.isfinite(v) and v >= 0 and v == int(v) for v in values):
        raise CaseError(where, f"{_key(labels)} has TP/FP/FN/TN {values}: voxel counts must be whole numbers >= 0")
    return tuple(int(v) for v in values)


def summary_from_per_case(per_case: pd.DataFrame) -> dict:
    """Our per-case table (kidney, tumor and the voxel counts of fairness.case_dice.COUNTS) as the
    summary.json nnU-Net writes for the regions (1, 2) and 2; files named by case id when the table
    has no reference_file / prediction_file."""
    missing = [c for c in ("case_id", "kidney", "tumor", *COUNTS) if c not in per_case.columns]
    if missing:
        raise CaseError("summary.json", f"the per-case table has no {', '.join(missing)} (voxel counts come "
                        "with every table evaluate.py writes)")
    cases = []
    for row in per_case.to_dict("records"):
        metrics = {}
        for key, name in ((KIDNEY_KEY, "kidney"), (TUMOR_KEY, "tumor")):
            tp, fp, fn = (int(row[f"{name}_{c}"]) for c in ("tp", "fp", "fn"))
            metrics[key] = {"Dice": float(row[name]), "IoU": tp / (tp + fp + fn) if tp + fp + fn else math.nan,
                            "TP": tp, "FP": fp, "FN": fn, "TN": int(row["voxels"]) - tp - fp - fn,
                            "n_pred": tp + fp, "n_ref": tp + fn}
        files = {k: row.get(k) if isinstance(row.get(k), str) else f"{row['case_id']}{FILE_ENDING}"
                 for k in FILE_COLUMNS}
        cases.append({**files, "metrics": metrics})
    mean = {}
    with warnings.catch_warnings():   # a metric NaN in every case (no tumor anywhere) stays NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        for key in (KIDNEY_KEY, TUMOR_KEY):
            mean[key] = {m: float(np.nanmean([c["metrics"][key][m] for c in cases])) for m in METRIC_NAMES}
    foreground = {m: float(np.mean([mean[k][m] for k in mean])) for m in METRIC_NAMES}
    return {"foreground_mean": foreground, "mean": mean, "metric_per_case": cases}


def write_summary(path, summary: dict) -> Path:
    """As nnU-Net saves it: sorted keys, indent 4, NaN written as NaN (nnU-Net's empty classes)."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(summary, indent=4, sort_keys=True) + "\n"))
