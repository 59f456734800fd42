"""fairness.stats: bootstrap intervals (coverage, determinism, SD/SER = fairness_summary), rank tests,
seed aggregation and audit_figures, on hand-made and synthetic per-case tables."""
import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import fairness
from fairness.audit import audit_groups
from fairness.stats import (
    aggregate_seeds,
    audit_figures,
    bootstrap_audit,
    group_difference_test,
    percentile_interval,
    sd_ser_of_rows,
)
from fairness.summary import fairness_summary

NAN = float("nan")


def synthetic(n_per_group: dict, rng: np.random.Generator, tumor_nan: float = 0.0) -> pd.DataFrame:
    """Per-case Dice for groups of given sizes; kidney ~ Beta(18, 2), tumor ~ Beta(6, 2)."""
    rows = []
    for group, n in n_per_group.items():
        kidney = rng.beta(18, 2, n)
        tumor = rng.beta(6, 2, n)
        tumor[rng.random(n) < tumor_nan] = np.nan
        mean = np.where(np.isnan(tumor), kidney, (kidney + tumor) / 2)
        rows += [{"sex": group, "kidney": k, "tumor": t, "mean": m} for k, t, m in zip(kidney, tumor, mean)]
    return pd.DataFrame(rows)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- bootstrap_audit -----------------------------------------------------------------------

def test_bootstrap_covers_the_true_mean_about_95_percent(no_warnings):
    # the "all" interval of 200 independent datasets of 40 cases; Beta(18, 2) has mean 0.9
    rng = np.random.default_rng(123)
    covered = 0
    for i in range(200):
        per_case = synthetic({"male": 20, "female": 20}, rng)
        lo, hi = bootstrap_audit(per_case, "sex", n_boot=500, seed=i)["groups"].loc["all", ["kidney_lo", "kidney_hi"]]
        covered += lo <= 0.9 <= hi
    assert 0.90 <= covered / 200 <= 0.98


def test_bootstrap_identical_cases_collapse_to_the_value(no_warnings):
    per_case = pd.DataFrame({"sex": ["male"] * 4 + ["female"] * 3, "kidney": 0.9, "tumor": 0.7, "mean": 0.8})
    boot = bootstrap_audit(per_case, "sex", n_boot=200)
    expected = {"kidney_lo": 0.9, "kidney_hi": 0.9, "tumor_lo": 0.7, "tumor_hi": 0.7, "mean_lo": 0.8, "mean_hi": 0.8}
    assert list(boot["groups"].index) == ["female", "male", "all"]
    assert boot["groups"].index.name == "sex"
    for group in ("female", "male", "all"):
        assert boot["groups"].loc[group].to_dict() == pytest.approx(expected)
    assert boot["sd"] == pytest.approx((0.0, 0.0))
    assert boot["ser"] == pytest.approx((1.0, 1.0))    # sums / counts: 0.8 up to float rounding
    assert (boot["n_boot"], boot["seed"], boot["level"]) == (200, 0, 0.95)


def test_bootstrap_same_seed_same_intervals_other_seed_other(no_warnings):
    per_case = synthetic({"male": 25, "female": 25}, np.random.default_rng(0), tumor_nan=0.2)
    a = bootstrap_audit(per_case, "sex", n_boot=300, seed=7)
    b = bootstrap_audit(per_case, "sex", n_boot=300, seed=7)
    c = bootstrap_audit(per_case, "sex", n_boot=300, seed=8)
    pd.testing.assert_frame_equal(a["groups"], b["groups"])
    assert (a["sd"], a["ser"]) == (b["sd"], b["ser"])
    assert not a["groups"].equals(c["groups"])      # group means: the bootstrap-t, seeded like the rest
    assert a["sd"] != c["sd"]


