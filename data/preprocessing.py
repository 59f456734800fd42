"""The study's preprocessing, in a written order, and the training cache it produces.

Order per case (SPEC §1; nnU-Net's order, so predictions can be mapped back):
    1. read labels (mapped to {0,1,2}) and the CT, in the original geometry;
    2. crop to the body box (voxels above `body_threshold_hu`, united with the labelled voxels),
       in the original geometry: the box is recorded so the crop can be undone;
    3. resample to `target_spacing` (z, y, x) with nnU-Net's rule (data/resample.py);
       new shape = round(old_spacing / new_spacing * cropped shape);
    4. clip to `clip` HU, then normalise (x - mean) / std;
    5. sample voxel locations of each foreground class, for foreground-oversampled patches.

Cache layout (OUT/):
    preprocess.json            the settings used (re-running with other settings is refused)
    CASE.npy                   image, float32 (z, y, x), memory-mappable
    CASE_seg.npy               labels, uint8 (z, y, x)
    CASE.json                  properties: geometry, crop box, class volumes, class locations, and
                               shape / dtype / CRC-32 of both arrays (`arrays`)
    cases.csv                  per-case metadata, groups, shapes and class volumes
    source.json                the raw folder (and metadata file) it was made from
A case whose CASE.json does not parse is preprocessed again by the next run; `preprocess.py
verify --cache OUT` checks every file (data/verify.py).
Each case's files are written under temporary names and renamed, properties last: a case is
complete exactly when CASE.json exists, so a killed run resumes where it stopped.

Usage:
    settings = PreprocessSettings()                       # the study's values
    result = run_preprocessing("raw/", "cache/", settings, workers=2)

The cache is read through data/cache.py (load_preprocessed, load_case_table, ...).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.atomic import atomic_write, remove_stale_temporaries
from data.cache import CASES_FILE, SETTINGS_FILE, SOURCE_FILE, array_record, is_complete, load_properties
from data.errors import CaseError
from data.groups import FIELDS, GroupError, parse_attribute
from data.kits import CaseRecord, load_case, scan_cohort
from data.labels import LabelScheme
from data.preprocess_settings import PreprocessSettings
from data.progress import track
from data.untrusted import read_json
from data.resample import resample_image, resample_labels, resampled_shape, separate_axis

FORMAT_VERSION = 1


def body_box(image: np.ndarray | None, labels: np.ndarray, threshold: float) -> tuple[tuple[int, int], ...]:
    """Bounding box [start, stop) per axis of body voxels united with labelled voxels."""
    boxes = []
    masks = [labels > 0] if image is None else [labels > 0, image > threshold]
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        present = np.zeros(labels.shape[axis], dtype=bool)
        for mask in masks:
            present |= mask.any(axis=others)
        hits = np.flatnonzero(present)
        boxes.append((int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, labels.shape[axis]))
    return tuple(boxes)


def sample_class_locations(labels: np.ndarray, classes, rng: np.random.Generator, *,
                           n_samples: int, min_coverage: float) -> dict[str, list[list[int]]]:
    """Up to n_samples voxel indices per class (at least min_coverage of the class), nnU-Net's rule."""
    out = {}
    for c in classes:
        locs = np.argwhere(labels == c)
        k = min(n_samples, len(locs))
        k = max(k, int(np.ceil(len(locs) * min_coverage)))
        if k < len(locs):
            locs = locs[np.sort(rng.choice(len(locs), size=k, replace=False))]
        out[str(c)] = locs.astype(int).tolist()
    return out


def class_volumes_ml(labels: np.ndarray, spacing) -> dict[str, float]:
    return volumes_ml(kidney_voxels=int(np.count_nonzero(labels)), tumor_voxels=int(np.count_nonzero(labels == 2)),
                      spacing=spacing)


