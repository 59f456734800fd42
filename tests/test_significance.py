"""The statistics of a fairness claim are honest (SPEC §5): calibrated under no effect, powered
as printed under a planted one, case mix adjusted away, identical methods identical.

Simulated per-case tables, no training. Each calibration runs >= 1000 replicates with a fixed
seed; the tolerances are those the project promises (5 % +- 1.5 %, 80 % +- 5 %).
"""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from fairness.audit import audit_groups, format_audit
from fairness.paired import paired_delta
from fairness.adjusted import adjusted_gap
from fairness.significance import group_gap_test, holm, significance, significance_line
from fairness.stats import bootstrap_audit

REPLICATES = 1000


def table(rng, sizes, shifts, spread=0.1, centre=0.8):
    groups, values = [], []
    for i, (n, shift) in enumerate(zip(sizes, shifts)):
        groups += [f"g{i}"] * n
        values.append(rng.normal(centre - shift, spread, n))
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(sum(sizes))], "group": groups,
                         "mean": np.concatenate(values)})


def test_the_gap_test_is_seeded_and_measures_the_observed_gap():
    rng = np.random.default_rng(0)
    per_case = table(rng, (120, 80), (0.0, 0.05))
    a = group_gap_test(per_case, "group", n_perm=5000, seed=3)
    assert a == group_gap_test(per_case, "group", n_perm=5000, seed=3)
    assert a["gap"] == pytest.approx(abs(per_case.groupby("group")["mean"].mean().diff().iloc[-1]))
    assert a["sd"] == pytest.approx(a["gap"] / 2)      # two groups: SD (ddof 0) is half the gap
    assert a["gap_p"] < 0.01 and 0 < a["gap_null95"] < a["gap"]


def test_two_groups_test_welchs_t_against_its_bootstrap_which_agrees_with_scipy_on_normal_values():
    """The statistic is Welch's t (scipy's, to the last digit); its reference is the shape bootstrap,
    which on normal values gives scipy's p and interval up to the bootstrap's noise."""
    from fairness.welch import two_group_test

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.9, 0.015, 30), rng.normal(0.87, 0.08, 8)
    per_case = pd.DataFrame({"group": ["a"] * 30 + ["b"] * 8, "mean": np.r_[a, b]})
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    two = two_group_test(np.r_[a, b], np.repeat([0, 1], [30, 8]), n_boot=20000)
    assert float(two["t"]) == pytest.approx(ref.statistic, rel=1e-12)
    res = group_gap_test(per_case, "group", n_perm=20000)
    assert res["gap_p"] == pytest.approx(ref.pvalue, abs=0.04) and res["sd_p"] == res["ser_p"] == res["gap_p"]
    ci = ref.confidence_interval()
    assert (res["gap_lo"], res["gap_hi"]) == pytest.approx((ci.low, ci.high), abs=0.01)
    # one verdict: the interval holds 0 exactly when p >= 0.05, the gap is beyond "noise alone" when p < 0.05
    assert (res["gap_lo"] <= 0 <= res["gap_hi"]) == (res["gap_p"] >= 0.05) == (res["gap"] <= res["gap_null95"])


def test_a_gap_explained_by_tumor_volume_vanishes_once_adjusted():
    rng = np.random.default_rng(11)
    n = 200
    female = rng.random(n) < 0.4
    tumor_ml = np.exp(rng.normal(np.where(female, 2.0, 3.5), 0.6))      # the only group effect: smaller tumors
    dice = 0.55 + 0.08 * np.log1p(tumor_ml) + rng.normal(0, 0.05, n)   # ...which are harder to segment
    per_case = pd.DataFrame({"sex": np.where(female, "female", "male"), "mean": dice, "tumor_ml": tumor_ml,
                             "kidney_ml": rng.normal(150, 20, n), "bmi": rng.normal(28, 4, n)})
    adj = adjusted_gap(per_case, "sex")
    assert adj["worst"] == "female" and adj["raw_lo"] > 0.05          # the raw gap is clearly there
    assert adj["lo"] < 0 < adj["hi"]                                  # and explained by case mix
    assert abs(adj["gap"]) < 0.02


