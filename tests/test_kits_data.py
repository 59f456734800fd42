"""KiTS data layer: reading folders and metadata, label schemes, groups, one-line case errors."""
import json

import numpy as np
import pytest

from data.errors import CaseError
from data.groups import GroupError, parse_attribute
from data.kits import load_case, load_metadata, scan_cohort
from data.labels import LabelScheme
from data.nifti import kits_affine, write_volume
from tests.kits_fixtures import write_tiny_cohort

KITS19 = LabelScheme.parse("kits19")


def test_real_kits19_metadata_and_geometry(kits19_dir):
    cohort = scan_cohort(kits19_dir)
    assert len(cohort.records) == 210 and not cohort.failures
    sexes = [r.sex for r in cohort.records]
    assert sexes.count("male") == 123 and sexes.count("female") == 87  # SPEC §1
    ages = [r.age for r in cohort.records]
    assert min(ages) == 1 and max(ages) == 90
    first = cohort.records[0]
    assert first.case_id == "case_00000" and first.image_path is None and first.bmi == pytest.approx(29.47)
    case = load_case(first, KITS19)
    assert case.shape == (611, 512, 512)
    assert case.spacing == pytest.approx((0.5, 0.919921875, 0.919921875))  # header zooms, (z, y, x)
    np.testing.assert_allclose(case.affine, kits_affine(case.spacing))
    assert set(np.unique(case.labels)) == {0, 1, 2}


def test_tiny_cohort_reads_back(tmp_path):
    write_tiny_cohort(tmp_path, n_cases=3)
    cohort = scan_cohort(tmp_path, require_imaging=True)
    assert cohort.case_ids == ["case_00000", "case_00001", "case_00002"]
    case = load_case(cohort.records[1], KITS19)
    assert case.image.dtype == np.int16 and case.image.shape == case.labels.shape == (12, 20, 24)
    assert case.spacing == pytest.approx((4.0, 0.9, 0.9))


def test_metadata_path_option(tmp_path):
    write_tiny_cohort(tmp_path, n_cases=2)
    (tmp_path / "kits.json").rename(tmp_path / "dataset.json")
    with pytest.raises(CaseError, match="metadata file not found"):
        scan_cohort(tmp_path)
    assert len(scan_cohort(tmp_path, metadata_path=tmp_path / "dataset.json").records) == 2


def _edit_meta(root, case_index, **changes):
    entries = json.loads((root / "kits.json").read_text())
    for key, value in changes.items():
        if value is None:
            entries[case_index].pop(key, None)
        else:
            entries[case_index][key] = value
    (root / "kits.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("change, message", [
    ({"gender": "unknown"}, "case_00001: unknown sex value 'unknown' (expected male or female)"),
    ({"gender": None}, "case_00001: missing gender (sex)"),
    ({"age_at_nephrectomy": None}, "case_00001: missing age_at_nephrectomy"),
    ({"age_at_nephrectomy": "old"}, "case_00001: age_at_nephrectomy is the text 'old'; expected a number (write 65, not \"65\")"),
])
def test_bad_metadata_is_a_one_line_error_and_others_go_on(tmp_path, change, message):
    write_tiny_cohort(tmp_path, n_cases=3)
    _edit_meta(tmp_path, 1, **change)
    cohort = scan_cohort(tmp_path)
    assert cohort.case_ids == ["case_00000", "case_00002"]
    assert [str(f) for f in cohort.failures] == [message]
    assert "\n" not in message


def test_missing_files_and_metadata_entries(tmp_path):
    write_tiny_cohort(tmp_path, n_cases=4)
    (tmp_path / "case_00001" / "segmentation.nii.gz").unlink()
    (tmp_path / "case_00002" / "imaging.nii.gz").unlink()
    entries = json.loads((tmp_path / "kits.json").read_text())
    (tmp_path / "kits.json").write_text(json.dumps([e for e in entries if e["case_id"] != "case_00003"]))
    cohort = scan_cohort(tmp_path, require_imaging=True)
    assert cohort.case_ids == ["case_00000"]
    assert [str(f) for f in cohort.failures] == [
        "case_00001: missing segmentation.nii.gz",
        "case_00002: missing imaging.nii.gz",
        "case_00003: not in the metadata file kits.json",
    ]
    # label maps alone (like ../shared/kits19) are fine when imaging is not required
    assert "case_00002" in scan_cohort(tmp_path).case_ids


