"""Reading the training cache that data/preprocessing.py writes (its layout is documented there).

The one place that knows the cache's file names: every module that needs a cached case, the
case table, the settings a cache was made with, or a group column of the case table reads it
here.

Usage:
    image, seg, props = load_preprocessed("cache/", "case_00000")   # arrays memory-mapped
    image, seg = load_arrays("cache/", "case_00000")                 # the per-patch path
    props = load_properties("cache/", "case_00000")
    array_record(image)      # {"shape", "dtype", "crc32"}: what CASE.json records of each array
    table = load_case_table("cache/")                                # cases.csv, indexed by case id
    settings = load_cache_settings("cache/")
    sex = groups_from_table(table, "sex", settings)                  # {case_id: "male" | "female"}
    per_case = with_covariates(per_case, table)                      # + kidney_ml, tumor_ml, bmi_kg_m2
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import CaseError
from data.groups import FIELDS, GroupError, parse_attribute
from data.preprocess_settings import PreprocessSettings
from data.untrusted import case_path, check_case_id, read_json

SETTINGS_FILE = "preprocess.json"
CASES_FILE = "cases.csv"
SOURCE_FILE = "source.json"
# the case-mix columns an audit adjusts a gap for (fairness/adjusted.py): reference volumes, BMI, as
# {per-case column: cases.csv column}. BMI's per-case column carries its unit so that no group
# column can take its name: `--group bmi` puts the BMI group in column "bmi" beside it.
COVARIATE_COLUMNS = {"kidney_ml": "kidney_ml", "tumor_ml": "tumor_ml", "bmi_kg_m2": "bmi"}


def is_complete(out_dir, case_id: str) -> bool:
    out_dir = Path(out_dir)
    return all(case_path(out_dir, case_id, suffix).is_file() for suffix in (".json", ".npy", "_seg.npy"))


def array_record(array: np.ndarray) -> dict:
    """What a case's properties record of each cached array, checked by `preprocess.py verify`."""
    data = np.ascontiguousarray(array)
    return {"shape": list(data.shape), "dtype": data.dtype.str, "crc32": zlib.crc32(memoryview(data).cast("B"))}


class CacheFileError(CaseError):
    """A damaged or missing cache file: `file` is its name, `found` what is wrong with it (the
    message adds how to check the cache)."""

    def __init__(self, case_id: str, path: Path, what: str):
        path = Path(path)
        self.file, self.found = path.name, f"{path} {what}"
        super().__init__(case_id, f"{self.found}; check the cache with `preprocess.py verify --cache "
                                  f"{path.parent}` (--repair redoes damaged cases)")


def _open_array(path: Path, case_id: str, mode):
    try:
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError:
        raise CacheFileError(case_id, path, "is missing") from None
    except (ValueError, OSError, EOFError) as exc:   # truncated, bad header, unreadable
        raise CacheFileError(case_id, path, f"is damaged ({exc})") from None


def load_arrays(cache_dir, case_id: str, *, mmap: bool = True):
    """(image, labels) of one cached case, without parsing its properties (the per-patch path)."""
    cache_dir = Path(cache_dir)
    mode = "r" if mmap else None
    return (_open_array(case_path(cache_dir, case_id, ".npy"), case_id, mode),
            _open_array(case_path(cache_dir, case_id, "_seg.npy"), case_id, mode))


def load_properties(cache_dir, case_id: str) -> dict:
    """CASE.json of one cached case; a damaged file is a CaseError naming it."""
    path = case_path(cache_dir, case_id, ".json")
    if not path.is_file():
        raise CacheFileError(case_id, path, "is missing")
    try:
        props = read_json(path)
    except CaseError as exc:
        raise CacheFileError(case_id, path, f"is damaged ({exc.problem})") from None
    if not isinstance(props, dict) or "resampled_shape" not in props:
        raise CacheFileError(case_id, path, "is not a case's properties (no resampled_shape)")
    return props


