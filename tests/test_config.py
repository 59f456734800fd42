"""Config loading: schema, inheritance, overrides, clear errors."""
import pytest

from config import ConfigError, DEFAULTS, load_config
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_study_recipe():
    cfg = load_config()
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["momentum"] == 0.9
    assert cfg["train"]["batch_size"] == 4 and cfg["train"]["epochs"] == 2000
    assert cfg["train"]["patch_size"] == [80, 160, 160]
    assert cfg["data"]["preprocess"]["target_spacing"] == [3.22, 1.62, 1.62]


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 100\n  batch_size: 2\nmodel:\n  name: unet\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.patch_size=[16, 32, 32]", "model.base_features=8"])
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["batch_size"] == 2
    assert cfg["model"] == {"name": "unet", "deep_supervision": True, "base_features": 8}
    assert cfg["train"]["patch_size"] == [16, 32, 32]
    assert DEFAULTS["train"]["epochs"] == 2000  # the schema itself is never modified


@pytest.mark.parametrize("override, message", [
    ("train.epoch=2", "unknown config key 'train.epoch'; valid keys in train: amp, augment"),
    ("trian.epochs=2", "unknown config key 'trian'"),
    ("train.epochs=two", "config key 'train.epochs' expects int, got 'two'"),
    ("train.epochs=2.5", "config key 'train.epochs' expects int"),
    ("train.compile=1", "config key 'train.compile' expects bool"),
    ("data.preprocess.spacing=[1,1,1]", "unknown config key 'data.preprocess.spacing'"),
    ("eval.mirror_axes=[3]", "config key 'eval.mirror_axes' is a list of distinct axes among 0 .z., 1 .y., 2 .x., got [3]"),
    ("eval.mirror_axes=[2,2]", "config key 'eval.mirror_axes' is a list of distinct axes among 0 .z., 1 .y., 2 .x., got [2, 2]"),
    ("eval.mirror_axes=[]", "config key 'eval.mirror_axes' is a list of distinct axes"),
    ("train.epochs", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_the_study_weight_sweeps_resolve_to_the_five_seg_cls_weight_pairs():
    from config import load_sweep
    for attr in ("sex", "age"):
        sweep = load_sweep(ROOT / "configs" / "sweeps" / f"fairmeta_weights_{attr}.yaml")
        pairs = set()
        for sets in sweep.runs.values():
            cfg = load_config(sweep.config, sets)
            assert cfg["fairness"]["method"] == "fairmeta" and cfg["fairness"]["attribute"] == attr
            meta = cfg["fairness"]["fairmeta"]
            pairs.add((meta["seg_weight"], meta["cls_weight"]))
        assert pairs == {(1, 2), (1.5, 1), (1, 1), (1, 1.5), (2, 1)}


def test_a_sweep_with_a_misspelled_key_fails_before_training(tmp_path):
    from config import load_sweep
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"config: {ROOT / 'configs' / 'fairmeta_sex.yaml'}\nruns:\n  x: {{fairness.betta: 2}}\n")
    with pytest.raises(ConfigError, match="run x: .*betta"):
        load_sweep(bad)


def test_saved_configs_of_earlier_versions_are_translated_and_written_ones_name_the_new_key(tmp_path):
    from config import upgrade_saved_config
    old = {"sampler": {"name": "resm", "pos_ratio": 1.0, "neg_ratio": 1.0, "target": "mean", "redraw": False},
           "model": {"name": "nnunet", "moe": {"stages": [-1], "router": "group", "attribute": "sex",
                                              "groups": ["male", "female"]}},
           "fairness": {"attribute": "sex", "method": "fairmeta", "alpha": 1.5, "beta": 1.0, "input": "image",
                        "adversarial": True, "dro": {"alpha": 0.5, "eta": 0.0, "tau_lr": 0.05}},
           "eval": {"every": 5, "criterion": "mean_dice"}}
    cfg = load_config(saved=old)
    fair = cfg["fairness"]
    assert fair["method"] == ["resm", "dmoe", "fairmeta"]
    assert fair["resm"] == {"target": "mean", "redraw": False}
    assert fair["fairmeta"]["seg_weight"] == 1.5 and fair["fairmeta"]["cls_weight"] == 1.0
    assert fair["fairmeta"]["input"] == "image" and fair["fairmeta"]["adversarial"] is True
    assert fair["dmoe"]["stages"] == [-1] and fair["dro"]["cvar_level"] == 0.5
    assert "moe" not in cfg["model"] and "criterion" not in cfg["eval"] and "name" not in cfg["sampler"]
    assert upgrade_saved_config(cfg) == cfg          # today's layout passes through untouched
    written = tmp_path / "old.yaml"
    written.write_text("fairness:\n  method: dro\n  dro: {alpha: 0.5}\n")
    with pytest.raises(ConfigError, match="^config key 'fairness.dro.alpha' is now fairness.dro.cvar_level$"):
        load_config(written)
