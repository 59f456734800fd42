"""Reading the training cache that data/preprocessing.py writes (its layout is documented there).

The one place that knows the cache's file names: every module that needs a cached case, the
case table, the settings a cache was made with, or a group column of the case table reads it
here.

Usage:
    image, seg, props = load_preprocessed("cache/", "case_00000")   # arrays memory-mapped
    image, seg = load_arrays("cache/", "case_00000")                 # the per-patch path
    table = load_case_table("cache/")                                # cases.csv, indexed by case id
    settings = load_cache_settings("cache/")
    sex = groups_from_table(table, "sex", settings)                  # {case_id: "male" | "female"}
    per_case = with_covariates(per_case, table)                      # + kidney_ml, tumor_ml, bmi
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import CaseError
from data.groups import FIELDS, GroupError, parse_attribute

SETTINGS_FILE = "preprocess.json"
CASES_FILE = "cases.csv"
# the case-mix columns an audit adjusts a gap for (fairness/significance.py): reference volumes, BMI
COVARIATE_COLUMNS = ("kidney_ml", "tumor_ml", "bmi")


def is_complete(out_dir, case_id: str) -> bool:
    out_dir = Path(out_dir)
    return all((out_dir / f"{case_id}{suffix}").is_file() for suffix in (".json", ".npy", "_seg.npy"))


def load_arrays(cache_dir, case_id: str, *, mmap: bool = True):
    """(image, labels) of one cached case, without parsing its properties (the per-patch path)."""
    cache_dir = Path(cache_dir)
    mode = "r" if mmap else None
    return (np.load(cache_dir / f"{case_id}.npy", mmap_mode=mode),
            np.load(cache_dir / f"{case_id}_seg.npy", mmap_mode=mode))


def load_preprocessed(cache_dir, case_id: str, *, mmap: bool = True):
    """(image, labels, properties) of one cached case; the arrays memory-mapped by default."""
    cache_dir = Path(cache_dir)
    if not is_complete(cache_dir, case_id):
        raise CaseError(case_id, f"not (completely) preprocessed in {cache_dir}")
    image, labels = load_arrays(cache_dir, case_id, mmap=mmap)
    props = json.loads((cache_dir / f"{case_id}.json").read_text())
    return image, labels, props


def load_case_table(cache_dir) -> pd.DataFrame:
    """cases.csv of a cache, indexed by case id."""
    path = Path(cache_dir) / CASES_FILE
    if not path.is_file():
        raise CaseError(str(cache_dir), f"has no {CASES_FILE}; run `preprocess.py run` first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""]).set_index("case_id")


def load_cache_settings(cache_dir):
    """The PreprocessSettings a cache was made with."""
    from data.preprocessing import PreprocessSettings

    path = Path(cache_dir) / SETTINGS_FILE
    if not path.is_file():
        raise CaseError(str(cache_dir), f"has no {SETTINGS_FILE}; run `preprocess.py run` first")
    return PreprocessSettings.from_dict(json.loads(path.read_text())["settings"])


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


def with_covariates(per_case: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The per-case frame with each case's reference kidney/tumor volume (mL) and BMI from the case table."""
    out = per_case.copy()
    for column in COVARIATE_COLUMNS:
        if column in table.columns and column not in out.columns:
            out[column] = out["case_id"].map(table[column])
    return out
