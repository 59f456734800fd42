"""data/nnunet.py and its entry points: the nnU-Net v2 raw dataset export (layout, dataset.json, links
or copies, idempotence, the split as nnU-Net's folds, label schemes) and summary.json both ways.

Nothing here needs nnU-Net; tests/test_nnunet_tools.py checks the same files with nnU-Net's own code.
"""
import errno
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

import evaluate
import preprocess
from data.errors import CaseError
from data.nifti import kits_affine, read_volume, write_volume
from data.nnunet import (case_id_from_file, export_raw_dataset, parse_key, read_summary, splits_final,
                         summary_from_per_case, write_summary)
from data.splits import save_split
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort

SPACING = (4.0, 0.9, 0.9)
DATASET = "Dataset501_KiTS19Fair"


@pytest.fixture()
def raw(tmp_path):
    return write_tiny_cohort(tmp_path / "raw", n_cases=5, spacing=SPACING)


def split_file(tmp_path, train, val, test):
    path = tmp_path / "splits.json"
    save_split(path, {"options": {}, "train": train, "val": val, "test": test}, overwrite=True)
    return path


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_export_writes_nnunet_layout_and_dataset_json_with_hard_links(raw, tmp_path):
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)
    ds = tmp_path / "nn" / DATASET
    assert result.dataset_dir == ds and not result.failures
    assert tree(ds) == ["dataset.json", "fairkits_export.json",
                        *[f"imagesTr/case_{i:05d}_0000.nii.gz" for i in range(5)],
                        *[f"labelsTr/case_{i:05d}.nii.gz" for i in range(5)]]
    assert json.loads((ds / "dataset.json").read_text()) == {
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": [1, 2], "tumor": 2},
        "regions_class_order": [1, 2], "numTraining": 5, "file_ending": ".nii.gz", "name": "KiTS19Fair",
        "description": "KiTS-layout cohort exported by fairkits (preprocess.py export-nnunet): kidney = labels 1 "
                       "and 2, tumor = label 2 (KiTS19's regions); source and label scheme in fairkits_export.json"}
    for i in range(5):   # the same inode as the raw file: nothing copied
        assert os.path.samefile(ds / "imagesTr" / f"case_{i:05d}_0000.nii.gz", raw / f"case_{i:05d}" / "imaging.nii.gz")
        assert os.path.samefile(ds / "labelsTr" / f"case_{i:05d}.nii.gz", raw / f"case_{i:05d}" / "segmentation.nii.gz")
    assert result.actions == {"linked": 10} and not (ds / "splits_final.json").exists()
    manifest = json.loads((ds / "fairkits_export.json").read_text())
    assert manifest["label_scheme"] == "0:0,1:1,2:2" and manifest["raw"] == str(raw.resolve())


def test_split_maps_train_val_to_fold_0_and_test_to_imagesTs(raw, tmp_path):
    splits = split_file(tmp_path, ["case_00000", "case_00002", "case_00003"], ["case_00004"], ["case_00001"])
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=splits,
                                preprocessed=tmp_path / "pre", progress=False)
    ds = tmp_path / "nn" / DATASET
    assert result.train_ids == ["case_00000", "case_00002", "case_00003", "case_00004"]
    assert result.test_ids == ["case_00001"]
    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == ["case_00001_0000.nii.gz"]
    assert sorted(p.name for p in (ds / "labelsTs").iterdir()) == ["case_00001.nii.gz"]
    assert "case_00001.nii.gz" not in {p.name for p in (ds / "labelsTr").iterdir()}
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 4
    folds = [{"train": ["case_00000", "case_00002", "case_00003"], "val": ["case_00004"]}]
    assert json.loads((ds / "splits_final.json").read_text()) == folds
    assert json.loads((tmp_path / "pre" / DATASET / "splits_final.json").read_text()) == folds
    assert result.splits_files == [ds / "splits_final.json", tmp_path / "pre" / DATASET / "splits_final.json"]