def test_bootstrap_intervals_contain_the_audit_point_estimates(no_warnings):
    per_case = synthetic({"male": 30, "female": 20}, np.random.default_rng(1), tumor_nan=0.1)
    audit = audit_groups(per_case, "sex")
    boot = bootstrap_audit(per_case, "sex", n_boot=2000, seed=0)
    for group in ("female", "male", "all"):
        for metric in ("kidney", "tumor", "mean"):
            lo, hi = boot["groups"].loc[group, [f"{metric}_lo", f"{metric}_hi"]]
            assert lo < audit.table.loc[group, metric] < hi
    assert boot["sd"][0] < audit.summary["sd"] < boot["sd"][1]
    assert boot["ser"][0] < audit.summary["ser"] < boot["ser"][1]
    assert boot["sd"][0] >= 0.0 and boot["ser"][0] >= 1.0


def test_bootstrap_is_fast(no_warnings):
    per_case = synthetic({"male": 30, "female": 20}, np.random.default_rng(2), tumor_nan=0.1)
    start = time.perf_counter()
    bootstrap_audit(per_case, "sex", n_boot=2000)
    assert time.perf_counter() - start < 0.5


def test_bootstrap_samples_are_stratified_and_sd_ser_equal_fairness_summary(no_warnings):
    per_case = synthetic({"a": 6, "b": 9, "c": 5}, np.random.default_rng(3))
    per_case.loc[per_case.index[:2], "sex"] = None      # unlabelled: in "all" only, like group_table
    boot = bootstrap_audit(per_case, "sex", n_boot=400, keep_samples=True)
    samples = boot["samples"]
    assert len(samples) == 400
    # a group's resampled mean only ever draws that group's cases
    a_values = per_case.loc[per_case["sex"] == "a", "mean"]
    assert samples["mean/a"].between(a_values.min(), a_values.max()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in (0, 1, 57, 399):
            row = samples.iloc[i]
            summary = fairness_summary({g: row[f"mean/{g}"] for g in "abc"}, scale="fraction")
            assert row["sd"] == pytest.approx(summary["sd"], rel=1e-12, abs=1e-15)
            assert row["ser"] == pytest.approx(summary["ser"], rel=1e-12)
    assert boot["sd"] == percentile_interval(samples["sd"])


def test_sd_ser_of_rows_edge_rows_match_fairness_summary():
    rows = np.array([[0.842, 0.889], [1.0, 0.9], [1.0, 1.0], [0.8, 0.8], [0.0, 0.5]])
    sd, ser = sd_ser_of_rows(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, row in enumerate(rows):
            summary = fairness_summary(dict(enumerate(row)), scale="fraction")
            assert sd[i] == pytest.approx(summary["sd"], abs=1e-15)
            assert ser[i] == summary["ser"] or ser[i] == pytest.approx(summary["ser"])
    assert ser[1] == math.inf and ser[2] == 1.0
    age = sd_ser_of_rows(np.array([[0.874, 0.860, 0.828, 0.918]]))   # SPEC Table 1: SD 3.23, SER 2.10
    assert 100 * age[0][0] == pytest.approx(3.23, abs=0.005)
    assert age[1][0] == pytest.approx(2.10, abs=0.005)
    nan_row = sd_ser_of_rows(np.array([[0.8, NAN]]))
    assert math.isnan(nan_row[0][0]) and math.isnan(nan_row[1][0])


def test_percentile_interval_with_inf_and_nan():
    assert percentile_interval([1.0, 2.0, 3.0, 4.0, 5.0], level=0.5) == (2.0, 4.0)
    np.testing.assert_allclose(percentile_interval(np.arange(101.0), 0.9), np.percentile(np.arange(101.0), [5, 95]))
    samples = [1.5] * 90 + [math.inf] * 10                    # 10% of resamples have a perfect group
    assert percentile_interval(samples) == (1.5, math.inf)
    assert percentile_interval([math.inf] * 10) == (math.inf, math.inf)
    assert percentile_interval([NAN, 2.0, NAN]) == (2.0, 2.0)
    lo, hi = percentile_interval([NAN, NAN])
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_perfect_group_gives_inf_ser(no_warnings):
    per_case = pd.DataFrame({"sex": ["male"] * 5 + ["female"] * 5,
                             "kidney": [1.0] * 5 + [0.9, 0.8, 0.95, 0.7, 0.85],
                             "tumor": [1.0] * 5 + [0.9, 0.8, 0.95, 0.7, 0.85]})
    per_case["mean"] = per_case["kidney"]
    boot = bootstrap_audit(per_case, "sex", n_boot=300)
    assert boot["ser"] == (math.inf, math.inf)
    # five cases tied at 1.0 have no spread of their own: the interval borrows the pooled one (issue 42),
    # never a zero-width "certainty"
    lo, hi = boot["groups"].loc["male", ["mean_lo", "mean_hi"]]
    assert lo < 1.0 < hi


def test_bootstrap_empty_group_and_single_group(no_warnings):
    per_case = pd.DataFrame({"sex": ["male", "male", "female", "female"],
                             "kidney": [0.9, 0.8, 0.7, 0.6], "tumor": [0.5, 0.4, NAN, NAN],
                             "mean": [0.7, 0.6, 0.7, 0.6]})
    boot = bootstrap_audit(per_case, "sex", order=["male", "female", "other"], n_boot=100)
    groups = boot["groups"]
    assert list(groups.index) == ["male", "female", "other", "all"]
    assert groups.loc["other"].isna().all()                                    # no case at all
    assert groups.loc["female", ["tumor_lo", "tumor_hi"]].isna().all()         # no scored tumor
    assert groups.loc["female", ["kidney_lo", "kidney_hi"]].notna().all()
    lo, hi = groups.loc["all", ["tumor_lo", "tumor_hi"]]     # 2 scored tumors, a pool of 2: Student t, 0.45 +- 12.71 * 0.05
    assert (lo, hi) == pytest.approx((0.45 - 12.7062 * 0.05, 0.45 + 12.7062 * 0.05), abs=1e-4)
    assert not math.isnan(boot["sd"][0])                                       # male and female
    alone = bootstrap_audit(per_case[per_case["sex"] == "male"], "sex", order=["male", "female"], n_boot=100)
    assert all(math.isnan(v) for v in (*alone["sd"], *alone["ser"]))


def test_bootstrap_rejects_bad_arguments():
    per_case = pd.DataFrame({"sex": ["m"], "kidney": [0.9], "tumor": [0.8], "mean": [0.85]})
    with pytest.raises(ValueError):
        bootstrap_audit(per_case, "sex", level=95)
    with pytest.raises(ValueError):
        bootstrap_audit(per_case, "sex", n_boot=0)
    with pytest.raises(KeyError):
        bootstrap_audit(per_case.drop(columns="tumor"), "sex")


# --- group_difference_test -----------------------------------------------------------------

def test_mann_whitney_two_groups_equals_scipy(no_warnings):
    low, high = [0.60, 0.62, 0.65, 0.58, 0.61, 0.63], [0.90, 0.91, 0.88, 0.93, 0.92, 0.89, 0.95]
    per_case = pd.DataFrame({"sex": ["female"] * 6 + ["male"] * 7 + ["male"], "mean": low + high + [NAN]})
    result = group_difference_test(per_case, "sex", order=["male", "female"])
    expected = scipy_stats.mannwhitneyu(high, low, alternative="two-sided")
    assert result["test"] == "Mann-Whitney U"
    assert result["groups"] == ["male", "female"]
    assert result["statistic"] == expected.statistic == 42.0     # every male above every female
    assert result["p"] == expected.pvalue
    assert result["p"] < 0.01
    assert result["note"] is None


def test_kruskal_three_groups_equals_scipy(no_warnings):
    a, b, c = [0.8, 0.85, 0.7, 0.9], [0.6, 0.65, 0.75], [0.95, 0.92, 0.88, 0.97, 0.91]
    per_case = pd.DataFrame({"age": ["<50"] * 4 + ["[50,60)"] * 3 + [">=70"] * 5 + ["[60,70)"],
                             "kidney": a + b + c + [NAN]})
    result = group_difference_test(per_case, "age", metric="kidney")
    expected = scipy_stats.kruskal(a, b, c)
    assert result["test"] == "Kruskal-Wallis"
    assert result["groups"] == ["<50", "[50,60)", ">=70"]
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p"] == pytest.approx(expected.pvalue)
    assert result["note"] == "group(s) ['[60,70)'] have no 'kidney' value and are left out"


@pytest.mark.parametrize("sex, values, note, test", [
    (["male", "male", "female"], [0.8, 0.9, NAN], "1 group(s) with values", None),
    (["male", "female", "female"], [0.8, 0.8, 0.8], "identical", "Mann-Whitney U"),
    ([], [], "0 group(s)", None),
])
def test_group_difference_degenerate_gives_nan_and_a_note(sex, values, note, test, no_warnings):
    result = group_difference_test(pd.DataFrame({"sex": sex, "mean": values}), "sex")
    assert result["test"] == test
    assert math.isnan(result["p"]) and math.isnan(result["statistic"])
    assert note in result["note"]


# --- aggregate_seeds and audit_figures -----------------------------------------------------

def test_aggregate_seeds_hand_example(no_warnings):
    seeds = [{"sd": 2.0, "ser": 1.4, "mean/male": 0.84},
             {"sd": 2.5, "ser": NAN, "mean/male": 0.86},
             {"sd": 3.0, "ser": 1.6}]
    agg = aggregate_seeds(seeds)
    assert list(agg) == ["sd", "ser", "mean/male"]
    assert agg["sd"] == pytest.approx({"mean": 2.5, "std": 0.5, "n": 3})
    assert agg["ser"]["n"] == 2
    assert agg["ser"]["mean"] == pytest.approx(1.5)
    assert agg["ser"]["std"] == pytest.approx(math.sqrt(0.02))            # ddof=1
    assert agg["mean/male"] == pytest.approx({"mean": 0.85, "std": math.sqrt(0.0002), "n": 2})


def test_aggregate_seeds_edges(no_warnings):
    one = aggregate_seeds([{"sd": 2.0}])["sd"]
    assert one["mean"] == 2.0 and math.isnan(one["std"]) and one["n"] == 1
    none = aggregate_seeds([{"sd": NAN}, {"sd": NAN}])["sd"]
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["std"])
    inf = aggregate_seeds([{"ser": math.inf}, {"ser": 1.2}])["ser"]
    assert inf["mean"] == math.inf and math.isnan(inf["std"]) and inf["n"] == 2
    assert aggregate_seeds([]) == {}
    with pytest.raises(TypeError, match="worst_group"):
        aggregate_seeds([{"worst_group": "male"}])


def test_audit_figures_hand_computed(no_warnings):
    per_case = pd.DataFrame({
        "sex": ["male", "male", "male", "female", "female"],
        "kidney": [0.9, 0.7, 0.8, 1.0, 0.6],
        "tumor": [0.8, NAN, 0.6, 0.5, NAN],
        "mean": [0.85, 0.7, 0.7, 0.75, 0.6],
    })
    figures = audit_figures(audit_groups(per_case, "sex", order=["male", "female"], cvar_level=0.5))
    expected = {
        "kidney/male": 0.8, "tumor/male": 0.7, "mean/male": 0.75, "n/male": 3,
        "kidney/female": 0.8, "tumor/female": 0.5, "mean/female": 0.675, "n/female": 2,
        "kidney/all": 0.8, "tumor/all": 1.9 / 3, "mean/all": 0.72, "n/all": 5,
        "sd": 0.0375,                                   # |0.75 - 0.675| / 2
        "ser": 0.325 / 0.25,
        "es_dice": 0.72 / (1 + 0.03 + 0.045),
        "worst": 0.675, "gap": 0.075,
        "cvar/male": 0.7,                               # lowest 2 of 3: 0.7, 0.7
        "cvar/female": 0.6,                             # lowest 1 of 2
    }
    assert figures == pytest.approx(expected)
    agg = aggregate_seeds([figures, figures])
    assert agg["sd"] == pytest.approx({"mean": 0.0375, "std": 0.0, "n": 2})


def test_exported_from_the_package():
    for name in ("bootstrap_audit", "group_difference_test", "audit_figures", "aggregate_seeds"):
        assert getattr(fairness, name) is globals()[name]
        assert name in fairness.__all__
        assert name in fairness.__doc__