def volumes_ml(*, kidney_voxels: int, tumor_voxels: int, spacing) -> dict[str, float]:
    """{"kidney_ml", "tumor_ml"} from voxel counts (e.g. a summary's n_ref) and the spacing in mm."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {"kidney_ml": kidney_voxels * voxel_ml, "tumor_ml": tumor_voxels * voxel_ml}


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".npy")


def _save_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def case_groups(meta: dict, settings: PreprocessSettings) -> dict:
    """Sex, age, BMI and their groups for cases.csv (BMI may be missing; sex and age may not)."""
    row = {"sex": parse_attribute("sex").group_of(meta),
           "age": float(meta[FIELDS["age"]]),
           "age_group": parse_attribute("age", age_edges=settings.age_edges).group_of(meta)}
    try:
        row["bmi_group"] = parse_attribute("bmi", bmi_edges=settings.bmi_edges).group_of(meta)
        row["bmi"] = float(meta[FIELDS["bmi"]])
    except GroupError:
        row["bmi"], row["bmi_group"] = float("nan"), ""
    return row


def preprocess_case(record: CaseRecord, settings: PreprocessSettings, out_dir) -> dict:
    """Run the whole order on one case and write its cache files; return its cases.csv row."""
    out_dir = Path(out_dir)
    case = load_case(record, LabelScheme.parse(settings.label_scheme))
    if case.image is None:
        raise CaseError(record.case_id, "has no imaging.nii.gz; preprocessing needs the CT "
                        "(for label maps alone, run `preprocess.py synthesize --from-labels` first)")
    if not case.labels.any():  # a reference segmentation without kidney cannot train nor score
        raise CaseError(record.case_id, f"label map is empty (no kidney) in {record.label_path.name}: "
                        "a reference segmentation needs kidney voxels")
    box = body_box(case.image, case.labels, settings.body_threshold_hu)
    crop = tuple(slice(a, b) for a, b in box)
    image, labels = case.image[crop], case.labels[crop]
    new_shape = resampled_shape(image.shape, case.spacing, settings.target_spacing)
    common = dict(new_shape=new_shape, anisotropy_threshold=settings.anisotropy_threshold)
    image = resample_image(image, case.spacing, settings.target_spacing, order=settings.image_order,
                           order_z=settings.image_order_z, **common)
    np.clip(image, settings.clip[0], settings.clip[1], out=image)
    image -= settings.mean
    image /= settings.std
    seg = resample_labels(labels, case.spacing, settings.target_spacing, order=settings.label_order,
                          order_z=settings.label_order_z, classes=(1, 2), **common)
    rng = np.random.default_rng([settings.seed, int("".join(ch for ch in record.case_id if ch.isdigit()) or 0)])
    props = {
        "case_id": record.case_id,
        "format_version": FORMAT_VERSION,
        "original_shape": list(case.shape),
        "original_spacing": list(case.spacing),
        "original_affine": np.asarray(case.affine).tolist(),
        "crop_box": [list(b) for b in box],
        "cropped_shape": list(labels.shape),
        "resampled_shape": list(new_shape),
        "spacing": list(settings.target_spacing),
        "separate_axis": separate_axis(case.spacing, settings.target_spacing, settings.anisotropy_threshold),
        "volumes_original": class_volumes_ml(case.labels, case.spacing),
        "class_locations": sample_class_locations(seg, (1, 2), rng, n_samples=settings.samples_per_class,
                                                  min_coverage=settings.min_class_coverage),
    }
    image = image.astype(np.float32, copy=False)
    # shape, dtype and checksum of what is written: `preprocess.py verify` finds a damaged file
    props["arrays"] = {"image": array_record(image), "labels": array_record(seg)}
    _save_npy(out_dir / f"{record.case_id}.npy", image)
    _save_npy(out_dir / f"{record.case_id}_seg.npy", seg)
    _save_json(out_dir / f"{record.case_id}.json", props)   # last: the case is complete once it exists
    return summary_row(record, props, settings)


def summary_row(record: CaseRecord, props: dict, settings: PreprocessSettings) -> dict:
    row = {"case_id": record.case_id, **case_groups(record.meta, settings)}
    row.update({
        "original_shape": "x".join(map(str, props["original_shape"])),
        "original_spacing": "x".join(f"{s:g}" for s in props["original_spacing"]),
        "resampled_shape": "x".join(map(str, props["resampled_shape"])),
        **{k: round(v, 3) for k, v in props["volumes_original"].items()},
        "has_tumor": props["volumes_original"]["tumor_ml"] > 0,
    })
    return row


def check_settings(out_dir: Path, settings: PreprocessSettings, *, overwrite: bool) -> None:
    """Refuse to mix caches made with different settings, unless asked to start over."""
    path = out_dir / SETTINGS_FILE
    record = {"format_version": FORMAT_VERSION, "settings": settings.to_dict()}
    if path.is_file():
        try:
            previous = read_json(path)
        except CaseError:
            previous = None   # damaged: differs, and is replaced only with overwrite
        if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
            previous = {"settings": {}}
        if previous != record:
            if not overwrite:
                changed = sorted(k for k, v in record["settings"].items()
                                 if previous.get("settings", {}).get(k) != v)
                raise CaseError(str(out_dir), "was preprocessed with other settings "
                                f"(differing: {', '.join(changed) or 'format version'}); choose another "
                                "--out or pass --overwrite to redo every case")
            for p in out_dir.glob("case_*.json"):
                p.unlink()  # completion markers: every case is redone with the new settings
        else:
            return  # the same settings: leave the file as it is
    _save_json(path, record)


@dataclass
class PreprocessResult:
    rows: list[dict] = field(default_factory=list)
    failures: list[CaseError] = field(default_factory=list)
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0


def _run_one(job):
    record, settings, out_dir = job
    try:
        return record.case_id, preprocess_case(record, settings, out_dir), None
    except CaseError as exc:
        return record.case_id, None, exc
    except MemoryError:   # one case too large for this machine: the batch goes on with the others
        return record.case_id, None, CaseError(record.case_id, "out of memory while preprocessing it")


def _worker(job):
    import signal

    import torch  # each worker process gets one core's share, not all of them
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to answer, in one line
    return _run_one(job)


def run_preprocessing(raw_dir, out_dir, settings: PreprocessSettings, *, workers: int = 1,
                      metadata_path=None, cases: list[str] | None = None, overwrite: bool = False,
                      progress: bool = True) -> PreprocessResult:
    """Preprocess every case of a KiTS-layout folder into `out_dir`; cases already done are kept."""
    start = time.time()
    out_dir = Path(out_dir)
    cohort = scan_cohort(raw_dir, metadata_path=metadata_path, require_imaging=True, cases=cases)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaseError(str(out_dir), f"cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK):
        raise CaseError(str(out_dir), "output folder is not writable")
    check_settings(out_dir, settings, overwrite=overwrite)
    remove_stale_temporaries(out_dir)
    result = PreprocessResult(failures=list(cohort.failures))
    todo = []
    write_source(out_dir, raw_dir, metadata_path)
    for record in cohort.records:
        props = _readable_properties(out_dir, record.case_id) if is_complete(out_dir, record.case_id) else None
        if props is not None:
            result.rows.append(summary_row(record, props, settings))
            result.skipped += 1
        else:
            todo.append(record)
    bar = track(total=len(todo), desc="preprocess", enabled=progress and len(todo) > 0)
    jobs = [(r, settings, out_dir) for r in todo]
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            outcomes = pool.imap_unordered(_worker, jobs)
            _collect(outcomes, result, bar)
    else:
        _collect((_run_one(job) for job in jobs), result, bar)
    bar.close()
    result.rows.sort(key=lambda r: r["case_id"])
    if result.rows:
        atomic_write(out_dir / CASES_FILE, lambda tmp: pd.DataFrame(result.rows).to_csv(tmp, index=False))
    result.seconds = time.time() - start
    return result


def _readable_properties(out_dir: Path, case_id: str) -> dict | None:
    """A done case's properties; None when they do not parse (the case is then done again)."""
    try:
        return load_properties(out_dir, case_id)
    except CaseError:
        return None


def write_source(out_dir: Path, raw_dir, metadata_path) -> None:
    """CACHE/source.json: the raw folder (and metadata) the cache was first made from, for
    `verify --repair`; written once, so a later run (or a failing one) leaves it as it is."""
    if (out_dir / SOURCE_FILE).is_file():
        return
    _save_json(out_dir / SOURCE_FILE, {"raw": str(Path(raw_dir).resolve()),
                                       "metadata": str(Path(metadata_path).resolve()) if metadata_path else None})


def _collect(outcomes, result: PreprocessResult, bar) -> None:
    for case_id, row, error in outcomes:
        if error is None:
            result.rows.append(row)
            result.done += 1
        else:
            result.failures.append(error)
        bar.set_postfix_str(case_id)
        bar.update(1)


def summary_line(result: PreprocessResult, out_dir) -> str:
    return (f"preprocessed {result.done} case(s), kept {result.skipped} already done, "
            f"{len(result.failures)} failed, in {result.seconds:.1f} s -> {out_dir}")