def test_metadata_file_errors(tmp_path):
    path = tmp_path / "kits.json"
    path.write_text("{not json")
    with pytest.raises(CaseError, match="not valid JSON"):
        load_metadata(path)
    path.write_text(json.dumps([{"case_id": "case_00000"}, {"case_id": "case_00000"}]))
    with pytest.raises(CaseError, match="duplicate case_id case_00000"):
        load_metadata(path)


def test_label_values_and_schemes(tmp_path):
    write_tiny_cohort(tmp_path, n_cases=1)
    labels = np.zeros((12, 20, 24), np.uint8)
    labels[2:4, 2:4, 2:4] = 3  # a KiTS21/23 cyst
    labels[5:7, 5:7, 5:7] = 2
    write_volume(tmp_path / "case_00000" / "segmentation.nii.gz", labels, kits_affine((4.0, 0.9, 0.9)))
    record = scan_cohort(tmp_path).records[0]
    with pytest.raises(CaseError, match=r"case_00000: label values \[3\] are not in the label scheme"):
        load_case(record, KITS19)
    as_kidney = load_case(record, LabelScheme.parse("kits23-cyst-kidney")).labels
    assert as_kidney[3, 3, 3] == 1 and as_kidney[6, 6, 6] == 2
    as_background = load_case(record, LabelScheme.parse("0:0,1:1,2:2,3:0")).labels
    assert as_background[3, 3, 3] == 0 and np.count_nonzero(as_background) == 8
    with pytest.raises(ValueError, match="targets must be in"):
        LabelScheme.parse("0:0,3:7")


def test_image_label_shape_mismatch(tmp_path):
    write_tiny_cohort(tmp_path, n_cases=1)
    write_volume(tmp_path / "case_00000" / "imaging.nii.gz", np.zeros((12, 20, 23), np.int16),
                 kits_affine((4.0, 0.9, 0.9)))
    record = scan_cohort(tmp_path).records[0]
    with pytest.raises(CaseError, match=r"case_00000: image shape \(12, 20, 23\) differs from label shape"):
        load_case(record, KITS19)


def test_groups_study_bins_and_intersections():
    age = parse_attribute("age")
    assert age.order == ["[0,50)", "[50,60)", "[60,70)", ">=70"]
    assert [age.group_of({"age_at_nephrectomy": a}) for a in (1, 49.9, 50, 69, 70, 90)] == \
        ["[0,50)", "[0,50)", "[50,60)", "[60,70)", ">=70", ">=70"]
    assert parse_attribute("bmi").group_of({"body_mass_index": 30.0}) == ">=30"
    custom = parse_attribute("age:40,65")
    assert custom.order == ["[0,40)", "[40,65)", ">=65"]
    both = parse_attribute("sex,age")
    assert both.group_of({"gender": "F", "age_at_nephrectomy": 55}) == "female×[50,60)"
    assert len(both.order) == 8 and both.order[0] == "male×[0,50)"
    assert parse_attribute("sex×age:60").order == ["male×[0,60)", "male×>=60", "female×[0,60)", "female×>=60"]
    histology = parse_attribute("tumor_histologic_subtype")
    assert histology.group_of({"tumor_histologic_subtype": "clear_cell_rcc"}) == "clear_cell_rcc"
    assert histology.order is None
    with pytest.raises(GroupError, match="missing body_mass_index"):
        parse_attribute("bmi").group_of({})


def test_real_kits19_age_groups(kits19_dir):
    cohort = scan_cohort(kits19_dir)
    age = parse_attribute("age")
    counts = {g: 0 for g in age.order}
    for r in cohort.records:
        counts[age.group_of(r.meta)] += 1
    assert sum(counts.values()) == 210
    # The whole cohort; the study's RESM counts (63 per sex, 31 per age group) come from its
    # 160-case training split, so they are smaller than these.
    assert counts == {"[0,50)": 50, "[50,60)": 49, "[60,70)": 69, ">=70": 42}
