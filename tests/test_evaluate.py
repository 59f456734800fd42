"""evaluate.py: the audit of external predictions, on hand-made cases with hand-computed Dice."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import evaluate
from data.nifti import kits_affine, write_volume
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort

SPACING = (4.0, 0.9, 0.9)


@pytest.fixture()
def cohort_and_predictions(tmp_path):
    gt = write_tiny_cohort(tmp_path / "gt", n_cases=4, spacing=SPACING)  # male, female, male, female
    _, ref = make_case_arrays()
    perfect = ref.copy()
    no_tumor = np.where(ref == 2, 1, ref).astype(np.uint8)   # kidney 1, tumor 0 -> mean 0.5
    thinner = ref.copy()
    thinner[3] = 0                                             # 90 kidney voxels lost: 900/990
    empty = np.zeros_like(ref)                                 # kidney 0, tumor 0
    preds = tmp_path / "preds"
    for i, labels in enumerate([perfect, no_tumor, thinner, empty]):
        write_volume(preds / f"case_{i:05d}.nii.gz", labels, kits_affine(SPACING), spacing=SPACING)
    return gt, preds


def test_audit_matches_hand_computed_table(cohort_and_predictions, tmp_path, capsys):
    gt, preds = cohort_and_predictions
    code = evaluate.main(["--pred", str(preds), "--gt", str(gt), "--group", "sex", "--out", str(tmp_path / "audit"),
                          "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    per_case = pd.read_csv(tmp_path / "audit" / "per_case.csv").set_index("case_id")
    np.testing.assert_allclose(per_case["kidney"], [1, 1, 900 / 990, 0])
    np.testing.assert_allclose(per_case["tumor"], [1, 0, 1, 0])
    np.testing.assert_allclose(per_case["mean"], [1, 0.5, (900 / 990 + 1) / 2, 0])
    male, female = (1 + (900 / 990 + 1) / 2) / 2, 0.25
    sd, ser = abs(male - female) / 2, (1 - female) / (1 - male)
    assert f"SD {100 * sd:.2f} [" in out and f"SER {ser:.2f} [" in out   # SD 36.36, SER 33.00
    groups = pd.read_csv(tmp_path / "audit" / "groups_sex.csv", index_col=0)
    assert groups.loc["male", "mean"] == pytest.approx(male) and groups.loc["all", "n"] == 4


def test_missing_prediction_is_listed_and_others_scored(cohort_and_predictions, capsys):
    gt, preds = cohort_and_predictions
    (preds / "case_00002.nii.gz").unlink()
    code = evaluate.main(["--pred", str(preds), "--gt", str(gt), "--group", "age", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "case_00002: no prediction in" in captured.err
    assert "scored 3 case(s), 1 failed" in captured.out


def test_existing_tables_are_not_overwritten(cohort_and_predictions, tmp_path, capsys):
    gt, preds = cohort_and_predictions
    args = ["--pred", str(preds), "--gt", str(gt), "--out", str(tmp_path / "audit"), "--no-progress"]
    assert evaluate.main(args) == 0
    assert evaluate.main(args) == 2
    assert "holds results (per_case.csv); pass --overwrite" in capsys.readouterr().err
    assert evaluate.main(args + ["--overwrite"]) == 0


def test_group_dice_reproduces_spec_table_1(capsys):
    assert evaluate.main(["--group-dice", "male=84.2", "female=88.9"]) == 0
    assert "SD 2.35%   SER 1.42" in capsys.readouterr().out
    assert evaluate.main(["--group-dice", "[0,50)=87.4", "[50,60)=86.0", "[60,70)=82.8", ">=70=91.8"]) == 0
    assert "SD 3.23%   SER 2.10" in capsys.readouterr().out


# ----------------------------------------------------------------------------- nnU-Net's files
FAST = ["--n-boot", "50", "--n-perm", "100", "--no-progress"]


def test_a_prediction_folder_written_by_nnunet_is_read_as_it_is(cohort_and_predictions, tmp_path):
    gt, preds = cohort_and_predictions
    # nnUNetv2_predict writes these beside the predictions
    (preds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney": [1, 2], "tumor": 2}}))
    (preds / "plans.json").write_text("{}")
    (preds / "predict_from_raw_data_args.json").write_text("{}")
    assert evaluate.main(["--pred", str(preds), "--gt", str(gt), "--out", str(tmp_path / "audit"), *FAST]) == 0
    per_case = pd.read_csv(tmp_path / "audit" / "per_case.csv").set_index("case_id")
    np.testing.assert_allclose(per_case["mean"], [1, 0.5, (900 / 990 + 1) / 2, 0])


def test_summary_json_is_written_beside_per_case_with_nnunets_keys(cohort_and_predictions, tmp_path):
    gt, preds = cohort_and_predictions
    assert evaluate.main(["--pred", str(preds), "--gt", str(gt), "--out", str(tmp_path / "audit"), *FAST]) == 0
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    cases = {Path(c["reference_file"]).parent.name: c for c in summary["metric_per_case"]}
    assert cases["case_00002"]["prediction_file"] == str((preds / "case_00002.nii.gz").resolve())
    # the reference: kidney 6 x 9 x 10 = 540 voxels (tumor 3 x 4 x 4 = 48 inside) of 12 x 20 x 24 = 5760
    assert cases["case_00002"]["metrics"]["(1, 2)"] == {"Dice": 900 / 990, "IoU": 450 / 540, "TP": 450, "FP": 0,
                                                        "FN": 90, "TN": 5220, "n_pred": 450, "n_ref": 540}
    assert cases["case_00001"]["metrics"]["2"] == {"Dice": 0.0, "IoU": 0.0, "TP": 0, "FP": 0, "FN": 48, "TN": 5712,
                                                   "n_pred": 0, "n_ref": 48}
    assert summary["mean"]["2"]["Dice"] == pytest.approx(0.5) and summary["foreground_mean"]["Dice"] == \
        pytest.approx(((1 + 1 + 900 / 990 + 0) / 4 + 0.5) / 2)
    per_case = pd.read_csv(tmp_path / "audit" / "per_case.csv").set_index("case_id")
    assert per_case.loc["case_00002", ["kidney_tp", "kidney_fp", "kidney_fn", "voxels"]].tolist() == [450, 0, 90, 5760]
    assert "prediction_file" not in per_case.columns     # the files are named in summary.json only


def test_nnunet_summary_written_by_us_reproduces_the_audit_exactly(cohort_and_predictions, tmp_path, capsys):
    gt, preds = cohort_and_predictions
    groups = ["--group", "sex", "age"]
    assert evaluate.main(["--pred", str(preds), "--gt", str(gt), "--out", str(tmp_path / "files"), *groups, *FAST]) == 0
    files_out = capsys.readouterr().out
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "files" / "summary.json"), "--meta", str(gt / "kits.json"),
                          "--out", str(tmp_path / "summary"), *groups, *FAST]) == 0
    summary_out = capsys.readouterr().out
    for name in ("per_case.csv", "groups_sex.csv", "summary_sex.csv", "groups_age.csv", "summary_age.csv"):
        a, b = (pd.read_csv(tmp_path / d / name) for d in ("files", "summary"))
        if name == "per_case.csv":   # a summary names no voxels: the tumor count is the one column it lacks
            assert set(a.columns) - set(b.columns) == {"tumor_count"}
            a = a.drop(columns="tumor_count")
        assert a.equals(b), name
    tables = [[line for line in out.splitlines() if "grouped by" not in line and "tables in" not in line
               and not line.startswith("report: ")]
              for out in (files_out, summary_out)]      # all but the titles and the folders
    assert tables[0] == tables[1] and "SD " in files_out
    assert json.loads((tmp_path / "files" / "summary.json").read_text()) == \
        json.loads((tmp_path / "summary" / "summary.json").read_text())


def test_nnunet_summary_needs_metadata_and_names_what_it_cannot_join(cohort_and_predictions, tmp_path, capsys):
    gt, preds = cohort_and_predictions
    assert evaluate.main(["--pred", str(preds), "--gt", str(gt), "--out", str(tmp_path / "files"), *FAST]) == 0
    summary = json.loads((tmp_path / "files" / "summary.json").read_text())
    for case in summary["metric_per_case"]:        # as if scored on another machine
        case["reference_file"] = "/elsewhere/labelsTr/" + Path(case["reference_file"]).parent.name + ".nii.gz"
    (tmp_path / "moved.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "moved.json"), *FAST]) == 2
    assert "--nnunet-summary needs the metadata: --meta kits.json (or --gt)" in capsys.readouterr().err
    meta = json.loads((gt / "kits.json").read_text())
    (tmp_path / "three.json").write_text(json.dumps([m for m in meta if m["case_id"] != "case_00003"]))
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "moved.json"), "--meta", str(tmp_path / "three.json"),
                          "--out", str(tmp_path / "a"), *FAST]) == 1
    err = capsys.readouterr().err
    assert f"case_00003: not in the metadata file {tmp_path / 'three.json'}" in err
    assert "3 case(s) have no reference label map at the path the summary names" in err
    assert pd.read_csv(tmp_path / "a" / "per_case.csv")["kidney_ml"].isna().all()
    # --gt: its kits.json, and the reference headers for the volumes
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "moved.json"), "--gt", str(gt),
                          "--out", str(tmp_path / "b"), *FAST]) == 0
    volumes = pd.read_csv(tmp_path / "b" / "per_case.csv")["kidney_ml"]
    assert volumes.tolist() == pytest.approx([540 * 4.0 * 0.9 * 0.9 / 1000] * 4, rel=1e-6)


def test_the_audit_does_not_depend_on_the_order_cases_are_listed_in(cohort_and_predictions, tmp_path):
    gt, preds = cohort_and_predictions
    for name, cases in (("sorted", "case_00000,case_00001,case_00002,case_00003"),
                        ("shuffled", "case_00002,case_00000,case_00003,case_00001")):
        assert evaluate.main(["--pred", str(preds), "--gt", str(gt), "--cases", cases, "--out", str(tmp_path / name),
                              *FAST]) == 0
    for table in ("per_case.csv", "groups_sex.csv", "summary_sex.csv"):   # bootstrap CIs included
        assert pd.read_csv(tmp_path / "sorted" / table).equals(pd.read_csv(tmp_path / "shuffled" / table)), table
