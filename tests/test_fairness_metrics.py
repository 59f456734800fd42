"""Group table, fairness summary (SPEC Table 1 checks, ES-Dice, degenerate inputs) and CVaR."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest

import fairness
from fairness.grouping import group_order
from fairness.summary import fairness_summary
from fairness.tables import group_table
from fairness.tails import cvar, tail_size, within_group_cvar, worst_group_cvar

NAN = float("nan")


@pytest.fixture
def per_case():
    return pd.DataFrame(
        {
            "case": ["m1", "m2", "m3", "f1", "f2"],
            "sex": ["male", "male", "male", "female", "female"],
            "kidney": [0.9, 0.7, 0.8, 1.0, 0.6],
            "tumor": [0.8, NAN, 0.6, 0.5, NAN],
            "mean": [0.85, 0.7, 0.7, 0.75, 0.6],
        }
    )


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- group_table ---------------------------------------------------------------------------

def test_group_table_hand_computed(per_case, no_warnings):
    table = group_table(per_case, group_col="sex")
    assert list(table.index) == ["female", "male", "all"]
    assert table.index.name == "sex"
    assert table["n"].tolist() == [2, 3, 5]
    assert table.loc["male", "kidney"] == pytest.approx(0.8)
    assert table.loc["male", "tumor"] == pytest.approx(0.7)     # (0.8 + 0.6) / 2, NaN skipped
    assert table.loc["male", "mean"] == pytest.approx(0.75)
    assert table.loc["female", "kidney"] == pytest.approx(0.8)
    assert table.loc["female", "tumor"] == pytest.approx(0.5)
    assert table.loc["female", "mean"] == pytest.approx(0.675)
    assert table.loc["all", "kidney"] == pytest.approx(0.8)
    assert table.loc["all", "tumor"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert table.loc["all", "mean"] == pytest.approx(0.72)      # over cases, not over groups
    assert table["n_excluded_tumor"].tolist() == [1, 1, 2]
    assert table["n_excluded_kidney"].tolist() == [0, 0, 0]
    assert table["n_excluded_mean"].tolist() == [0, 0, 0]


def test_group_table_explicit_order_keeps_empty_groups(per_case, no_warnings):
    table = group_table(per_case, group_col="sex", metrics=("tumor",), order=["male", "female", "other"])
    assert list(table.index) == ["male", "female", "other", "all"]
    assert list(table.columns) == ["n", "tumor", "n_excluded_tumor"]
    assert table.loc["other", "n"] == 0
    assert math.isnan(table.loc["other", "tumor"])
    assert table.loc["other", "n_excluded_tumor"] == 0


def test_group_table_group_with_only_nan_is_kept(per_case, no_warnings):
    per_case.loc[per_case["sex"] == "female", "tumor"] = NAN
    table = group_table(per_case, group_col="sex")
    assert table.loc["female", "n"] == 2
    assert math.isnan(table.loc["female", "tumor"])
    assert table.loc["female", "n_excluded_tumor"] == 2


def test_group_table_rejects_order_that_drops_a_group(per_case):
    with pytest.raises(ValueError, match="female"):
        group_table(per_case, group_col="sex", order=["male"])


def test_group_table_missing_label_counts_in_all_only(per_case):
    per_case.loc[0, "sex"] = None
    with pytest.warns(UserWarning, match="1 case"):
        table = group_table(per_case, group_col="sex")
    assert table["n"].tolist() == [2, 2, 5]


def test_group_table_missing_column(per_case):
    with pytest.raises(KeyError, match="age"):
        group_table(per_case, group_col="age")


def test_natural_group_order():
    bins = pd.Series([">=70", "[60,70)", "[0,50)", "[50,60)", "[0,50)"])
    assert group_order(bins) == ["[0,50)", "[50,60)", "[60,70)", ">=70"]
    assert group_order(pd.Series(["g10", "g9", "g1"])) == ["g1", "g9", "g10"]
    assert group_order(pd.Series([3, 1, 2, np.nan])) == [1.0, 2.0, 3.0]
    cats = pd.Series(pd.Categorical(["b"], categories=["c", "b", "a"], ordered=True))
    assert group_order(cats) == ["c", "b", "a"]


# --- fairness_summary -----------------------------------------------------------------------

def test_spec_table1_sex(no_warnings):
    s = fairness_summary({"male": 84.2, "female": 88.9})
    assert round(s["sd"], 2) == 2.35
    assert round(s["ser"], 2) == 1.42
    assert s["scale"] == "percent"
    assert s["worst_group"] == "male" and s["best_group"] == "female"
    assert s["gap"] == pytest.approx(4.7)
    assert s["n_groups"] == 2


def test_spec_table1_age(no_warnings):
    s = fairness_summary({"[0,50)": 87.4, "[50,60)": 86.0, "[60,70)": 82.8, ">=70": 91.8})
    assert round(s["sd"], 2) == 3.23
    assert round(s["ser"], 2) == 2.10
    assert s["worst"] == 82.8 and s["worst_group"] == "[60,70)"
    assert s["best"] == 91.8


def test_spec_table1_as_fractions(no_warnings):
    sex = fairness_summary({"male": 0.842, "female": 0.889})
    assert sex["scale"] == "fraction"
    assert round(sex["sd"], 4) == 0.0235
    assert round(sex["ser"], 2) == 1.42
    age = fairness_summary({"a": 0.874, "b": 0.860, "c": 0.828, "d": 0.918}, scale="fraction")
    assert round(age["sd"], 4) == 0.0323
    assert round(age["ser"], 2) == 2.10


def test_es_dice_hand_computed(no_warnings):
    # spread = |0.8 - 0.86| + |0.9 - 0.86| = 0.10 -> 0.86 / 1.10
    s = fairness_summary({"a": 0.8, "b": 0.9}, overall=0.86)
    assert s["es_dice"] == pytest.approx(0.86 / 1.1)
    p = fairness_summary({"a": 80.0, "b": 90.0}, overall=86.0)
    assert p["es_dice"] == pytest.approx(86 / 1.1)     # same value, returned in %
    assert fairness_summary({"a": 0.8, "b": 0.8}, overall=0.8)["es_dice"] == pytest.approx(0.8)


def test_es_dice_needs_overall(no_warnings):
    assert math.isnan(fairness_summary({"a": 0.8, "b": 0.9})["es_dice"])


def test_ser_inf_when_a_group_is_perfect():
    with pytest.warns(UserWarning, match="inf"):
        s = fairness_summary({"a": 1.0, "b": 0.9})
    assert s["ser"] == math.inf
    assert s["sd"] == pytest.approx(0.05)


def test_all_groups_perfect_is_fair(no_warnings):
    s = fairness_summary({"a": 1.0, "b": 1.0})
    assert s["ser"] == 1.0 and s["sd"] == 0.0 and s["gap"] == 0.0


def test_one_group():
    with pytest.warns(UserWarning, match="one group"):
        s = fairness_summary({"male": 0.85}, overall=0.85)
    assert s["sd"] == 0.0 and s["ser"] == 1.0 and s["gap"] == 0.0
    assert s["es_dice"] == pytest.approx(0.85)
    assert s["n_groups"] == 1


def test_no_group():
    with pytest.warns(UserWarning, match="no group"):
        s = fairness_summary({})
    assert s["n_groups"] == 0 and s["worst_group"] is None
    assert all(math.isnan(s[k]) for k in ("sd", "ser", "es_dice", "worst", "best", "gap"))


def test_nan_group_is_skipped_with_warning():
    with pytest.warns(UserWarning, match="'b'"):
        s = fairness_summary({"a": 84.2, "b": NAN, "c": 88.9})
    assert s["n_groups"] == 2
    assert round(s["sd"], 2) == 2.35 and round(s["ser"], 2) == 1.42


def test_series_input_and_explicit_percent(no_warnings):
    s = fairness_summary(pd.Series({"a": 0.5, "b": 1.0}), scale="percent")  # a failed model, in %
    assert s["scale"] == "percent"
    assert s["ser"] == pytest.approx(99.5 / 99.0)


def test_out_of_range_and_bad_scale():
    with pytest.raises(ValueError, match="outside"):
        fairness_summary({"a": 0.9, "b": 1.2}, scale="fraction")
    with pytest.raises(ValueError, match="outside"):
        fairness_summary({"a": -1.0, "b": 50.0})
    with pytest.raises(ValueError, match="scale"):
        fairness_summary({"a": 0.9}, scale="percentage")
    with pytest.raises(ValueError, match="units"):
        fairness_summary({"a": 0.84, "b": 0.89}, overall=86.5)


# --- CVaR -----------------------------------------------------------------------------------

def test_cvar_hand_computed(no_warnings):
    values = [0.9, 0.5, 0.7, NAN, 0.3, 0.8]            # 5 valid: 0.3 0.5 0.7 0.8 0.9
    assert cvar(values, alpha=0.2) == pytest.approx(0.3)               # k = ceil(1.0) = 1
    assert cvar(values, alpha=0.3) == pytest.approx(0.4)               # k = ceil(1.5) = 2
    assert cvar(values, alpha=0.5) == pytest.approx(0.5)               # k = ceil(2.5) = 3
    assert cvar(values, alpha=0.01) == pytest.approx(0.3)              # k >= 1
    assert cvar(values, alpha=1.0) == pytest.approx(np.nanmean(values))


def test_tail_size_rounding():
    assert tail_size(7, alpha=0.2) == 2
    assert tail_size(30, alpha=0.1) == 3      # 0.1 * 30 is 3.0000000000000004 in floats
    assert tail_size(5, alpha=0.2) == 1
    assert tail_size(1, alpha=0.01) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            tail_size(10, alpha=bad)


def test_cvar_of_nothing():
    with pytest.warns(UserWarning, match="no"):
        assert math.isnan(cvar([NAN, NAN], alpha=0.2))


def test_within_group_and_worst_group_cvar(per_case, no_warnings):
    # male mean: 0.85 0.7 0.7, k = ceil(1.5) = 2 -> 0.7; female: 0.75 0.6, k = 1 -> 0.6
    per_group = within_group_cvar(per_case, group_col="sex", metric="mean", alpha=0.5)
    assert list(per_group) == ["female", "male"]
    assert per_group["male"] == pytest.approx(0.7)
    assert per_group["female"] == pytest.approx(0.6)
    group, value = worst_group_cvar(per_case, group_col="sex", metric="mean", alpha=0.5)
    assert group == "female" and value == pytest.approx(0.6)
    # tumor: NaN cases dropped; male 0.8 0.6 -> k = 1 -> 0.6; female 0.5
    tumor = within_group_cvar(per_case, group_col="sex", metric="tumor", alpha=0.5)
    assert tumor == pytest.approx({"female": 0.5, "male": 0.6})


def test_within_group_cvar_empty_group():
    frame = pd.DataFrame({"sex": ["male", "female"], "tumor": [0.7, NAN]})
    with pytest.warns(UserWarning, match="female"):
        per_group = within_group_cvar(frame, group_col="sex", metric="tumor", alpha=0.2)
    assert math.isnan(per_group["female"]) and per_group["male"] == pytest.approx(0.7)
    with pytest.warns(UserWarning):
        assert worst_group_cvar(frame, group_col="sex", metric="tumor", alpha=0.2) == ("male", 0.7)


def test_package_reexports():
    for name in fairness.__all__:
        assert callable(getattr(fairness, name))
