"""Seeded train / val / test splits, optionally stratified by a grouping attribute, as splits.json.

The study splits KiTS19's 210 cases at random into 160 train and 50 test (seeded). `test` is a
count (an int >= 1) or a fraction (< 1); the default fraction 50/210 gives the study's 50 of 210.
A validation set, when asked for, is a fraction of the training cases. With `stratify`, every
group is split in the same proportions (largest-remainder rounding, so the totals are exact).

Usage:
    split = make_split(case_ids, seed=0, test=50, stratify={cid: group, ...})
    save_split("cache/splits.json", split)           # refuses to overwrite unless overwrite=True
    split = load_split("cache/splits.json", known_cases=case_ids)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from data.atomic import atomic_write
from data.errors import CaseError
from data.untrusted import check_case_id, read_json

STUDY_TEST_FRACTION = 50 / 210
SUBSETS = ("train", "val", "test")


def _count(n: int, amount: float, what: str) -> int:
    if amount < 0:
        raise ValueError(f"{what} must be >= 0, got {amount}")
    k = int(round(amount * n)) if amount < 1 else int(amount)
    if amount >= 1 and float(amount) != int(amount):
        raise ValueError(f"{what} must be a whole count or a fraction below 1, got {amount}")
    if k > n:
        raise ValueError(f"{what} asks for {k} cases but only {n} are available")
    return k


def _apportion(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` over groups in proportion to their sizes (largest remainder, exact sum)."""
    n = sum(sizes.values())
    if n == 0:
        return {g: 0 for g in sizes}
    quotas = {g: total * s / n for g, s in sizes.items()}
    alloc = {g: min(sizes[g], math.floor(q)) for g, q in quotas.items()}
    order = sorted(sizes, key=lambda g: (-(quotas[g] - math.floor(quotas[g])), g))
    i = 0
    while sum(alloc.values()) < total:
        g = order[i % len(order)]
        if alloc[g] < sizes[g]:
            alloc[g] += 1
        i += 1
    return alloc


def _draw(case_ids: list[str], k: int, rng: np.random.Generator,
          stratify: dict[str, str] | None) -> tuple[list[str], list[str]]:
    """Pick k cases (stratified if asked); return (picked, rest), each sorted."""
    if stratify is None:
        order = rng.permutation(len(case_ids))
        picked = {case_ids[i] for i in order[:k]}
    else:
        groups: dict[str, list[str]] = {}
        for cid in case_ids:
            groups.setdefault(stratify[cid], []).append(cid)
        alloc = _apportion({g: len(v) for g, v in sorted(groups.items())}, k)
        picked = set()
        for g, members in sorted(groups.items()):
            order = rng.permutation(len(members))
            picked.update(members[i] for i in order[:alloc[g]])
    return sorted(picked), sorted(c for c in case_ids if c not in picked)


def make_split(case_ids, *, seed: int = 0, test: float = STUDY_TEST_FRACTION, val: float = 0.0,
               stratify: dict[str, str] | None = None, stratify_name: str | None = None) -> dict:
    """A reproducible split: the same ids, seed and options always give the same split."""
    case_ids = sorted(set(case_ids))
    if stratify is not None:
        missing = [c for c in case_ids if c not in stratify]
        if missing:
            raise ValueError(f"no stratification group for {missing[:5]}")
    rng = np.random.default_rng(seed)
    test_ids, train_ids = _draw(case_ids, _count(len(case_ids), test, "test"), rng, stratify)
    val_ids, train_ids = _draw(train_ids, _count(len(train_ids), val, "val"), rng, stratify)
    if not train_ids:
        raise ValueError(f"the split leaves no training cases ({len(case_ids)} cases, test={test}, val={val})")
    options = {"seed": seed, "test": test, "val": val, "stratified_by": stratify_name if stratify else None}
    return {"options": options, "train": train_ids, "val": val_ids, "test": test_ids}


def save_split(path, split: dict, *, overwrite: bool = False) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(split, indent=1) + "\n"))


def read_split(path) -> dict:
    """splits.json as written by save_split, its structure checked: a mapping with a list of case
    ids per subset (train, val, test; `options` records how it was drawn). No case-level checks."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(str(path), "split file not found")
    split = read_json(path)
    if not isinstance(split, dict):
        raise CaseError(str(path), "is not a mapping of subset name to case list")
    for key in SUBSETS:
        if not isinstance(split.get(key), list):
            raise CaseError(str(path), f"has no list '{key}'")
        for i, case_id in enumerate(split[key]):
            check_case_id(case_id, where=f"{path} {key}[{i}]")
    if not isinstance(split.get("options", {}), dict):
        raise CaseError(str(path), "has an 'options' entry that is not a mapping")
    return split


def load_split(path, *, known_cases=None) -> dict:
    """Read splits.json; every case in one subset only and, with `known_cases`, every named case must exist."""
    path = Path(path)
    split = read_split(path)
    named = [c for key in SUBSETS for c in split[key]]
    if len(named) != len(set(named)):
        raise CaseError(str(path), "names a case in more than one subset")
    if known_cases is not None:
        unknown = sorted(set(named) - set(known_cases))
        if unknown:
            raise CaseError(str(path), f"names cases that do not exist: {', '.join(unknown[:5])}"
                            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return split