def test_adjusted_gap_of_a_hand_design_is_the_ols_coefficient():
    # y = 0.9 - 0.1 * female + 0.02 * x exactly: the adjusted gap is 0.1 with a zero-width CI
    x = np.arange(10, dtype=float)
    female = np.array([0, 1] * 5, dtype=bool)
    per_case = pd.DataFrame({"sex": np.where(female, "female", "male"), "mean": 0.9 - 0.1 * female + 0.02 * x,
                             "bmi": x})
    adj = adjusted_gap(per_case, "sex", covariates=["bmi"])
    assert adj["gap"] == pytest.approx(0.1) and adj["hi"] - adj["lo"] == pytest.approx(0, abs=1e-9)


def test_identical_methods_give_a_delta_of_exactly_zero():
    rng = np.random.default_rng(2)
    runs = [table(rng, (14, 9), (0.0, 0.04)) for _ in range(3)]
    row = paired_delta(runs, [r.copy() for r in runs], "group", n_boot=500)
    for s in ("mean", "sd", "ser", "worst"):
        assert row[f"delta_{s}"] == 0.0 and row[f"delta_{s}_lo"] == 0.0 and row[f"delta_{s}_hi"] == 0.0
        assert row[f"p_{s}"] == 1.0


def test_a_mitigation_that_lifts_the_worst_group_is_seen_as_such():
    rng = np.random.default_rng(4)
    base = [table(rng, (30, 20), (0.0, 0.06), spread=0.05) for _ in range(2)]
    lifted = [b.assign(mean=b["mean"] + np.where(b["group"] == "g1", 0.05, 0.0)) for b in base]
    row = paired_delta(base, lifted, "group", n_boot=1000)
    assert row["delta_worst"] == pytest.approx(5.0) and row["p_worst"] < 0.01
    assert row["delta_sd_hi"] < 0 and row["p_sd"] < 0.01


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.30]) == pytest.approx([0.03, 0.08, 0.30])
    assert holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])


def test_a_group_of_one_case_gets_no_interval_but_a_note():
    per_case = pd.DataFrame({"case_id": list("abcde"), "sex": ["male"] * 4 + ["female"],
                             "kidney": [0.9, 0.8, 0.85, 0.95, 0.7], "tumor": [0.5, 0.6, 0.4, 0.7, 0.3],
                             "mean": [0.7, 0.7, 0.625, 0.825, 0.5]})
    boot = bootstrap_audit(per_case, "sex", n_boot=200, seed=0)
    assert boot["groups"].loc["female", ["mean_lo", "mean_hi"]].isna().all()
    assert not boot["groups"].loc["male", ["mean_lo", "mean_hi"]].isna().any()
    assert all(math.isnan(v) for v in boot["sd"] + boot["ser"])
    text = format_audit(audit_groups(per_case, "sex", order=["male", "female"]))
    assert "(no interval for female: fewer than 2 cases;" in text


def test_the_printed_line_says_it_in_words():
    sig = {"gap": 0.065, "gap_lo": -0.024, "gap_hi": 0.155, "gap_null95": 0.085, "test": "Welch t", "gap_p": 0.143,
           "gap_p_holm": 0.286, "holm_family": 2, "mdg80": 0.127, "spreads": {"male": 0.095, "female": 0.096},
           "gap_adjusted": 0.051, "gap_adjusted_lo": 0.002, "gap_adjusted_hi": 0.1, "gap_adjusted_raw": 0.063,
           "adjusted_n": 18, "adjusted_n_all": 20, "adjusted_for": ["bmi"], "adjusted_note": None}
    assert significance_line(sig) == (
        "gap 6.5 [-2.4, 15.5] points; noise alone gives up to 8.5 in this direction with these groups' spreads "
        "(Welch t, p = 0.143, Holm over 2 tests 0.286); detectable: 12.7 points (spread male 9.5, female 9.6)\n"
        "adjusted for BMI: gap 5.1 [0.2, 10.0] points, raw gap 6.3 on the same 18 of 20 cases")


