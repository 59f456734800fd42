"""Failure discovery (fairness/discovery.py) on per-case tables of known truth, and --discover end to end.

Known truth without training: per-case mean Dice drawn around 85 with an 8-point spread, and a
planted failing subgroup (a random rule of two conditions on different metadata fields, with a
threshold at a random case's value) 15 points lower. Recovery: the top confirmed slice overlaps
the planted members with Jaccard >= 0.6. Null tables (no plant) must confirm a slice in at most
5 % of audits. The real KiTS19 metadata (210 records) is used where it is present.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import pandas as pd
import pytest

import evaluate
from fairness.calibration import discovery_recovery, false_confirmations
from fairness.discovery import SLICE_COLUMNS, conditions, discover, discovery_line, feature_families
from fairness.features import case_features, flatten, geometry_features, image_features, metadata_features
from tests.kits_fixtures import make_case_arrays, write_smoker_audit, write_tiny_cohort


@pytest.fixture(scope="module")
def kits_features(kits19_dir):
    metadata = {e["case_id"]: e for e in json.loads((kits19_dir / "kits.json").read_text())}
    ids = sorted(metadata)
    return case_features(pd.DataFrame({"case_id": ids}), metadata, families=("metadata",))


def test_planted_failures_on_real_metadata_are_recovered(kits_features):
    n = len(kits_features)
    assert n == 210 and kits_features.shape[1] >= 50
    # slices of 10-30 % of the cohort (docs/discovery.md gives the rate for 5-10 % ones: lower)
    _, recovered, _ = discovery_recovery(kits_features, 50, seed=0, low=int(0.1 * n), high=int(0.3 * n))
    assert recovered >= 0.9


def test_null_tables_confirm_a_slice_in_at_most_5_percent(kits_features):
    assert false_confirmations(kits_features, 200, seed=1, shape="normal") <= 0.05
    assert false_confirmations(kits_features, 200, seed=2, shape="skewed") <= 0.05   # Dice's long lower tail


# ----------------------------------------------------------------------------- without KiTS19
def synthetic_cohort(n: int, seed: int) -> tuple[dict, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    metadata = {f"case_{i:05d}": {"case_id": f"case_{i:05d}", "gender": rng.choice(["male", "female"]),
                                  "age_at_nephrectomy": int(rng.integers(30, 85)),
                                  "smoking_history": rng.choice(["never_smoked", "current_smoker", "previous_smoker"]),
                                  "comorbidities": {"copd": bool(rng.random() < 0.2)},
                                  "last_preop_egfr": {"value": float(rng.normal(70, 15))},
                                  "synthetic_bias": {"hidden": {"member": bool(rng.random() < 0.5)}}}
                for i in range(n)}
    return metadata, pd.DataFrame({"case_id": sorted(metadata)})


def test_metadata_is_flattened_typed_and_never_reads_the_planted_answer():
    metadata, per_case = synthetic_cohort(40, 0)
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {"a.b": 1, "a.c.d": "x"}
    frame = metadata_features(metadata, per_case["case_id"])
    assert pd.api.types.is_numeric_dtype(frame["age_at_nephrectomy"])
    assert pd.api.types.is_numeric_dtype(frame["last_preop_egfr.value"])
    assert set(frame["comorbidities.copd"].dropna()) <= {"true", "false"}
    features = case_features(per_case, metadata, families=("metadata",))
    assert not [c for c in features.columns if c.startswith("synthetic_") or c == "case_id"]


def test_a_planted_current_smoker_subgroup_is_found_in_words():
    metadata, per_case = synthetic_cohort(200, 1)
    features = case_features(per_case, metadata, families=("metadata",))
    members = ((features["smoking_history"] == "current_smoker") & (features["age_at_nephrectomy"] < 60)).to_numpy()
    rng = np.random.default_rng(3)
    per_case["mean"] = rng.normal(0.85, 0.08, len(per_case)) - 0.15 * members
    result = discover(per_case, features, seed=0)
    assert list(result.slices.columns) == list(SLICE_COLUMNS)
    top = result.slices.iloc[0]
    assert top["confirmed"] and "smoking_history == current_smoker" in top["rule"] and "age_at_nephrectomy" in top["rule"]
    assert top["gap"] == pytest.approx(100 * (per_case["mean"][~members].mean() - per_case["mean"][members].mean()),
                                       abs=3.0)
    found = set(result.members.loc[result.members["rank"] == 1, "case_id"])
    assert len(found & set(per_case["case_id"][members])) / len(found | set(per_case["case_id"][members])) >= 0.8
    line = discovery_line(result)
    assert line.startswith("discovery: ") and "failing subgroup(s) confirmed on held-out cases" in line
    assert "current_smoker" in line.splitlines()[1]


def test_no_effect_confirms_nothing_and_says_what_was_searched():
    metadata, per_case = synthetic_cohort(120, 2)
    features = case_features(per_case, metadata, families=("metadata",))
    per_case["mean"] = np.random.default_rng(5).normal(0.85, 0.08, len(per_case))
    result = discover(per_case, features, seed=0)
    assert not result.slices["confirmed"].any()
    assert discovery_line(result).startswith(f"discovery: no failing subgroup confirmed (searched {features.shape[1]} "
                                             f"features, {result.n_candidates} candidate rules")


def test_every_slice_respects_the_minimum_size_and_rules_come_from_features_alone():
    metadata, per_case = synthetic_cohort(100, 4)
    features = case_features(per_case, metadata, families=("metadata",))
    per_case["mean"] = np.random.default_rng(6).normal(0.85, 0.08, len(per_case))
    result = discover(per_case, features, seed=0)
    assert (result.slices["n"] >= 5).all() and (result.members.groupby("rank").size() == result.slices.set_index("rank")["n"]).all()
    conds, masks = conditions(features)
    assert masks.shape == (len(conds), len(features))
    before = [c.text() for c in conds]
    per_case["mean"] = 1 - per_case["mean"]          # other outcomes: the same candidate rules
    assert [c.text() for c in conditions(features)[0]] == before


def test_a_distance_fails_upward():
    from fairness.metrics import get_metric
    metadata, per_case = synthetic_cohort(200, 7)
    features = case_features(per_case, metadata, families=("metadata",))
    members = (features["gender"] == "female").to_numpy() & (features["age_at_nephrectomy"] > 65).to_numpy()
    per_case["hd95_mean"] = np.random.default_rng(8).normal(5, 1, len(per_case)) + 6 * members
    result = discover(per_case, features, metric=get_metric("hd95"), seed=0)
    top = result.slices.iloc[0]
    assert top["confirmed"] and "gender == female" in top["rule"] and top["mean"] > top["rest_mean"] and top["gap"] > 0


def test_too_few_cases_is_a_note_not_a_search():
    metadata, per_case = synthetic_cohort(12, 9)
    per_case["mean"] = 0.8
    result = discover(per_case, case_features(per_case, metadata), seed=0)
    assert result.slices.empty and "not searched: 12 scored cases" in discovery_line(result)


def test_feature_families_are_checked():
    assert feature_families("auto") == ("metadata", "derived", "image", "embedding")
    assert feature_families("metadata,image") == ("metadata", "image")
    with pytest.raises(ValueError, match="unknown family embedings; valid: auto, metadata, derived, image, embedding"):
        feature_families("embedings")


def test_geometry_and_image_measurements_have_known_answers():
    image, labels = make_case_arrays((12, 20, 24))
    labels = labels.copy()
    labels[9:11, 2:4, 2:4] = 2                         # a second tumor, apart from the first
    geometry = geometry_features(labels, (4.0, 0.9, 0.9))
    assert geometry == {"tumor_count": 2.0, "slice_mm": 4.0, "inplane_mm": pytest.approx(0.9), "fov_mm": 48.0}
    rng = np.random.default_rng(0)
    noisy = image.astype(np.float32) + rng.normal(0, 12, image.shape).astype(np.float32)
    measured = image_features(noisy, labels)
    assert measured["noise_hu"] == pytest.approx(12, rel=0.15)
    assert measured["kidney_hu"] == pytest.approx(200, abs=3) and measured["contrast_hu"] == pytest.approx(
        measured["kidney_hu"] - measured["tumor_hu"])


def test_discover_on_predictions_writes_the_contract_files(tmp_path, capsys):
    raw, _, entries = write_smoker_audit(tmp_path)
    assert evaluate.main(["--pred", str(tmp_path / "preds"), "--gt", str(raw), "--out", str(tmp_path / "a"),
                          "--discover", "--features", "metadata,derived,image", "--no-progress", "--n-boot", "20",
                          "--n-perm", "100"]) == 0
    out = capsys.readouterr().out
    slices = pd.read_csv(tmp_path / "a" / "slices.csv")
    members = pd.read_csv(tmp_path / "a" / "slice_members.csv")
    assert list(slices.columns) == list(SLICE_COLUMNS) and list(members.columns) == ["rank", "case_id"]
    top = slices.iloc[0]
    smokers = {e["case_id"] for e in entries if e["smoking_history"] == "current_smoker"}
    found = set(members.loc[members["rank"] == 1, "case_id"])
    assert top["confirmed"] and len(found & smokers) / len(found | smokers) >= 0.8, top["rule"]
    assert "discovery: " in out and "confirmed on held-out cases" in out
    per_case = pd.read_csv(tmp_path / "a" / "per_case.csv")
    assert {"tumor_count", "slice_mm", "noise_hu", "kidney_hu"} <= set(per_case.columns)
    with pytest.raises(SystemExit):
        evaluate.main(["--group-dice", "a=1", "b=2", "--discover"])
    with pytest.raises(SystemExit):
        evaluate.main(["--pred", str(tmp_path / "preds"), "--gt", str(raw), "--discover", "--features", "embedings"])


def test_train_runs_discovery_on_its_test_tables_when_asked(tmp_path, capsys):
    import train
    from tests.test_training import tiny_args
    write_tiny_cohort(tmp_path / "raw", n_cases=6, shape=(16, 48, 48), spacing=(4.0, 1.2, 1.2))
    assert train.main(tiny_args(tmp_path, "disc", epochs=1, extra=["eval.report=true", "eval.discover=true",
                                                                   "eval.discover_features=metadata,derived,embedding"])) == 0
    out = capsys.readouterr().out
    eval_dir = tmp_path / "runs" / "disc" / "eval"
    assert "discovery: no failing subgroup confirmed" in out and "not searched: 2 scored cases" in out
    assert list(pd.read_csv(eval_dir / "slices.csv").columns) == list(SLICE_COLUMNS)
    page = (eval_dir / "report.html").read_text()        # the test tables as a page, its pictures explained
    assert "the audit as a page: " in out and "id='attr-sex'" in page and "no gallery: the test tables score" in page
    vectors = pd.read_csv(eval_dir / "embeddings.csv", index_col="case_id")
    assert vectors.shape == (2, 16)       # the test cases, the bottleneck's width (model.max_features)
    from config import ConfigError, load_config
    with pytest.raises(ConfigError, match="eval.discover_features"):
        load_config(None, ["eval.discover_features=embedings"])


def test_discovery_can_search_one_region():
    metadata, per_case = synthetic_cohort(200, 11)
    features = case_features(per_case, metadata, families=("metadata",))
    members = (features["comorbidities.copd"] == "true").to_numpy()
    rng = np.random.default_rng(12)
    per_case["kidney"] = rng.normal(0.9, 0.05, len(per_case)) - 0.2 * members    # a kidney failure ...
    per_case["tumor"] = rng.normal(0.6, 0.25, len(per_case))                      # ... in a noisy mean
    per_case["mean"] = (per_case["kidney"] + per_case["tumor"]) / 2
    from fairness.discovery import run_discovery
    lines = []
    result = run_discovery(per_case, metadata, families=("metadata",), region="kidney", log=lines.append)
    assert result.slices.iloc[0]["confirmed"] and "comorbidities.copd == true" in result.slices.iloc[0]["rule"]
    assert lines[0].startswith("\n(kidney Dice) discovery: ")
    with pytest.raises(ValueError, match="discovery region 'liver'"):
        run_discovery(per_case, metadata, region="liver", log=lines.append)


# ----------------------------------------------------------------------------- the model's own view
class _IdentityEncoder(torch.nn.Module):
    def forward(self, x, groups=None):
        self.groups = groups
        return [x * 0, x if groups is None else x + groups.view(-1, 1, 1, 1, 1).float()]


class _Network(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _IdentityEncoder()


def test_case_embedding_pools_the_deepest_stage_over_non_overlapping_tiles():
    from models.embedding import case_embedding
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 16, 24)).astype(np.float32)
    net = _Network()
    # tiles of (4, 8, 8) tile the image exactly: the pooled identity is the image's mean
    assert case_embedding(net, image, patch_size=(4, 8, 8)) == pytest.approx([image.mean()], rel=1e-5)
    # a case smaller than the patch is zero-padded, as the sliding window does
    assert case_embedding(net, image, patch_size=(8, 16, 32)) == pytest.approx([image.mean() * 24 / 32], rel=1e-5)
    assert case_embedding(net, image, patch_size=(4, 8, 8), group=2) == pytest.approx([image.mean() + 2], rel=1e-5)
    assert net.training   # left as found
    with pytest.raises(TypeError, match="no encoder"):
        case_embedding(torch.nn.Conv3d(1, 1, 1), image, patch_size=(4, 8, 8))


def embedded_cohort(n: int, seed: int, *, member_share: float = 0.2):
    """Vectors of 16 channels: a hidden member set sits apart along a direction no metadata names."""
    metadata, per_case = synthetic_cohort(n, seed)
    rng = np.random.default_rng(seed + 100)
    members = rng.random(n) < member_share
    vectors = rng.normal(size=(n, 16))
    vectors[members, :4] += 3.0
    return metadata, per_case, members, pd.DataFrame(vectors, index=per_case["case_id"]).add_prefix("e")


def test_embedding_features_are_outcome_blind_components_and_size_ordered_clusters():
    from fairness.features import CLUSTER_KS, embedding_features
    _, per_case, members, vectors = embedded_cohort(120, 0)
    frame = embedding_features(vectors)
    assert list(frame.columns) == ["embedding_pc1", "embedding_pc2", "embedding_pc3"] + [f"embedding_k{k}" for k in CLUSTER_KS]
    assert frame.equals(embedding_features(vectors))                           # seeded: the same slices each time
    assert abs(np.corrcoef(frame["embedding_pc1"], members)[0, 1]) > 0.9       # the separated direction comes first
    sizes = frame["embedding_k2"].value_counts()
    assert list(sizes.index) == ["1", "2"] and sizes["1"] >= sizes["2"]         # 1 is the largest cluster
    two = frame["embedding_k2"].to_numpy() == "2"
    assert (two & members).sum() / (two | members).sum() > 0.9
    shuffled = vectors.sample(frac=1.0, random_state=1)
    again = embedding_features(shuffled).reindex(frame.index)
    assert np.allclose(again["embedding_pc1"], frame["embedding_pc1"])          # rows' order does not matter
    assert embedding_features(vectors.iloc[:3]).empty                           # too few cases to summarise


def test_a_failure_only_the_embedding_sees_is_confirmed_as_a_cluster_described_in_words():
    from fairness.discovery import run_discovery
    metadata, per_case, members, vectors = embedded_cohort(160, 3, member_share=0.25)
    for i, case_id in enumerate(per_case["case_id"]):      # a readable trace: most members scanned thick
        metadata[case_id]["slice_thickness_mm"] = 5.0 if (members[i] and i % 5) or i % 11 == 0 else 1.0
    rng = np.random.default_rng(4)
    per_case["mean"] = rng.normal(0.85, 0.08, len(per_case)) - 0.15 * members
    lines = []
    result = run_discovery(per_case, {k: {**v, "slice_thickness_mm": None} for k, v in metadata.items()},
                           families=("metadata", "embedding"), embeddings=vectors, log=lines.append)
    top = result.slices.iloc[0]
    found = set(result.members.loc[result.members["rank"] == 1, "case_id"])
    truth = set(per_case["case_id"][members])
    assert top["confirmed"] and "embedding" in top["features"], top["rule"]
    assert len(found & truth) / len(found | truth) >= 0.6
    assert top["described_by"] == "" or " of " in top["described_by"]
    described = run_discovery(per_case, metadata, families=("metadata", "embedding"), embeddings=vectors,
                              log=lines.append).slices
    row = described[described["features"].str.contains("embedding")].iloc[0]
    assert row["described_by"].endswith("with slice_thickness_mm > 1"), row["described_by"]
    assert "embedding cluster" in lines[0] or "embedding_pc" in lines[0]
    assert row["described_by"] in lines[1]