def test_a_split_without_validation_is_nnunets_fold_all():
    assert splits_final({"train": ["b", "a"], "val": [], "test": ["c"]}) == [{"train": ["a", "b"], "val": ["a", "b"]}]
    assert splits_final({"train": ["b", "a"], "val": ["d"], "test": []}) == [{"train": ["a", "b"], "val": ["d"]}]


def test_rerun_leaves_everything_alone_and_resumes_what_is_missing(raw, tmp_path):
    splits = split_file(tmp_path, ["case_00000", "case_00002"], [], ["case_00001"])
    export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=splits, progress=False)
    ds = tmp_path / "nn" / DATASET
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in ds.rglob("*.json")}
    again = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=splits, progress=False)
    assert again.actions == {"kept": 6} and set(again.json_files.values()) == {"kept"}
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before if p.name != "fairkits_export.json"} == \
        {p: v for p, v in before.items() if p.name != "fairkits_export.json"}
    (ds / "labelsTr" / "case_00002.nii.gz").unlink()          # as if killed before this file
    (ds / "imagesTs" / "case_00001_0000.nii.gz").unlink()
    resumed = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=splits, progress=False)
    assert resumed.actions == {"kept": 4, "linked": 2}
    assert os.path.samefile(ds / "labelsTr" / "case_00002.nii.gz", raw / "case_00002" / "segmentation.nii.gz")


def test_links_fall_back_to_copies(raw, tmp_path, monkeypatch):
    def no_links(src, dst, *a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, cases=["case_00000"], progress=False)
    target = tmp_path / "nn" / DATASET / "imagesTr" / "case_00000_0000.nii.gz"
    source = raw / "case_00000" / "imaging.nii.gz"
    assert result.actions == {"copied": 2}
    assert not os.path.samefile(target, source) and target.read_bytes() == source.read_bytes()
    # a copy is as good as a link on the next run: same bytes, left alone
    assert export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, cases=["case_00000"],
                              progress=False).actions == {"kept": 2}


def test_copy_flag_copies(raw, tmp_path):
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=7, name="Copy", cases=["case_00003"], copy=True,
                                progress=False)
    target = tmp_path / "nn" / "Dataset007_Copy" / "labelsTr" / "case_00003.nii.gz"
    assert result.actions == {"copied": 2} and target.stat().st_nlink == 1


def test_other_content_is_refused_then_replaced_without_touching_the_raw_file(raw, tmp_path):
    export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)
    source = raw / "case_00001" / "imaging.nii.gz"
    original = source.read_bytes()
    target = tmp_path / "nn" / DATASET / "imagesTr" / "case_00001_0000.nii.gz"
    os.unlink(target)
    target.write_bytes(b"something else")
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)
    assert [str(f) for f in result.failures] == [f"case_00001: {target} exists with other content than {source}; "
                                                 "pass --overwrite to replace it"]
    assert target.read_bytes() == b"something else"
    os.unlink(target)
    other = raw / "case_00002" / "imaging.nii.gz"        # case_00002 gets another CT, then is linked wrongly
    image, _ = make_case_arrays()
    write_volume(other, image + 1, kits_affine(SPACING), spacing=SPACING)
    other_bytes = other.read_bytes()
    os.link(other, target)
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, cases=["case_00001"], overwrite=True,
                                progress=False)
    assert result.actions == {"kept": 1, "linked": 1, "removed": 8} and os.path.samefile(target, source)
    # replacing the link swapped the name only: the raw file it pointed at is intact
    assert source.read_bytes() == original and other.read_bytes() == other_bytes != original