def check_arrays(props: dict, image: np.ndarray, labels: np.ndarray, case_id: str, cache_dir) -> None:
    """The arrays have the shape (and, where recorded, the dtype) the properties say."""
    want = {"image": props.get("arrays", {}).get("image"), "labels": props.get("arrays", {}).get("labels")}
    for name, array, suffix in (("image", image, ".npy"), ("labels", labels, "_seg.npy")):
        path = Path(cache_dir) / (case_id + suffix)
        shape = list(want[name]["shape"]) if want[name] else list(props["resampled_shape"])
        if list(array.shape) != shape:
            raise CacheFileError(case_id, path, f"has shape {list(array.shape)}, its properties say {shape}")
        if want[name] and array.dtype.str != want[name]["dtype"]:
            raise CacheFileError(case_id, path, f"has dtype {array.dtype.str}, its properties say {want[name]['dtype']}")


def load_preprocessed(cache_dir, case_id: str, *, mmap: bool = True):
    """(image, labels, properties) of one cached case; the arrays memory-mapped by default."""
    cache_dir = Path(cache_dir)
    if not is_complete(cache_dir, case_id):
        raise CaseError(case_id, f"not (completely) preprocessed in {cache_dir}")
    props = load_properties(cache_dir, case_id)
    image, labels = load_arrays(cache_dir, case_id, mmap=mmap)
    check_arrays(props, image, labels, case_id, cache_dir)
    return image, labels, props


def load_case_table(cache_dir) -> pd.DataFrame:
    """cases.csv of a cache, indexed by case id."""
    path = Path(cache_dir) / CASES_FILE
    if not path.is_file():
        raise CaseError(str(cache_dir), f"has no {CASES_FILE}; run `preprocess.py run` first")
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as exc:   # pandas' ParserError and EmptyDataError are ValueErrors
        raise CaseError(str(path), f"unreadable ({exc})") from None
    if "case_id" not in table.columns:
        raise CaseError(str(path), "has no case_id column")
    for row, case_id in enumerate(table["case_id"], 2):   # row 1 is the header
        check_case_id(case_id, where=f"{path} row {row}")
    return table.set_index("case_id")


def load_cache_settings(cache_dir):
    """The PreprocessSettings a cache was made with."""
    path = Path(cache_dir) / SETTINGS_FILE
    if not path.is_file():
        raise CaseError(str(cache_dir), f"has no {SETTINGS_FILE}; run `preprocess.py run` first")
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        raise CaseError(str(path), "holds no settings mapping")
    return PreprocessSettings.from_dict(saved["settings"])


def groups_from_table(table: pd.DataFrame, spec: str, settings) -> dict[str, str]:
    """{case_id: group} for an attribute over sex, age and BMI (the fields cases.csv keeps)."""
    attribute = parse_attribute(spec, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges)
    groups = {}
    for case_id, row in table.iterrows():
        meta = {FIELDS["sex"]: row["sex"], FIELDS["age"]: row["age"], FIELDS["bmi"]: row["bmi"]}
        try:
            groups[case_id] = attribute.group_of(meta)
        except GroupError as exc:
            raise CaseError(case_id, f"cannot group by {spec!r}: {exc} (cases.csv holds sex, age and bmi)") from None
    return groups


def table_metadata(table: pd.DataFrame) -> dict[str, dict]:
    """{case_id: metadata entry} of what the case table keeps (sex, age, BMI, under kits.json's
    field names): the metadata of a cache whose raw folder's kits.json is not at hand."""
    return {case_id: {FIELDS["sex"]: row.get("sex"), FIELDS["age"]: row.get("age"), FIELDS["bmi"]: row.get("bmi")}
            for case_id, row in table.to_dict("index").items()}


def with_covariates(per_case: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The per-case frame with each case's reference kidney/tumor volume (mL) and BMI from the case table."""
    out = per_case.copy()
    for column, source in COVARIATE_COLUMNS.items():
        if source in table.columns:
            out[column] = out["case_id"].map(table[source])
    return out
