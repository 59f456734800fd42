"""evaluate.py: the audit of external predictions, on hand-made cases with hand-computed Dice."""
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
