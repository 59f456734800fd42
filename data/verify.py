"""Checking a training cache file by file, and redoing the damaged cases.

What `verify_cache` checks (every problem is one row: case, file, what is wrong):
    preprocess.json   parses (the settings; without it nothing else can be trusted)
    cases.csv         parses; every case it lists has its three files, every cached case is in it
    CASE.json         parses and is a case's properties
    CASE.npy          opens, with the shape, dtype and CRC-32 the properties record (caches
    CASE_seg.npy      written before checksums were recorded: shape only, and counted as such)
    splits.json       parses; every case it lists is in cases.csv, and in one split only

`repair_cache` deletes the damaged cases' files and preprocesses them again from the raw folder
the cache records (source.json) or the one given, with the cache's own settings; then checks again.

Usage:
    report = verify_cache("cache/demo")
    print(format_report(report)); report.ok
    report = repair_cache("cache/demo")                  # or raw="raw/demo"
(`preprocess.py verify --cache DIR [--repair] [--raw DIR]` is the command.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.cache import (CASES_FILE, SETTINGS_FILE, SOURCE_FILE, CacheFileError, array_record, check_arrays,
                        load_arrays, load_cache_settings, load_case_table, load_properties)
from data.errors import CaseError
from data.splits import SUBSETS, read_split
from data.untrusted import case_path, read_json

SPLITS_FILE = "splits.json"
CACHE_LEVEL = "-"   # the case column of a problem with the cache as a whole


@dataclass(frozen=True)
class Problem:
    case_id: str
    file: str
    problem: str
    repairable: bool = True    # redone by preprocessing the case again


@dataclass
class CacheReport:
    cache: Path
    checked: int = 0                 # cases checked
    without_checksum: int = 0        # cases whose properties record no CRC-32 (older caches)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_cases(self) -> list[str]:
        return sorted({p.case_id for p in self.problems if p.repairable and p.case_id != CACHE_LEVEL})


def _check_case(cache: Path, case_id: str, report: CacheReport) -> None:
    try:
        props = load_properties(cache, case_id)
        image, labels = load_arrays(cache, case_id)
        check_arrays(props, image, labels, case_id, cache)
    except CacheFileError as exc:
        report.problems.append(Problem(case_id, exc.file, exc.found))
        return
    recorded = props.get("arrays")
    if not recorded:
        report.without_checksum += 1
        return
    for name, array, suffix in (("image", image, ".npy"), ("labels", labels, "_seg.npy")):
        if array_record(np.asarray(array))["crc32"] != recorded[name]["crc32"]:
            report.problems.append(Problem(case_id, case_id + suffix,
                                           "content differs from the checksum recorded when it was written"))


def _check_splits(cache: Path, listed: set[str] | None, report: CacheReport) -> None:
    """splits.json's structure; with `listed` (None: cases.csv unreadable), its cases against it."""
    path = cache / SPLITS_FILE
    if not path.exists():
        return
    try:
        splits = read_split(path)
    except CaseError as exc:
        report.problems.append(Problem(CACHE_LEVEL, SPLITS_FILE, f"damaged ({exc.problem}); rewrite it with "
                                       "`preprocess.py split --overwrite`", repairable=False))
        return
    seen: dict[str, str] = {}
    for name in SUBSETS:
        for case_id in splits[name]:
            if case_id in seen:
                report.problems.append(Problem(case_id, SPLITS_FILE, f"in both {seen[case_id]} and {name}",
                                               repairable=False))
            seen[case_id] = name
            if listed is not None and case_id not in listed:
                report.problems.append(Problem(case_id, SPLITS_FILE, f"in split {name} but not in {CASES_FILE}",
                                               repairable=False))


def verify_cache(cache_dir) -> CacheReport:
    cache = Path(cache_dir)
    report = CacheReport(cache=cache)
    if not cache.is_dir():
        report.problems.append(Problem(CACHE_LEVEL, str(cache), "not a folder", repairable=False))
        return report
    try:
        load_cache_settings(cache)
    except (CaseError, OSError, ValueError, KeyError, TypeError) as exc:
        report.problems.append(Problem(CACHE_LEVEL, SETTINGS_FILE, f"unreadable ({exc})", repairable=False))
    listed: set[str] | None = None
    try:
        listed = set(load_case_table(cache).index)
    except (CaseError, OSError, ValueError, KeyError) as exc:
        report.problems.append(Problem(CACHE_LEVEL, CASES_FILE, f"unreadable ({exc})", repairable=True))
    cached = {p.name[: -len(s)] for s in (".json", "_seg.npy", ".npy") for p in cache.glob(f"case_*{s}")
              if p.name.endswith(s) and not (s == ".npy" and p.name.endswith("_seg.npy"))}
    for case_id in sorted((listed or set()) | cached):
        report.checked += 1
        _check_case(cache, case_id, report)
        if listed and case_id not in listed:
            report.problems.append(Problem(case_id, CASES_FILE, f"cached but not listed in {CASES_FILE}"))
    _check_splits(cache, listed, report)
    return report


def format_report(report: CacheReport) -> str:
    head = f"{report.cache}: {report.checked} case(s) checked"
    if report.without_checksum:
        head += f" ({report.without_checksum} written before checksums were recorded: shapes checked only)"
    if report.ok:
        return head + "; no problems"
    lines = [head + f"; {len(report.problems)} problem(s):", f"{'case':<12} {'file':<22} problem"]
    lines += [f"{p.case_id:<12} {p.file:<22} {p.problem}" for p in report.problems]
    return "\n".join(lines)


def repair_cache(cache_dir, *, raw=None, workers: int = 1, progress: bool = True) -> CacheReport:
    """Redo the damaged cases from the raw folder (`raw`, else the one source.json records); the
    report of the check that follows."""
    from data.preprocessing import run_preprocessing

    cache = Path(cache_dir)
    report = verify_cache(cache)
    unfixable = [p for p in report.problems if not p.repairable]
    if unfixable:
        raise CaseError(str(cache), f"{unfixable[0].file}: {unfixable[0].problem}: not repaired by "
                        "preprocessing cases again" + ("; fix it first" if len(unfixable) == 1 else
                                                       f" (and {len(unfixable) - 1} more); fix them first"))
    if report.ok:
        return report
    metadata = None
    if raw is None:
        try:
            source = read_json(cache / SOURCE_FILE)
            raw, metadata = source["raw"], source.get("metadata")
        except (CaseError, KeyError, TypeError):
            raise CaseError(str(cache), f"records no raw folder ({SOURCE_FILE}); give it with --raw DIR") from None
    for case_id in report.damaged_cases:
        for suffix in (".json", ".npy", "_seg.npy"):      # properties first: the case is incomplete from here
            case_path(cache, case_id, suffix).unlink(missing_ok=True)   # never outside the cache
    cases = sorted({p.name[:-5] for p in cache.glob("case_*.json")} | set(report.damaged_cases))
    result = run_preprocessing(raw, cache, load_cache_settings(cache), workers=workers, metadata_path=metadata,
                               cases=cases, progress=progress)
    if result.failures:
        raise CaseError(str(cache), f"repair failed for {len(result.failures)} case(s): {result.failures[0]}")
    return verify_cache(cache)
