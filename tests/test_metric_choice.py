"""Auditing by another metric than Dice (fairness/metrics.py): NSD, HD95, ASSD through the same
tables, statistics and figures, with the direction and unit of each (hand-computed cases)."""
import math

import numpy as np
import pandas as pd
import pytest

import evaluate
from config import ConfigError, load_config
from data.nifti import kits_affine, write_volume
from fairness.audit import audit_groups
from fairness.metrics import case_scores, get_metric, metric_view
from fairness.paired import paired_delta
from fairness.summary import fairness_summary
from fairness.surface import kits_case_surface
from fairness.tails import within_group_cvar
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort

SPACING = (4.0, 0.9, 0.9)


def test_distance_summary_is_worst_highest_and_ser_a_ratio_of_distances():
    s = fairness_summary({"a": 2.0, "b": 5.0}, higher_is_better=False)
    assert (s["worst_group"], s["worst"], s["best_group"], s["best"]) == ("b", 5.0, "a", 2.0)
    assert s["gap"] == 3.0 and s["sd"] == 1.5 and s["ser"] == 2.5 and math.isnan(s["es_dice"])
    with pytest.raises(ValueError, match="not a finite distance"):
        fairness_summary({"a": -1.0, "b": 2.0}, higher_is_better=False)


def test_distance_tail_is_the_highest_values():
    frame = pd.DataFrame({"g": ["a"] * 5, "mean": [1.0, 2.0, 3.0, 4.0, 10.0]})
    assert within_group_cvar(frame, "g", alpha=0.2) == {"a": 1.0}
    assert within_group_cvar(frame, "g", alpha=0.2, higher_is_better=False) == {"a": 10.0}
    assert within_group_cvar(frame, "g", alpha=0.4, higher_is_better=False) == {"a": 7.0}


def test_metric_view_and_case_scores():
    _, ref = make_case_arrays()
    pred = np.roll(ref, 1, axis=2)
    row = case_scores(pred, ref, spacing=SPACING, metrics=("hd95", "nsd"), tolerance_mm=0.5)
    assert {"kidney", "tumor", "mean", "nsd_kidney", "nsd_tumor", "nsd_mean",
            "hd95_kidney", "hd95_tumor", "hd95_mean"} <= set(row)
    assert not [c for c in row if c.startswith("assd")]
    assert row["hd95_kidney"] == pytest.approx(kits_case_surface(pred, ref, SPACING, metrics=("hd95",))["hd95_kidney"])
    frame = pd.DataFrame([row])
    view = metric_view(frame, "hd95")
    assert view.loc[0, "kidney"] == row["hd95_kidney"] and view.loc[0, "mean"] == row["hd95_mean"]
    with pytest.raises(ValueError, match="no ASSD columns"):
        metric_view(frame, "assd")
    with pytest.raises(ValueError, match="valid: dice, nsd, hd95, assd"):
        get_metric("hausdorff")


def test_paired_worst_group_of_a_distance_is_the_highest():
    base = pd.DataFrame({"case_id": list("abcd"), "g": ["x", "x", "y", "y"], "mean": [1.0, 1.0, 3.0, 3.0]})
    better = base.assign(mean=[1.0, 1.0, 2.0, 2.0])    # the worst group's distance falls by 1 mm
    row = paired_delta([base], [better], "g", n_boot=200, measure=get_metric("hd95"))
    assert row["delta_worst"] == pytest.approx(-1.0) and row["delta_mean"] == pytest.approx(-0.5)
    assert row["delta_sd"] == pytest.approx(-0.5) and row["delta_ser"] == pytest.approx(2.0 - 3.0)


def test_config_metrics_are_checked():
    assert load_config("configs/demo.yaml", ["eval.metrics=[hd95]"])["eval"]["metrics"] == ["dice", "hd95"]
    with pytest.raises(ConfigError, match="eval.metrics.*unknown metric 'hd'"):
        load_config("configs/demo.yaml", ["eval.metrics=[hd]"])


@pytest.fixture()
def shifted_predictions(tmp_path):
    """Men's predictions are the reference moved 2 voxels along x, women's 1 voxel."""
    gt = write_tiny_cohort(tmp_path / "gt", n_cases=4, spacing=SPACING)  # male, female, male, female
    _, ref = make_case_arrays()
    preds = tmp_path / "preds"
    shifts = [2, 1, 2, 1]
    for i, shift in enumerate(shifts):
        write_volume(preds / f"case_{i:05d}.nii.gz", np.roll(ref, shift, axis=2), kits_affine(SPACING), spacing=SPACING)
    return gt, preds, ref, shifts


def test_evaluate_audits_hd95_with_its_direction(shifted_predictions, tmp_path, capsys):
    gt, preds, ref, shifts = shifted_predictions
    out = tmp_path / "audit"
    code = evaluate.main(["--pred", str(preds), "--gt", str(gt), "--group", "sex", "--out", str(out),
                          "--metric", "dice", "hd95", "--no-progress", "--n-boot", "100", "--n-perm", "100"])
    assert code == 0
    assert "(HD95, mm)" in capsys.readouterr().out
    per_case = pd.read_csv(out / "per_case.csv").set_index("case_id")
    expected = {s: kits_case_surface(np.roll(ref, s, axis=2), ref, SPACING, metrics=("hd95",)) for s in (1, 2)}
    for i, s in enumerate(shifts):
        assert per_case.loc[f"case_{i:05d}", "hd95_mean"] == pytest.approx(expected[s]["hd95_mean"])
    male, female = expected[2]["hd95_mean"], expected[1]["hd95_mean"]
    assert male > female > 0
    groups = pd.read_csv(out / "groups_sex_hd95.csv", index_col=0)
    assert groups.loc["male", "mean"] == pytest.approx(male) and groups.loc["female", "mean"] == pytest.approx(female)
    summary = pd.read_csv(out / "summary_sex_hd95.csv", index_col=0)["value"]
    assert float(summary["worst"]) == pytest.approx(male)          # the worst group is the farther one
    assert float(summary["ser"]) == pytest.approx(male / female)
    assert float(summary["gap"]) == pytest.approx(male - female)
    assert (out / "groups_sex.csv").is_file() and (out / "box_sex_hd95.png").is_file()   # Dice's tables too
    audit = audit_groups(per_case.reset_index(), "sex", metric="hd95", n_perm=100)
    assert audit.summary["worst_group"] == "male" and audit.significance["worst"] == "male"


def test_nsd_tolerance_reaches_the_scores(shifted_predictions, tmp_path):
    gt, preds, _, _ = shifted_predictions
    for tolerance, expect_all_one in ((100.0, True), (0.5, False)):
        out = tmp_path / f"nsd{tolerance}"
        assert evaluate.main(["--pred", str(preds), "--gt", str(gt), "--out", str(out), "--metric", "nsd",
                              "--surface-tolerance", str(tolerance), "--no-progress", "--n-boot", "50",
                              "--n-perm", "100"]) == 0
        nsd = pd.read_csv(out / "per_case.csv")["nsd_kidney"]
        assert (nsd == 1.0).all() == expect_all_one
        assert (nsd > 0).all()
