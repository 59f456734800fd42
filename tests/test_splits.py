"""Seeded, optionally stratified splits and splits.json."""
import json

import pytest

from data.errors import CaseError
from data.splits import load_split, make_split, save_split

IDS = [f"case_{i:05d}" for i in range(210)]
SEX = {cid: ("male" if i < 123 else "female") for i, cid in enumerate(IDS)}  # KiTS19's 123 / 87


def test_study_split_sizes_and_reproducibility():
    split = make_split(IDS, seed=0)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (160, 0, 50)
    assert make_split(IDS, seed=0) == split
    assert make_split(IDS, seed=1)["test"] != split["test"]
    assert set(split["train"]) | set(split["test"]) == set(IDS)
    assert not set(split["train"]) & set(split["test"])


def test_counts_fractions_and_validation():
    split = make_split(IDS, seed=3, test=0.2, val=16)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (152, 16, 42)
    assert len(make_split(IDS[:12], seed=0)["test"]) == 3  # round(12 * 50 / 210)
    with pytest.raises(ValueError, match="asks for 300 cases"):
        make_split(IDS, test=300)
    with pytest.raises(ValueError, match="leaves no training cases"):
        make_split(IDS[:2], test=1, val=1)


def test_stratified_split_keeps_proportions():
    split = make_split(IDS, seed=0, test=50, stratify=SEX, stratify_name="sex")
    females = sum(SEX[c] == "female" for c in split["test"])
    assert females == 21  # 50 * 87 / 210 = 20.7, largest remainder
    assert split["options"]["stratified_by"] == "sex"
    stratified_val = make_split(IDS, seed=0, test=50, val=0.1, stratify=SEX)
    assert sum(SEX[c] == "female" for c in stratified_val["val"]) == 7  # 16 * 66 / 160 = 6.6


def test_splits_json_round_trip_and_errors(tmp_path):
    path = tmp_path / "splits.json"
    split = make_split(IDS[:20], seed=0)
    save_split(path, split)
    assert load_split(path, known_cases=IDS[:20]) == split
    with pytest.raises(FileExistsError):
        save_split(path, make_split(IDS[:20], seed=1))
    assert load_split(path) == split  # the refused write changed nothing
    with pytest.raises(CaseError, match="names cases that do not exist: case_00019"):
        load_split(path, known_cases=IDS[:19])
    path.write_text(json.dumps({"train": ["a"], "val": [], "test": ["a"]}))
    with pytest.raises(CaseError, match="more than one subset"):
        load_split(path)
