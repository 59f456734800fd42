"""The study's preprocessing on hand-made cases whose every step has a known answer."""
import json

import numpy as np
import pandas as pd
import pytest

import preprocess
from data.errors import CaseError
from data.preprocessing import PreprocessSettings, run_preprocessing
from data.cache import load_preprocessed
from tests.kits_fixtures import write_tiny_cohort

BODY = (40 - 101) / 76.9      # HU 40, normalised
CLIP_HIGH = (304 - 101) / 76.9  # anything above 304 HU


@pytest.fixture()
def raw(tmp_path):
    return write_tiny_cohort(tmp_path / "raw", n_cases=4)


def test_one_case_follows_the_study_order(raw, tmp_path):
    result = run_preprocessing(raw, tmp_path / "pre", PreprocessSettings(), progress=False)
    assert (result.done, result.skipped, result.failures) == (4, 0, [])
    image, seg, props = load_preprocessed(tmp_path / "pre", "case_00000")
    assert isinstance(image, np.memmap) and image.dtype == np.float32 and seg.dtype == np.uint8
    # crop to the body box (HU > -500), in the original geometry: body is [1:11, 2:18, 3:21]
    assert props["crop_box"] == [[1, 11], [2, 18], [3, 21]]
    assert props["cropped_shape"] == [10, 16, 18]
    # new shape = round(old_spacing / new_spacing * cropped shape)
    assert props["resampled_shape"] == [round(4 / 3.22 * 10), round(0.9 / 1.62 * 16), round(0.9 / 1.62 * 18)]
    assert image.shape == seg.shape == (12, 9, 10)
    assert props["separate_axis"] == 0  # 4 mm / 0.9 mm > 3: z resampled with nearest
    assert props["original_shape"] == [12, 20, 24]
    assert props["original_spacing"] == pytest.approx([4.0, 0.9, 0.9])
    # clip then normalise: body-only corner, and the inside of the 1000 HU block
    np.testing.assert_allclose(image[:, 0, 0], BODY, atol=1e-5)
    assert image.max() == pytest.approx(CLIP_HIGH, abs=1e-5)
    assert image.min() >= (-79 - 101) / 76.9 - 1e-6
    assert set(np.unique(seg)) == {0, 1, 2}
    # class volumes in the original geometry: kidney 6x9x10 voxels (tumor inside), tumor 3x4x4
    assert props["volumes_original"]["kidney_ml"] == pytest.approx(540 * 4 * 0.81 / 1000, rel=1e-5)
    assert props["volumes_original"]["tumor_ml"] == pytest.approx(48 * 4 * 0.81 / 1000, rel=1e-5)
    for c, locations in props["class_locations"].items():
        locs = np.array(locations)
        assert len(locs) == np.count_nonzero(seg == int(c))  # fewer than 10000: all of them
        assert (seg[tuple(locs.T)] == int(c)).all()


def test_cases_csv_and_settings_record(raw, tmp_path):
    run_preprocessing(raw, tmp_path / "pre", PreprocessSettings(), progress=False)
    table = pd.read_csv(tmp_path / "pre" / "cases.csv")
    assert table["case_id"].tolist() == [f"case_{i:05d}" for i in range(4)]
    assert table["sex"].tolist() == ["male", "female", "male", "female"]
    assert table["age_group"].tolist() == ["[0,50)", "[50,60)", "[60,70)", ">=70"]
    assert table["bmi_group"].tolist() == [">=30", "[0,25)", "[25,30)", ">=30"]
    assert table["resampled_shape"].tolist() == ["12x9x10"] * 4
    saved = json.loads((tmp_path / "pre" / "preprocess.json").read_text())
    assert saved["settings"]["target_spacing"] == [3.22, 1.62, 1.62]
    assert saved["settings"]["clip"] == [-79.0, 304.0]


