"""bench/vs_nnunet_training.py without nnU-Net: the matched plan it writes, and its table's figures."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.test_evidence import load_bench

# the shape of nnUNetv2_plan_and_preprocess's 3d_fullres configuration (2.8), as planned for the demo cohort
DEFAULT = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
           "patch_size": [24, 128, 80], "spacing": [9.45, 2.77, 2.77], "normalization_schemes": ["CTNormalization"],
           "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                            "arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
                                            "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 4,
                                            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                                            "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4,
                                            "conv_bias": True}},
           "batch_dice": False}


@pytest.fixture
def bench(monkeypatch):
    return load_bench(monkeypatch, "vs_nnunet_training")


def test_the_matched_plan_is_our_demo_recipe(bench):
    before = json.dumps(DEFAULT)
    conf = bench.matched_configuration(DEFAULT)
    assert json.dumps(DEFAULT) == before                      # the default plan is left as it is
    assert conf["data_identifier"] == "nnUNetPlans_matched_3d_fullres"   # its own preprocessed folder
    assert (conf["patch_size"], conf["spacing"], conf["batch_size"]) == ([32, 64, 64], [6.44, 3.24, 3.24], 2)
    arch = conf["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [8, 16, 32, 64, 64] and arch["n_stages"] == 5
    assert arch["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert arch["kernel_sizes"] == [[3, 3, 3]] * 5
    assert arch["n_conv_per_stage"] == [2] * 5 and arch["n_conv_per_stage_decoder"] == [2] * 4
    # nnU-Net's own choices stay: its normalisation, its loss settings, its conv bias
    assert conf["normalization_schemes"] == ["CTNormalization"] and conf["batch_dice"] is False
    assert arch["conv_bias"] is True


def per_case(tmp_path, name, kidney, tumor):
    ids = [f"case_{i:05d}" for i in range(len(kidney))]
    mean = np.nanmean(np.c_[kidney, tumor], axis=1)           # the scorer's: over the classes scored
    frame = pd.DataFrame({"case_id": ids, "kidney": kidney, "tumor": tumor, "mean": mean,
                          "sex": ["male", "female"] * (len(ids) // 2)})
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return {"steps": 100, "train_s": 50.0, "setup_s": 5.0, "score_s": 7.0, "per_case": str(path)}


def test_the_table_gives_hand_computed_figures(bench, tmp_path):
    rng = np.random.default_rng(0)
    kidney, tumor = rng.uniform(0.5, 0.9, 8), rng.uniform(0.1, 0.5, 8)
    tumor[3] = np.nan                                          # a case with no tumor in reference or prediction
    results = {"ours": per_case(tmp_path, "ours", kidney + 0.05, tumor),
               "nnunet_matched_time": per_case(tmp_path, "time", kidney - 0.25, tumor / 3),
               "nnunet_matched_steps": per_case(tmp_path, "steps", kidney, tumor)}
    text, figs = bench.table(results)
    assert "| ours | 100 | 0.500 | 5 | 50 | 7 | " in text
    assert figs["means"]["ours"]["kidney"] == pytest.approx(100 * (kidney.mean() + 0.05))
    assert figs["means"]["ours"]["tumor"] == pytest.approx(100 * np.nanmean(tumor))
    steps = figs["paired"][("ours", "nnunet_matched_steps")]
    # kidney +5 points and tumor unchanged: +2.5 on a case's mean, +5 on the case with no tumor
    assert steps["delta_mean"] == pytest.approx(100 * (7 * 0.025 + 0.05) / 8)
    assert "| +5.0 [+5.0, +5.0] | +0.0 [+0.0, +0.0] |" in text    # Δ kidney, Δ tumor at equal steps
    assert "| ours − nnunet_matched_time (equal wall time, matched plan) |" in text
    assert "nnunet_default_time" not in text                  # a row not run has no comparison
    lever = dict(results, lever=per_case(tmp_path, "lever", kidney, tumor))   # a --variant row
    assert "| lever − nnunet_matched_steps (lever, equal steps, matched plan) | +0.0 [+0.0, +0.0] |" in \
        bench.table(lever)[0]
    lines = bench.verdicts(figs)
    ours, time = (np.nanmean(np.c_[kidney + 0.05, tumor], axis=1).mean(),
                  np.nanmean(np.c_[kidney - 0.25, tumor / 3], axis=1).mean())
    assert lines[0].startswith(f"equal wall time: ours / nnU-Net mean Dice = {ours / time:.2f}")
    assert lines[0].endswith("PASS") and lines[1].endswith("PASS")