def test_a_gap_in_one_class_is_tested_apart_from_the_mean_that_dilutes_it():
    rng = np.random.default_rng(8)
    n_m, n_f = 14, 10
    female = np.r_[np.zeros(n_m, bool), np.ones(n_f, bool)]
    kidney = rng.normal(0.80, 0.08, n_m + n_f) - 0.16 * female          # the planted effect
    tumor = np.clip(rng.normal(0.15, 0.25, n_m + n_f), 0, 1)            # an incompetent, noisy class
    per_case = pd.DataFrame({"sex": np.where(female, "female", "male"), "kidney": kidney, "tumor": tumor,
                             "mean": (kidney + tumor) / 2})
    sig = significance(per_case, "sex", n_perm=4000, covariates=None)
    assert sig["kidney_worst"] == "female" and sig["kidney_gap_p"] < 0.01
    assert sig["kidney_gap"] == pytest.approx(per_case.groupby("sex")["kidney"].mean().agg(lambda m: m.max() - m.min()))
    assert "by class: kidney gap" in significance_line(sig)


def test_paired_cvar_has_known_answers_and_holds_its_level_on_a_tail_of_unequal_spread():
    from fairness.paired import paired_cvar
    ids = [f"c{i}" for i in range(10)]
    base = pd.DataFrame({"case_id": ids, "mean": np.linspace(0.1, 1.0, 10)})
    lifted = base.assign(mean=base["mean"] + 0.05)
    row = paired_cvar([base], [lifted], ids, alpha=0.2)
    assert row["delta_cvar"] == pytest.approx(5.0) and row["n"] == 10
    assert row["delta_cvar_lo"] == pytest.approx(5.0) and row["delta_cvar_hi"] == pytest.approx(5.0)
    # the tail holds 2 cases, and only their swaps move it: |Δ*| = 5 in exactly half the swaps
    assert row["p_cvar"] == pytest.approx(0.5, abs=0.05)
    same = paired_cvar([base, base], [base.copy(), base.copy()], ids)
    assert same["delta_cvar"] == 0.0 and same["p_cvar"] == 1.0
    one = paired_cvar([base], [lifted], ids[:1])
    assert one["delta_cvar"] == pytest.approx(5.0) and math.isnan(one["p_cvar"]) and math.isnan(one["delta_cvar_lo"])
    # no effect: per-case difficulty shared by both methods, run noise of unequal spread across cases
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(300):
        n = 14
        case = rng.beta(4, 2, n)
        spread = np.where(np.arange(n) < 4, 0.15, 0.03)
        runs = [pd.DataFrame({"case_id": ids[:0] + [f"c{i}" for i in range(n)],
                              "mean": np.clip(case + spread * rng.normal(size=n), 0, 1)}) for _ in range(6)]
        hits += paired_cvar(runs[:3], runs[3:], [f"c{i}" for i in range(n)], n_boot=400,
                            seed=int(rng.integers(1 << 30)))["p_cvar"] < 0.05
    assert hits / 300 <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 300)
    # power: a method that lifts the hard cases by 15 points (30 cases, 3 runs each) is seen
    found = 0
    for _ in range(100):
        n = 30
        case = rng.beta(4, 2, n)
        make = lambda lift: pd.DataFrame({"case_id": [f"c{i}" for i in range(n)],   # noqa: E731
                                          "mean": np.clip(case + lift * (case < 0.55) + 0.03 * rng.normal(size=n), 0, 1)})
        found += paired_cvar([make(0) for _ in range(3)], [make(0.15) for _ in range(3)],
                             [f"c{i}" for i in range(n)], n_boot=400, seed=int(rng.integers(1 << 30)))["p_cvar"] < 0.05
    assert found / 100 >= 0.8
