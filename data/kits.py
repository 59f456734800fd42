"""Read a KiTS-layout folder: case folders, metadata, and one case's arrays with their geometry.

Layout (KiTS19; KiTS21/23 are the same apart from the metadata file name):
    ROOT/kits.json                         list of per-case dicts with a `case_id`
    ROOT/case_00000/imaging.nii.gz         CT, optional (../shared/kits19 has labels only)
    ROOT/case_00000/segmentation.nii.gz    labels, (z, y, x)

Every problem with one case is a CaseError naming the case: scanning collects them and goes on,
so batch work can list all failures at the end.

Usage:
    cohort = scan_cohort("../shared/kits19")                 # metadata kits.json by default
    cohort.records[0].sex, cohort.records[0].age, cohort.failures
    case = load_case(cohort.records[0], LabelScheme.parse("kits19"))
    case.labels.shape, case.spacing, case.affine, case.image   # image is None without imaging
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.errors import CaseError
from data.groups import FIELDS, PLAUSIBLE, GroupError, normalise_sex, numeric_value
from data.labels import LabelScheme
from data.nifti import Volume, read_volume
from data.untrusted import check_case_id, read_json

IMAGE_NAME = "imaging.nii.gz"
LABEL_NAME = "segmentation.nii.gz"
METADATA_NAME = "kits.json"
CASE_PATTERN = re.compile(r"^case_\d+$")


@dataclass
class CaseRecord:
    """One case's files and metadata (validated: sex and age are usable)."""
    case_id: str
    label_path: Path
    image_path: Path | None
    meta: dict

    @property
    def sex(self) -> str:
        return normalise_sex(self.meta.get(FIELDS["sex"]))

    @property
    def age(self) -> float:
        return numeric_value(self.meta, FIELDS["age"])

    @property
    def bmi(self) -> float | None:
        try:
            return numeric_value(self.meta, FIELDS["bmi"])
        except GroupError:
            return None


@dataclass
class Cohort:
    root: Path
    metadata_path: Path
    records: list[CaseRecord] = field(default_factory=list)
    failures: list[CaseError] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self.records]


def load_metadata(path) -> dict[str, dict]:
    """kits.json (a list of dicts with `case_id`) as {case_id: meta}; CaseError on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(str(path), "metadata file not found")
    entries = read_json(path)
    if isinstance(entries, dict):  # also accept {case_id: {...}}
        entries = [dict(v, case_id=k) if isinstance(v, dict) else v for k, v in entries.items()]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CaseError(str(path), "expected a list of per-case objects (or {case_id: {...}})")
    by_id: dict[str, dict] = {}
    for i, entry in enumerate(entries):
        case_id = entry.get("case_id")
        if not case_id:
            raise CaseError(str(path), f"entry {i} has no case_id")
        if not isinstance(case_id, str):
            raise CaseError(str(path), f"entry {i} has case_id {json.dumps(case_id)[:40]}; expected a string like case_00012")
        check_case_id(case_id, where=f"{path} entry {i}")
        if case_id in by_id:
            raise CaseError(str(path), f"duplicate case_id {case_id}")
        by_id[case_id] = entry
    return by_id


def validate_meta(case_id: str, meta: dict) -> None:
    """Sex and age are needed by every fairness table, and every number the metadata gives must be
    plausible whatever the grouping (an age of -40 is refused under --group sex too): fail early and by
    name."""
    try:
        normalise_sex(meta.get(FIELDS["sex"]))
        numeric_value(meta, FIELDS["age"])
        for field in PLAUSIBLE:
            if field != FIELDS["age"] and meta.get(field) is not None:
                numeric_value(meta, field)
    except GroupError as exc:
        raise CaseError(case_id, str(exc)) from None


def scan_cohort(root, *, metadata_path=None, require_imaging: bool = False,
                cases: list[str] | None = None) -> Cohort:
    """Find the cases of a KiTS-layout folder and check that each has what work needs.

    A case folder with no metadata entry, a missing label map (or image, when required), or an
    unusable sex/age becomes a failure; the others are returned as records, sorted by id.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaseError(str(root), "data folder not found")
    metadata_path = Path(metadata_path) if metadata_path else root / METADATA_NAME
    metadata = load_metadata(metadata_path)
    cohort = Cohort(root=root, metadata_path=metadata_path)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and CASE_PATTERN.match(p.name))
    wanted = folders
    if cases is not None:
        wanted = list(dict.fromkeys(cases))
        for case_id in wanted:
            if case_id not in folders:
                cohort.failures.append(CaseError(case_id, f"no case folder in {root}"))
        wanted = [c for c in wanted if c in folders]
    for case_id in wanted:
        folder = root / case_id
        try:
            label_path = folder / LABEL_NAME
            if not label_path.is_file():
                raise CaseError(case_id, f"missing {LABEL_NAME}")
            image_path = folder / IMAGE_NAME
            if not image_path.is_file():
                if require_imaging:
                    raise CaseError(case_id, f"missing {IMAGE_NAME}")
                image_path = None
            if case_id not in metadata:
                raise CaseError(case_id, f"not in the metadata file {metadata_path.name}")
            validate_meta(case_id, metadata[case_id])
            cohort.records.append(CaseRecord(case_id, label_path, image_path, metadata[case_id]))
        except CaseError as exc:
            cohort.failures.append(exc)
    return cohort


@dataclass
class CaseArrays:
    """One case in its original geometry."""
    case_id: str
    labels: np.ndarray             # uint8, our scheme
    image: np.ndarray | None       # native dtype (HU), or None for label-only cases
    spacing: tuple[float, float, float]
    affine: np.ndarray
    header: object

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)


def _read_image(path: Path, where: str) -> Volume:
    vol = read_volume(path, where=where)
    if vol.array.dtype.kind == "f":
        vol.array = vol.array.astype(np.float32, copy=False)
        # Integer CT cannot hold NaN; only float files need the (full-volume) check.
        if not np.isfinite(vol.array).all():
            raise CaseError(where, f"{path.name} contains NaN or Inf voxels")
    elif vol.array.dtype.kind not in "iu":
        raise CaseError(where, f"{path.name} has unsupported dtype {vol.array.dtype}")
    return vol


def load_case(record: CaseRecord, scheme: LabelScheme, *, with_image: bool = True) -> CaseArrays:
    """Read labels (mapped to our scheme) and, if present and asked for, the image; check geometry."""
    where = record.case_id
    seg = read_volume(record.label_path, where=where)
    labels = scheme.apply(seg.array, where=where)
    image = None
    if with_image and record.image_path is not None:
        img = _read_image(record.image_path, where)
        if img.array.shape != labels.shape:
            raise CaseError(where, f"image shape {img.array.shape} differs from label shape {labels.shape}")
        if not np.allclose(img.affine, seg.affine, atol=1e-3):
            worst = float(np.abs(img.affine - seg.affine).max())
            raise CaseError(where, f"image and label affines disagree ({record.image_path.name} vs "
                            f"{record.label_path.name}, largest difference {worst:g})")
        image = img.array
    return CaseArrays(case_id=where, labels=labels, image=image, spacing=seg.spacing,
                      affine=seg.affine, header=seg.header)