def test_dataset_json_with_other_content_needs_overwrite(raw, tmp_path):
    export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, cases=["case_00000", "case_00001"], progress=False)
    with pytest.raises(CaseError, match="holds 2 case file"):   # a smaller export would leave cases behind
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, cases=["case_00000"], progress=False)
    with pytest.raises(CaseError, match=r"dataset.json: exists with other content; pass --overwrite"):
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)   # numTraining 2 -> 5
    assert len(tree(tmp_path / "nn" / DATASET)) == 6     # refused before any case file was placed
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, cases=["case_00000"], overwrite=True,
                                progress=False)
    assert result.actions == {"kept": 2, "removed": 2}
    assert tree(tmp_path / "nn" / DATASET) == ["dataset.json", "fairkits_export.json", "imagesTr/case_00000_0000.nii.gz",
                                               "labelsTr/case_00000.nii.gz"]
    assert json.loads((tmp_path / "nn" / DATASET / "dataset.json").read_text())["numTraining"] == 1


def test_a_changed_split_is_refused_until_overwrite(raw, tmp_path):
    first = split_file(tmp_path, ["case_00000", "case_00001"], [], ["case_00002"])
    export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=first, progress=False)
    second = split_file(tmp_path, ["case_00000", "case_00002"], [], ["case_00001"])
    with pytest.raises(CaseError, match=r"imagesTr/case_00001_0000.nii.gz"):
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=second, progress=False)
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, split_path=second, overwrite=True,
                                progress=False)
    assert result.actions == {"kept": 2, "linked": 4, "removed": 4}
    assert json.loads((tmp_path / "nn" / DATASET / "splits_final.json").read_text()) == \
        [{"train": ["case_00000", "case_00002"], "val": ["case_00000", "case_00002"]}]


def cyst_cohort(tmp_path):
    """Two cases, case_00001's label map with a KiTS23 cyst (3) in 8 voxels."""
    raw = write_tiny_cohort(tmp_path / "raw23", n_cases=2, spacing=SPACING)
    _, labels = make_case_arrays()
    labels[9:11, 5:7, 6:8] = 3
    write_volume(raw / "case_00001" / "segmentation.nii.gz", labels, kits_affine(SPACING), spacing=SPACING)
    return raw, labels


def test_labels_outside_the_scheme_are_a_named_failure_and_nothing_is_declared(tmp_path):
    raw, _ = cyst_cohort(tmp_path)
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)
    assert [str(f) for f in result.failures] == ["case_00001: label values [3] are not in the label scheme {0:0,1:1,2:2}"]
    assert result.actions == {"linked": 2} and not (tmp_path / "nn" / DATASET / "dataset.json").exists()


def test_a_label_scheme_that_changes_values_writes_the_label_map(tmp_path):
    raw, labels = cyst_cohort(tmp_path)
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, label_scheme="kits23-cyst-kidney",
                                progress=False)
    ds = tmp_path / "nn" / DATASET
    assert result.actions == {"linked": 3, "written": 1} and not result.failures
    written = read_volume(ds / "labelsTr" / "case_00001.nii.gz")
    assert not os.path.samefile(ds / "labelsTr" / "case_00001.nii.gz", raw / "case_00001" / "segmentation.nii.gz")
    np.testing.assert_array_equal(written.array, np.where(labels == 3, 1, labels))
    assert written.array.dtype == np.uint8 and written.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(written.affine, kits_affine(SPACING), atol=1e-6)
    assert os.path.samefile(ds / "labelsTr" / "case_00000.nii.gz", raw / "case_00000" / "segmentation.nii.gz")
    again = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, label_scheme="kits23-cyst-kidney", progress=False)
    assert again.actions == {"kept": 4}    # the written map compared voxel by voxel, not rewritten
    with pytest.raises(CaseError, match=r"was exported with label scheme \{0:0,1:1,2:2,3:1\}, not \{0:0,1:1,2:2,3:0\}"):
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, label_scheme="kits23-cyst-background",
                           progress=False)
    (ds / "fairkits_export.json").unlink()     # no record of the scheme: every file is compared
    refused = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, label_scheme="kits23-cyst-background",
                                 progress=False)
    assert [str(f) for f in refused.failures] == [f"case_00001: {ds / 'labelsTr' / 'case_00001.nii.gz'} exists with "
                                                  "other labels than the label scheme gives; pass --overwrite to replace it"]
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, label_scheme="kits23-cyst-background",
                                overwrite=True, progress=False)
    assert result.actions == {"kept": 3, "written": 1}
    np.testing.assert_array_equal(read_volume(ds / "labelsTr" / "case_00001.nii.gz").array,
                                  np.where(labels == 3, 0, labels))