def test_resume_redoes_only_incomplete_cases(raw, tmp_path):
    out = tmp_path / "pre"
    run_preprocessing(raw, out, PreprocessSettings(), progress=False)
    before = np.load(out / "case_00002.npy")
    # a run killed after writing the arrays but before the properties (the completion marker)
    (out / "case_00002.json").unlink()
    result = run_preprocessing(raw, out, PreprocessSettings(), progress=False)
    assert (result.done, result.skipped) == (1, 3)
    np.testing.assert_array_equal(np.load(out / "case_00002.npy"), before)
    assert len(pd.read_csv(out / "cases.csv")) == 4


def test_other_settings_are_refused_unless_overwrite(raw, tmp_path):
    out = tmp_path / "pre"
    run_preprocessing(raw, out, PreprocessSettings(), progress=False)
    coarse = PreprocessSettings(target_spacing=(4.0, 1.8, 1.8))
    with pytest.raises(CaseError, match="preprocessed with other settings .differing: target_spacing."):
        run_preprocessing(raw, out, coarse, progress=False)
    assert load_preprocessed(out, "case_00000")[0].shape == (12, 9, 10)  # untouched
    result = run_preprocessing(raw, out, coarse, overwrite=True, progress=False)
    assert result.done == 4
    assert load_preprocessed(out, "case_00000")[0].shape == (10, 8, 9)


def test_bad_cases_are_listed_and_the_rest_go_on(raw, tmp_path, capsys):
    (raw / "case_00001" / "imaging.nii.gz").unlink()
    (raw / "case_00003" / "imaging.nii.gz").write_bytes(b"not a nifti file")
    code = preprocess.main(["run", "--raw", str(raw), "--out", str(tmp_path / "pre"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "case_00001: missing imaging.nii.gz" in err
    assert "case_00003: imaging.nii.gz is not a readable NIfTI file" in err
    assert "Traceback" not in err
    assert pd.read_csv(tmp_path / "pre" / "cases.csv")["case_id"].tolist() == ["case_00000", "case_00002"]


def test_parallel_workers_give_the_same_cache(raw, tmp_path):
    run_preprocessing(raw, tmp_path / "one", PreprocessSettings(), workers=1, progress=False)
    run_preprocessing(raw, tmp_path / "two", PreprocessSettings(), workers=2, progress=False)
    for case in ("case_00000", "case_00003"):
        a, b = load_preprocessed(tmp_path / "one", case), load_preprocessed(tmp_path / "two", case)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]


def test_cli_run_writes_split_and_honours_flags(raw, tmp_path, capsys):
    out = tmp_path / "pre"
    assert preprocess.main(["run", "--raw", str(raw), "--out", str(out), "--no-progress",
                            "--spacing", "4,1.8,1.8", "--norm", "0,1", "--clip=-1000,1000"]) == 0
    image, _, props = load_preprocessed(out, "case_00000")
    np.testing.assert_allclose(image[:, 0, 0], 40.0, atol=1e-4)  # mean 0, std 1: HU stay HU
    split = json.loads((out / "splits.json").read_text())
    assert len(split["test"]) == 1 and len(split["train"]) == 3  # round(4 * 50 / 210)
    assert preprocess.main(["split", "--cache", str(out), "--test", "2", "--stratify", "sex"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert preprocess.main(["split", "--cache", str(out), "--test", "2", "--stratify", "sex", "--overwrite"]) == 0
    split = json.loads((out / "splits.json").read_text())
    sexes = pd.read_csv(out / "cases.csv").set_index("case_id")["sex"]
    assert sorted(sexes[c] for c in split["test"]) == ["female", "male"]  # stratified: one of each


def test_shipped_config_is_the_study_defaults():
    import yaml
    from pathlib import Path
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "preprocess_study.yaml").read_text())
    assert PreprocessSettings.from_dict(config["data"]["preprocess"]) == PreprocessSettings()
    with pytest.raises(ValueError, match=r"unknown preprocessing setting\(s\) \['spacing'\]; valid:"):
        PreprocessSettings.from_dict({"spacing": [1, 1, 1]})
