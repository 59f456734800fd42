"""Damaged caches: a truncated array or a corrupt properties file is a one-line error naming the
file, batch work goes on without the case, and `preprocess.py verify` finds every kind of damage
and --repair redoes the cases from the raw folder."""
import json
import shutil

import numpy as np
import pytest

import preprocess
from data.cache import load_arrays, load_preprocessed
from data.errors import CaseError
from data.preprocessing import PreprocessSettings, run_preprocessing
from data.verify import repair_cache, verify_cache
from tests.kits_fixtures import write_tiny_cohort


@pytest.fixture()
def cache(tmp_path):
    raw = tmp_path / "raw"
    write_tiny_cohort(raw, n_cases=4)
    run_preprocessing(raw, tmp_path / "cache", PreprocessSettings(), progress=False)
    return tmp_path / "cache"


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_damaged_file_is_one_line_naming_it(cache):
    truncate(cache / "case_00001.npy")
    with pytest.raises(CaseError) as err:
        load_arrays(cache, "case_00001")
    assert "case_00001.npy is damaged" in str(err.value) and "preprocess.py verify" in str(err.value)
    assert "\n" not in str(err.value)
    (cache / "case_00002.json").write_text('{"case_id": ')
    with pytest.raises(CaseError, match=r"case_00002.json is damaged \(not valid JSON \(Expecting value"):
        load_preprocessed(cache, "case_00002")
    np.save(cache / "case_00003_seg.npy", np.zeros((2, 2, 2), np.uint8))   # a valid file of the wrong case
    with pytest.raises(CaseError, match=r"case_00003_seg.npy has shape \[2, 2, 2\], its properties say"):
        load_preprocessed(cache, "case_00003")
    assert load_preprocessed(cache, "case_00000")[2]["arrays"]["image"]["dtype"] == "<f4"


def test_verify_finds_every_damage_and_repair_redoes_the_cases(cache, capsys):
    assert verify_cache(cache).ok and verify_cache(cache).checked == 4
    assert preprocess.main(["verify", "--cache", str(cache)]) == 0
    clean = {p.name: p.read_bytes() for p in cache.glob("case_*")}

    truncate(cache / "case_00000.npy")                                    # truncated
    (cache / "case_00001.json").write_text("{not json")                   # corrupt properties
    seg = np.load(cache / "case_00002_seg.npy")
    seg.flat[0] = 2
    np.save(cache / "case_00002_seg.npy", seg)                            # same shape, other content
    (cache / "case_00003.npy").unlink()                                   # missing
    report = verify_cache(cache)
    found = {(p.case_id, p.file) for p in report.problems}
    assert found == {("case_00000", "case_00000.npy"), ("case_00001", "case_00001.json"),
                     ("case_00002", "case_00002_seg.npy"), ("case_00003", "case_00003.npy")}
    assert "checksum" in next(p.problem for p in report.problems if p.case_id == "case_00002")
    assert report.damaged_cases == ["case_00000", "case_00001", "case_00002", "case_00003"]

    capsys.readouterr()
    assert preprocess.main(["verify", "--cache", str(cache)]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s)" in out and "case_00001.json" in out and "Traceback" not in out

    assert preprocess.main(["verify", "--cache", str(cache), "--repair", "--no-progress"]) == 0
    assert {p.name: p.read_bytes() for p in cache.glob("case_*")} == clean   # byte for byte as before


def test_splits_and_case_table_disagreements(cache, tmp_path):
    (cache / "splits.json").write_text(json.dumps({"train": ["case_00000", "case_00009"],
                                                   "val": [], "test": ["case_00000"]}))
    problems = {(p.case_id, p.problem) for p in verify_cache(cache).problems}
    assert ("case_00009", "in split train but not in cases.csv") in problems
    assert ("case_00000", "in both train and test") in problems
    with pytest.raises(CaseError, match="not repaired by preprocessing"):
        repair_cache(cache)
    (cache / "splits.json").write_text("[")
    assert [p.file for p in verify_cache(cache).problems] == ["splits.json"]


def test_repair_needs_a_raw_folder(cache, tmp_path):
    (cache / "source.json").unlink()
    truncate(cache / "case_00000_seg.npy")
    with pytest.raises(CaseError, match="give it with --raw"):
        repair_cache(cache, progress=False)
    assert repair_cache(cache, raw=tmp_path / "raw", progress=False).ok


def test_a_corrupt_properties_file_is_redone_by_the_next_run(cache, tmp_path):
    before = (cache / "case_00001.json").read_text()
    (cache / "case_00001.json").write_text("{")
    result = run_preprocessing(tmp_path / "raw", cache, PreprocessSettings(), progress=False)
    assert result.done == 1 and result.skipped == 3
    assert (cache / "case_00001.json").read_text() == before