def test_a_case_without_ct_is_named_and_the_others_are_exported(raw, tmp_path):
    (raw / "case_00003" / "imaging.nii.gz").unlink()
    result = export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)
    assert [str(f) for f in result.failures] == ["case_00003: missing imaging.nii.gz"]
    assert result.actions == {"linked": 8} and not (tmp_path / "nn" / DATASET / "dataset.json").exists()


def test_dataset_id_and_name_are_checked(raw, tmp_path):
    (tmp_path / "nn" / "Dataset501_Other").mkdir(parents=True)
    with pytest.raises(CaseError, match="dataset id 501 is taken by Dataset501_Other"):
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=501, progress=False)
    with pytest.raises(CaseError, match=r"dataset id 1000 is not in 1..999"):
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=1000, progress=False)
    with pytest.raises(CaseError, match="may hold only letters"):
        export_raw_dataset(raw, tmp_path / "nn", dataset_id=502, name="KiTS 19", progress=False)


def test_cli_export_prints_the_next_steps_and_errors_in_one_line(raw, tmp_path, capsys):
    splits = split_file(tmp_path, ["case_00000", "case_00001"], ["case_00002"], ["case_00003", "case_00004"])
    argv = ["export-nnunet", "--raw", str(raw), "--out", str(tmp_path / "nn"), "--id", "501", "--splits", str(splits),
            "--no-progress"]
    assert preprocess.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'nn' / DATASET}: imagesTr 3 case(s), imagesTs 2; case files linked 10; " \
           f"{DATASET}/dataset.json written; {DATASET}/splits_final.json written" in out
    assert "nnUNetv2_plan_and_preprocess -d 501 --verify_dataset_integrity" in out
    assert "nnUNetv2_train 501 3d_fullres 0" in out
    assert preprocess.main(argv[:-3] + ["--cases", "case_00000", "--splits", str(splits), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith("give either a split or a case list")


# ----------------------------------------------------------------------------- summary.json
def per_case_table():
    """Three cases with hand-made counts: a perfect one, one missing tumor voxels, one tumor-free."""
    rows = [
        dict(case_id="case_00000", kidney_tp=90, kidney_fp=10, kidney_fn=0, tumor_tp=20, tumor_fp=0, tumor_fn=5,
             voxels=1000),
        dict(case_id="case_00001", kidney_tp=50, kidney_fp=0, kidney_fn=50, tumor_tp=0, tumor_fp=4, tumor_fn=0,
             voxels=500),
        dict(case_id="case_00002", kidney_tp=80, kidney_fp=0, kidney_fn=0, tumor_tp=0, tumor_fp=0, tumor_fn=0,
             voxels=800),
    ]
    for r in rows:
        r["kidney"] = 2 * r["kidney_tp"] / (2 * r["kidney_tp"] + r["kidney_fp"] + r["kidney_fn"])
        t = 2 * r["tumor_tp"] + r["tumor_fp"] + r["tumor_fn"]
        r["tumor"] = 2 * r["tumor_tp"] / t if t else math.nan
        r["mean"] = np.nanmean([r["kidney"], r["tumor"]])
    return pd.DataFrame(rows)


def test_summary_from_per_case_is_nnunets_format_with_hand_computed_values():
    s = summary_from_per_case(per_case_table())
    assert set(s) == {"metric_per_case", "mean", "foreground_mean"}
    first = s["metric_per_case"][0]
    assert first["reference_file"] == "case_00000.nii.gz" and first["prediction_file"] == "case_00000.nii.gz"
    assert first["metrics"]["(1, 2)"] == {"Dice": 180 / 190, "IoU": 90 / 100, "TP": 90, "FP": 10, "FN": 0,
                                          "TN": 900, "n_pred": 100, "n_ref": 90}
    assert first["metrics"]["2"] == {"Dice": 40 / 45, "IoU": 20 / 25, "TP": 20, "FP": 0, "FN": 5, "TN": 975,
                                     "n_pred": 20, "n_ref": 25}
    empty = s["metric_per_case"][2]["metrics"]["2"]
    assert math.isnan(empty["Dice"]) and math.isnan(empty["IoU"]) and empty["TN"] == 800
    assert s["metric_per_case"][1]["metrics"]["2"]["Dice"] == 0.0      # tumor predicted where there is none
    # mean: nanmean over cases; foreground_mean: mean of the two regions' means
    assert s["mean"]["(1, 2)"]["Dice"] == pytest.approx((180 / 190 + 100 / 150 + 1) / 3)
    assert s["mean"]["2"]["Dice"] == pytest.approx((40 / 45 + 0) / 2)
    assert s["mean"]["2"]["TP"] == pytest.approx(20 / 3)
    assert s["foreground_mean"]["Dice"] == pytest.approx(((180 / 190 + 100 / 150 + 1) / 3 + 40 / 90) / 2)


def test_summary_round_trip_restores_the_table(tmp_path):
    table = per_case_table()
    write_summary(tmp_path / "summary.json", summary_from_per_case(table))
    text = (tmp_path / "summary.json").read_text()
    assert text.startswith('{\n    "foreground_mean": {') and "NaN" in text     # as nnU-Net writes it
    back = read_summary(tmp_path / "summary.json")
    assert not back.failures and not back.notes
    columns = ["case_id", "kidney", "tumor", "mean", "kidney_tp", "kidney_fp", "kidney_fn", "tumor_tp", "tumor_fp",
               "tumor_fn", "voxels"]
    pd.testing.assert_frame_equal(back.frame[columns], table[columns])


def nnunet_entry(case_file, metrics):
    return {"reference_file": case_file, "prediction_file": "pred/x.nii.gz", "metrics": metrics}


def counts(tp, fp, fn, tn):
    d = 2 * tp + fp + fn
    return {"Dice": 2 * tp / d if d else math.nan, "IoU": tp / (tp + fp + fn) if d else math.nan,
            "TP": tp, "FP": fp, "FN": fn, "TN": tn, "n_pred": tp + fp, "n_ref": tp + fn}


def test_keys_and_case_ids_as_nnunet_writes_them():
    assert parse_key("(1, 2)") == {1, 2} and parse_key("2") == {2} and parse_key("(2,)") == {2}
    assert parse_key("(1, 2, 3)") == {1, 2, 3}
    assert case_id_from_file("/data/nnUNet_raw/Dataset501_K/labelsTr/case_00012.nii.gz") == "case_00012"
    assert case_id_from_file("raw/case_00012/segmentation.nii.gz") == "case_00012"
    assert case_id_from_file("gt/case_00007.nrrd") == "case_00007"


def test_label_based_summary_sums_labels_for_kidney_and_says_it_is_a_lower_bound(tmp_path):
    # 100 voxels; reference: 10 kidney (label 1) + 5 tumor (label 2); prediction: the same except that
    # 2 reference-tumor voxels are predicted kidney. Region (1, 2) Dice is 1; the labels see errors.
    label1, label2 = counts(tp=10, fp=2, fn=0, tn=88), counts(tp=3, fp=0, fn=2, tn=95)
    (tmp_path / "s.json").write_text(json.dumps({"metric_per_case": [
        nnunet_entry("gt/case_00000.nii.gz", {"1": label1, "2": label2}),
        nnunet_entry("gt/case_00001.nii.gz", {"(1, 2)": counts(15, 0, 0, 85), "(2,)": counts(3, 0, 2, 95)})]}))
    table = read_summary(tmp_path / "s.json")
    row = table.frame.set_index("case_id").loc["case_00000"]
    # summed: TP 13, FP 2, FN 2 -> 26 / 30, below the true 1.0 by 2 * 2 / (15 + 15)
    assert row["kidney"] == pytest.approx(26 / 30) and 1.0 - row["kidney"] == pytest.approx(2 * 2 / 30)
    assert row["tumor"] == pytest.approx(6 / 8) and row["mean"] == pytest.approx((26 / 30 + 6 / 8) / 2)
    assert (row["kidney_tp"] + row["kidney_fn"], row["voxels"]) == (15, 100)       # n_ref exact
    assert table.frame.set_index("case_id").loc["case_00001", "kidney"] == 1.0     # region summary: exact
    assert len(table.notes) == 1 and "label-based (no kidney region): kidney Dice of 1 case(s)" in table.notes[0]
    assert "lower bound" in table.notes[0]


def test_label_scheme_picks_the_regions_of_a_kits23_summary(tmp_path):
    # nnU-Net's KiTS23 regions: kidney (1, 2, 3), masses (2, 3), tumor 2
    (tmp_path / "s.json").write_text(json.dumps({"metric_per_case": [nnunet_entry("case_00004.nii.gz", {
        "(1, 2, 3)": counts(40, 0, 10, 50), "(2, 3)": counts(1, 1, 1, 97), "2": counts(5, 5, 0, 90)})]}))
    row = read_summary(tmp_path / "s.json", label_scheme="kits23-cyst-kidney").frame.iloc[0]
    assert (row["kidney"], row["tumor"]) == (80 / 90, 10 / 15)
    bad = read_summary(tmp_path / "s.json")         # kits19: no (1, 2) region and no labels 1 and 2
    assert [str(f) for f in bad.failures] == [
        "case_00004: has no entry for kidney ((1, 2)) or its labels; its keys are (1, 2, 3), (2, 3), 2"]


def test_bad_summaries_give_named_one_line_errors(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"metric_per_case": [
        nnunet_entry("case_00000.nii.gz", {"(1, 2)": {**counts(5, 0, 0, 5), "Dice": 0.5}, "2": counts(1, 0, 0, 9)}),
        nnunet_entry("case_00001.nii.gz", {"(1, 2)": counts(0, 3, 0, 7), "2": counts(0, 0, 0, 10)}),
        nnunet_entry("case_00002.nii.gz", {"(1, 2)": counts(5, 0, 0, 5), "2": counts(1, 0, 0, 9)}),
        nnunet_entry("case_00002.nii.gz", {"(1, 2)": counts(5, 0, 0, 5), "2": counts(1, 0, 0, 9)}),
        nnunet_entry("case_00003.nii.gz", {"(1, 2)": {**counts(5, 0, 0, 5), "TP": 2.5}, "2": counts(1, 0, 0, 9)})]}))
    table = read_summary(path)
    assert [str(f) for f in table.failures] == [
        "case_00000: Dice 0.5 of (1, 2) disagrees with its TP/FP/FN (1.0)",
        "case_00001: reference label map is empty (no kidney): nothing to score against",
        "case_00002: is listed twice in s.json",
        "case_00003: (1, 2) has TP/FP/FN/TN [2.5, 0.0, 0.0, 5.0]: voxel counts must be whole numbers >= 0"]
    assert table.frame["case_id"].tolist() == ["case_00002"]
    path.write_text('{"mean": {}}')
    with pytest.raises(CaseError, match=r"s.json: has no list 'metric_per_case': not an nnU-Net summary.json"):
        read_summary(path)
    path.write_text("{")
    with pytest.raises(CaseError, match=r"s.json: not valid JSON"):
        read_summary(path)
