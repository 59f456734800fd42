"""Every shipped training config loads, builds all its objects and trains a step on tiny data."""
from pathlib import Path

import pytest
import torch

import train
from config import load_config
from mitigations import method_names
from tests.kits_fixtures import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "preprocess_study.yaml")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    write_tiny_cohort(root / "raw", n_cases=8, shape=(24, 40, 48), spacing=(3.22, 1.62, 1.62))
    return root


def test_every_experiment_of_the_matrix_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert {"baseline_nnunet", "resm_sex", "resm_age", "stratified_sex", "stratified_age", "fairmeta_sex",
            "fairmeta_age", "unet", "vnet", "attention_unet", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_epoch_on_tiny_data(path, cohort, capsys):
    cfg = load_config(path)  # the file alone must be valid
    sets = [f"data.raw={cohort / 'raw'}", f"data.cache={cohort / 'cache'}", f"train.out_dir={cohort / 'runs'}",
            "data.synthesize_cases=0", "data.test=2", "data.val=0", "train.patch_size=[16,32,32]",
            "model.base_features=4", "model.max_features=16", "train.epochs=1", "train.batch_size=4", "train.steps_per_epoch=null",
            "train.workers=0", "eval.every=100", "fairness.fairmeta.classifier.growth_rate=4",
            "data.preprocess.target_spacing=[3.22,1.62,1.62]",
            f"eval.report={'true' if path.stem == 'demo' else 'false'}"]    # the page once (~2 s a run)
    args = ["--config", str(path), "--name", path.stem, "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    ckpt = torch.load(cohort / "runs" / path.stem / "last.pt", weights_only=False)
    assert ckpt["config"]["model"]["name"] == cfg["model"]["name"]
    assert ckpt["config"]["fairness"]["method"] == cfg["fairness"]["method"]
    assert ckpt["group_index"]["attribute"] == cfg["fairness"]["attribute"]
    methods = method_names(cfg["fairness"]["method"])
    for sampler in {"resm", "stratified"} & set(methods):
        assert f"sampler {sampler} by {cfg['fairness']['attribute']}: cases per group" in out
    if "fairmeta" in methods:
        assert "fairmeta" in ckpt["mitigations"] and "fair meta-learning on" in out
    if "dro" in methods:
        assert "dro" in ckpt["mitigations"] and "DRO loss over" in out
    if "dmoe" in methods and cfg["fairness"]["dmoe"]["router"] == "group":
        assert "dMoE routed by" in out and ckpt["model_config"]["moe"]["groups"] == ckpt["group_index"]["groups"]


def test_the_fairdro_configs_and_ablations_exist():
    names = {p.stem for p in CONFIGS}
    assert {"fairdro_sex", "fairdro_age", "fairdro_sex_dmoe_only", "fairdro_sex_dro_only",
            "fairdro_sex_plain_moe"} <= names


@pytest.mark.parametrize("sampler", ["resm", "stratified"])
def test_fairdro_works_with_every_sampler(sampler, cohort, capsys):
    sets = [f"data.raw={cohort / 'raw'}", f"data.cache={cohort / 'cache'}", f"train.out_dir={cohort / 'runs'}",
            "data.synthesize_cases=0", "data.test=2", "data.val=0", "train.patch_size=[16,32,32]",
            "model.base_features=4", "model.max_features=16", "train.epochs=1", "train.batch_size=2", "train.steps_per_epoch=null",
            "train.workers=0", "eval.every=100", f"fairness.method=[{sampler}, dmoe, dro]",
            "fairness.dro.warmup=0.0",   # the shipped warm-up would keep DRO off for a 1-epoch run
            "data.preprocess.target_spacing=[3.22,1.62,1.62]"]
    args = ["--config", str(ROOT / "configs" / "fairdro_sex.yaml"), "--name", f"fairdro_{sampler}", "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert f"sampler {sampler} by sex" in out and "DRO loss over sex" in out
    ckpt = torch.load(cohort / "runs" / f"fairdro_{sampler}" / "last.pt", weights_only=False)
    assert torch.isclose(ckpt["mitigations"]["dro"]["q"].sum(), torch.tensor(1.0))
