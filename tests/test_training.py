"""train.py end to end on a tiny cohort: outputs, resume equality, no overwrite, DDP with gloo."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import train
from config import ConfigError
from tests.kits_fixtures import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
TARGET = (3.22, 1.62, 1.62)  # the cohort is made at the target spacing: preprocessing is cheap


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_tiny_cohort(root / "raw", n_cases=8, shape=(24, 40, 48), spacing=TARGET)
    return root


def tiny_args(root, name, epochs, extra=()):
    sets = [f"data.raw={root / 'raw'}", f"data.cache={root / 'cache'}", f"train.out_dir={root / 'runs'}",
            "data.test=2", "train.patch_size=[16,32,32]", "model.base_features=4", "model.max_features=16",
            f"train.epochs={epochs}", "train.batch_size=2", "train.steps_per_epoch=null", "train.workers=0", "eval.every=100",
            "train.checkpoint_every=1", "train.image_slices=1",
            # the test tables' page (box plots, report.html) costs ~2 s a run; tests/test_discovery.py and
            # test_configs_smoke's demo run keep it, tests/test_report_html.py checks the page itself
            "eval.report=false", *extra]
    args = ["--config", str(ROOT / "configs" / "baseline_nnunet.yaml"), "--name", name, "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return args


def test_run_writes_checkpoints_tables_and_config(cohort, capsys):
    assert train.main(tiny_args(cohort, "full", epochs=2)) == 0
    out = capsys.readouterr().out
    run = cohort / "runs" / "full"
    assert {"config.yaml", "last.pt", "best.pt", "eval"} <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["config"]["train"]["epochs"] == 2 and ckpt["git_commit"]
    per_case = pd.read_csv(run / "eval" / "per_case.csv")
    assert len(per_case) == 2 and {"kidney", "tumor", "mean", "sex", "age"} <= set(per_case.columns)
    assert per_case["kidney"].between(0, 1).all()
    assert "grouped by sex" in out and "grouped by age" in out and "SD " in out


def test_existing_run_folder_is_never_overwritten(cohort):
    (cohort / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="exists; choose another --name or --resume it"):
        train.main(tiny_args(cohort, "taken", epochs=1))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(cohort):
    assert train.main(tiny_args(cohort, "straight", epochs=2)) == 0
    assert train.main(tiny_args(cohort, "interrupted", epochs=1)) == 0
    assert train.main(["--resume", str(cohort / "runs" / "interrupted"), "--set", "train.epochs=2",
                       "--no-progress"]) == 0
    a = torch.load(cohort / "runs" / "straight" / "last.pt", weights_only=False)
    b = torch.load(cohort / "runs" / "interrupted" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def test_augmenting_on_the_device_trains_the_same_weights_on_the_cpu(cohort):
    assert train.main(tiny_args(cohort, "aug_loader", epochs=2)) == 0
    assert train.main(tiny_args(cohort, "aug_device", epochs=2, extra=["train.augment_on=device"])) == 0
    a = torch.load(cohort / "runs" / "aug_loader" / "last.pt", weights_only=False)
    b = torch.load(cohort / "runs" / "aug_device" / "last.pt", weights_only=False)
    assert b["config"]["train"]["augment_on"] == "device"
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def test_steps_per_epoch_counts_and_resumes_exactly(cohort):
    steps = ["train.steps_per_epoch=3"]       # 4 training cases at batch 2 would be 2 steps an epoch
    assert train.main(tiny_args(cohort, "steps_straight", epochs=2, extra=steps)) == 0
    assert train.main(tiny_args(cohort, "steps_cut", epochs=1, extra=steps)) == 0
    assert torch.load(cohort / "runs" / "steps_cut" / "last.pt", weights_only=False)["step"] == 3
    assert train.main(["--resume", str(cohort / "runs" / "steps_cut"), "--set", "train.epochs=2", "--no-progress"]) == 0
    a = torch.load(cohort / "runs" / "steps_straight" / "last.pt", weights_only=False)
    b = torch.load(cohort / "runs" / "steps_cut" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    from config import ConfigError, load_config
    with pytest.raises(ConfigError, match="train.steps_per_epoch"):
        load_config(None, ["train.steps_per_epoch=2.5"])
    with pytest.raises(ConfigError, match="train.steps_per_epoch"):
        load_config(None, ["train.steps_per_epoch=0"])


def test_two_process_ddp_with_gloo(cohort):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "train.py"), *tiny_args(cohort, "ddp", epochs=1, extra=["train.steps_per_epoch=6"])]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout
    # train.steps_per_epoch is the total over the ranks: each of the 2 ran 3 of the 6 batches
    assert torch.load(cohort / "runs" / "ddp" / "last.pt", weights_only=False)["step"] == 3


def test_fairdro_trains_under_ddp(cohort):
    """dMoE routing and the DRO loss (its tails all-reduced across ranks) with 2 gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = tiny_args(cohort, "ddp_fairdro", epochs=1, extra=["fairness.dro.eta=0.5", "fairness.dro.warmup=0.0"])
    args[args.index(str(ROOT / "configs" / "baseline_nnunet.yaml"))] = str(ROOT / "configs" / "fairdro_sex.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
           str(ROOT / "train.py"), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout and "dMoE routed by sex" in result.stdout
    ckpt = torch.load(cohort / "runs" / "ddp_fairdro" / "last.pt", weights_only=False)
    q = ckpt["mitigations"]["dro"]["q"]
    assert q.shape == (2,) and abs(float(q.sum()) - 1) < 1e-6 and not torch.allclose(q, torch.full((2,), 0.5))


def test_seeds_run_one_folder_each_and_a_reissued_command_continues(cohort, capsys):
    args = tiny_args(cohort, "multi", epochs=1) + ["--seeds", "0", "1"]
    assert train.main(args) == 0
    runs = cohort / "runs" / "multi"
    for seed in (0, 1):
        assert (runs / f"seed{seed}" / "eval" / "per_case.csv").is_file()
        assert torch.load(runs / f"seed{seed}" / "last.pt", weights_only=False)["config"]["train"]["seed"] == seed
    a = torch.load(runs / "seed0" / "last.pt", weights_only=False)["model"]
    b = torch.load(runs / "seed1" / "last.pt", weights_only=False)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # seed1 "interrupted" after its checkpoint: the same command resumes it and keeps seed0
    (runs / "seed1" / "eval" / "per_case.csv").unlink()
    capsys.readouterr()
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "2 runs in multi: 1 finished, 1 to train (kept: multi/seed0)" in out and "(resuming)" in out
    # asking for another recipe under the same name is refused, never mixed in
    with pytest.raises(ConfigError, match="holds a run with another config"):
        train.main(args + ["--set", "optim.lr=0.5"])


def test_sweep_runs_each_entry_over_its_config(cohort, tmp_path):
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(f"config: {ROOT / 'configs' / 'baseline_nnunet.yaml'}\n"
                     "runs:\n  slow: {optim.lr: 0.001}\n  fast: {optim.lr: 0.01}\n")
    args = [a for a in tiny_args(cohort, "lr", epochs=1) if a != "--config" and not a.endswith("baseline_nnunet.yaml")]
    assert train.main(args + ["--sweep", str(sweep)]) == 0
    for entry, lr in (("slow", 0.001), ("fast", 0.01)):
        ckpt = torch.load(cohort / "runs" / "lr" / entry / "last.pt", weights_only=False)
        assert ckpt["config"]["optim"]["lr"] == lr


def test_a_run_killed_while_writing_its_test_tables_is_resumed_by_its_batch(cohort, monkeypatch, capsys):
    """eval/per_case.csv marks a run finished: it is written last, so a kill between the group
    tables and it leaves a run that the re-issued batch resumes instead of skipping."""
    import engine.runs

    args = tiny_args(cohort, "torn", epochs=1) + ["--seeds", "0"]
    real_write = engine.runs.write_csv
    written = []

    def killed_after_the_first_table(frame, path, **kw):
        if written:  # the process dies here: what is on disk is what a SIGKILL would leave
            raise KeyboardInterrupt
        written.append(path.name)
        return real_write(frame, path, **kw)

    monkeypatch.setattr(engine.runs, "write_csv", killed_after_the_first_table)
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    run = cohort / "runs" / "torn" / "seed0"
    assert written == ["groups_sex.csv"] and (run / "last.pt").is_file()
    assert not (run / "eval" / "per_case.csv").exists()
    monkeypatch.setattr(engine.runs, "write_csv", real_write)
    capsys.readouterr()
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "1 runs in torn: 0 finished, 1 to train" in out and "(resuming)" in out
    assert len(pd.read_csv(run / "eval" / "per_case.csv")) == 2 and (run / "eval" / "groups_age.csv").is_file()


def as_format_1(ckpt: dict) -> dict:
    """The checkpoint as fairkits wrote it before the mitigations package (format 1): the method
    spread over sampler.name / fairness.method / model.moe, alpha-named weights, states on top."""
    old = {k: v for k, v in ckpt.items() if k not in ("mitigations", "group_index")}
    cfg = {section: dict(values) for section, values in ckpt["config"].items()}
    fair = cfg["fairness"]
    meta, resm = fair.pop("fairmeta"), fair.pop("resm")
    cfg["sampler"].update(name="uniform", **resm)
    cfg["model"]["moe"] = dict(fair.pop("dmoe"))
    dro = dict(fair["dro"])
    dro["alpha"] = dro.pop("cvar_level")
    fair.update(method="dro", dro=dro, alpha=meta["seg_weight"], beta=meta["cls_weight"], input=meta["input"],
                adversarial=meta["adversarial"], classifier=meta["classifier"])
    cfg["eval"]["criterion"] = "mean_dice"
    old.update(config=cfg, format_version=1, **ckpt["mitigations"])
    return old


def test_a_checkpoint_from_before_the_mitigations_package_loads_evaluates_and_resumes(cohort, tmp_path, capsys):
    import evaluate
    from models.checkpoint import load_checkpoint

    args = tiny_args(cohort, "fairdro_new", epochs=1)
    args[args.index(str(ROOT / "configs" / "baseline_nnunet.yaml"))] = str(ROOT / "configs" / "fairdro_sex.yaml")
    assert train.main(args) == 0
    new = cohort / "runs" / "fairdro_new"
    old = cohort / "runs" / "fairdro_old"
    old.mkdir()
    torch.save(as_format_1(torch.load(new / "last.pt", weights_only=False)), old / "last.pt")
    upgraded = load_checkpoint(old / "last.pt")
    assert upgraded["config"]["fairness"]["method"] == ["dmoe", "dro"]
    assert upgraded["config"]["fairness"]["dro"]["cvar_level"] == 0.2
    assert upgraded["group_index"] == {"attribute": "sex", "groups": ["male", "female"]}
    assert torch.equal(upgraded["mitigations"]["dro"]["q"], load_checkpoint(new / "last.pt")["mitigations"]["dro"]["q"])
    for run in (new, old):   # the same network, routed the same way: the same Dice on every case
        assert evaluate.main(["--ckpt", str(run / "last.pt"), "--n-boot", "20", "--no-progress"]) == 0
    a, b = (pd.read_csv(run / "eval" / "last" / "per_case.csv") for run in (new, old))
    pd.testing.assert_frame_equal(a, b)
    # and training continues from it (its config translated into today's keys)
    assert train.main(["--resume", str(old), "--set", "train.epochs=2", "--no-progress"]) == 0
    resumed = load_checkpoint(old / "last.pt")
    assert resumed["format_version"] == 3 and resumed["epoch"] == 2 and "dro" in resumed["mitigations"]


def test_the_fp32_fallback_applies_where_the_cpu_has_no_native_bf16(cohort, capsys, monkeypatch):
    """train.fp32_fallback (the demo's cheaper recipe for CPUs that train in fp32): applied, said on the
    first line and saved as the run's resolved config, only where bf16 is not native; an explicit
    --set of the same key wins; a key that is not a config key is refused when the config is read."""
    import engine.runtime as runtime
    from config import ConfigError, load_config

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    fallback = 'train.fp32_fallback={"train.epochs": 1, "train.patch_size": [16, 32, 32]}'
    assert train.main(tiny_args(cohort, "fallback", epochs=3, extra=["train.amp=bf16", "train.patch_size=[16,48,48]",
                                                                      fallback])) == 0
    out = capsys.readouterr().out
    assert "with the config's fp32 fallback: train.epochs=1, train.patch_size=[16, 32, 32]" in out
    saved = load_config(saved=__import__("yaml").safe_load((cohort / "runs" / "fallback" / "config.yaml").read_text()))
    assert saved["train"]["epochs"] == 1 and saved["train"]["patch_size"] == [16, 32, 32]
    assert saved["train"]["fp32_fallback"] == {}          # applied once: a resumed run does not apply it again
    # an explicit override beats the fallback's value for the same key, and only that key
    demo = load_config(ROOT / "configs" / "demo.yaml", ["train.epochs=95", "model.first_stage_convs=2"])
    assert "train.epochs" not in demo["train"]["fp32_fallback"]
    assert "model.first_stage_convs" not in demo["train"]["fp32_fallback"]
    applied, _ = __import__("config").apply_fp32_fallback(demo)
    assert applied["train"]["epochs"] == 95 and applied["model"]["first_stage_convs"] == 2
    assert applied["optim"]["lr"] == load_config(ROOT / "configs" / "demo.yaml")["train"]["fp32_fallback"]["optim.lr"]
    with pytest.raises(ConfigError, match="unknown config key 'train.patchsize'"):
        load_config(ROOT / "configs" / "demo.yaml", ['train.fp32_fallback={"train.patchsize": [1, 2, 3]}'])
    with pytest.raises(ConfigError, match="expects"):
        load_config(ROOT / "configs" / "demo.yaml", ['train.fp32_fallback={"train.epochs": "many"}'])
