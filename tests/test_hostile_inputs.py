"""The hostile-input corpus: files an attacker or a careless colleague could hand the tool.

Every input is made here, small. For each, the tool gives a one-line error or a correct result;
nothing is written outside the output folder and nothing in the input runs. The items follow
issue 26: checkpoints that carry code, case ids that are paths, planted links, header and gzip
bombs, YAML alias bombs, deep JSON, wrong types and out-of-range values, and three wrong
results (verify on a real cache, `--group sex bmi`, two audits into one folder).
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate
import preprocess
import train
from config import ConfigError, load_config
from data.atomic import atomic_write
from data.errors import CaseError, WriteError
from data.nifti import kits_affine, read_volume, write_volume
from data.untrusted import MAX_NODES, check_case_id, parse_json
from models import build_model
from models.checkpoint import CheckpointError, convert_checkpoint, load_checkpoint, model_from_checkpoint
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
SHAPE, SPACING = (12, 20, 24), (4.0, 0.9, 0.9)
FAST = ["--no-progress", "--n-boot", "20", "--n-perm", "100"]
TINY_MODEL = ["train.patch_size=[16,32,32]", "model.base_features=4", "model.max_features=16", "train.steps_per_epoch=null"]


def one_line_error(text: str) -> str:
    """The error line of a CLI's stderr; fails on a traceback."""
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert lines, text
    return lines[-1]


def files_under(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """raw/ (6 cases), cache/ (preprocessed by the CLI, with its splits.json), preds/ (imperfect
    predictions: each case loses a different share of its kidney)."""
    root = tmp_path_factory.mktemp("hostile")
    raw = write_tiny_cohort(root / "raw", n_cases=8, shape=SHAPE, spacing=SPACING)
    assert preprocess.main(["run", "--raw", str(raw), "--out", str(root / "cache"), "--no-progress"]) == 0
    _, labels = make_case_arrays(SHAPE)
    for i in range(8):
        pred = labels.copy()
        pred[3:3 + i % 4, 5:14, 6:16][pred[3:3 + i % 4, 5:14, 6:16] == 1] = 0   # 0-3 kidney slices missed
        pred[4:7, 7:7 + (i * 3) % 4, 8:12] = 1 if i % 2 else 2                    # some tumor missed
        write_volume(root / "preds" / f"case_{i:05d}.nii.gz", pred, kits_affine(SPACING), spacing=SPACING)
    return root


# ----------------------------------------------------------------------------- 1. checkpoints
class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_state(numpy_rng: bool = False) -> dict:
    cfg = load_config(ROOT / "configs" / "baseline_nnunet.yaml", TINY_MODEL)
    model = build_model(cfg["model"], patch_size=cfg["train"]["patch_size"], in_channels=1, num_classes=3)
    rng = np.random.get_state() if numpy_rng else None
    return {"config": cfg, "model": model.state_dict(), "num_classes": 3, "epoch": 1, "step": 4, "best": 0.5,
            "rng": {"torch": torch.get_rng_state(), "numpy": rng, "python": (3, tuple(range(625)), None)}}


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({**tiny_state(), "payload": RunsCode(marker)}, evil)
    assert evaluate.main(["--ckpt", str(evil), *FAST]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "holds objects beyond tensors and plain data" in line and "--convert-checkpoint" in line
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="reading it could run code"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ({"config": 5}, "not a fairkits checkpoint"),
    ({"config": 5, "model": {}}, "its config is 5, not a mapping"),
    ({"config": {"model": {}, "train": {}}, "model": {"w": 5}}, "model state entry 'w' is 5, not a tensor"),
    ({"config": {"model": {}}, "model": {}}, "its config has no 'train' section"),
    ({"config": {"model": {}, "train": {}}, "model": {}, "epoch": -3}, "'epoch' is -3, below 0"),
    ({"config": {"model": {}, "train": {}}, "model": {}, "format_version": "x"}, "format_version is 'x'"),
])
def test_a_malformed_checkpoint_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    assert evaluate.main(["--ckpt", str(path), *FAST]) == 2
    assert message in one_line_error(capsys.readouterr().err)


def test_weights_that_do_not_fit_the_network_are_refused_by_name(tmp_path):
    state = tiny_state()
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(3, 3)
    torch.save({"format_version": 3, **state}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        model_from_checkpoint(load_checkpoint(tmp_path / "x.pt"))


def test_an_old_checkpoint_is_refused_then_converted_only_when_asked(tmp_path, capsys):
    old = tmp_path / "run" / "last.pt"
    old.parent.mkdir()
    state = tiny_state(numpy_rng=True)
    torch.save({"format_version": 2, **state}, old)          # numpy's RNG state: a pickled numpy object
    with pytest.raises(CheckpointError, match=r"converted, once and knowingly, by `python train.py --convert-checkpoint"):
        load_checkpoint(old)
    before = old.read_bytes()
    assert train.main(["--convert-checkpoint", str(old)]) == 0
    captured = capsys.readouterr()
    assert "warning: unpickling" in captured.err and "last-v3.pt" in captured.out
    assert old.read_bytes() == before                          # the old file is kept as it was
    new = load_checkpoint(old.parent / "last-v3.pt")
    assert new["format_version"] == 3 and torch.equal(new["rng"]["numpy"]["key"],
                                                        torch.from_numpy(state["rng"]["numpy"][1].astype(np.int64)))
    model = model_from_checkpoint(new)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key])
    with pytest.raises(CheckpointError, match="exists"):         # never over an earlier conversion
        convert_checkpoint(old)
    with pytest.raises(ConfigError, match="--convert-checkpoint converts a file and stops"):
        train.main(["--convert-checkpoint", str(old), "--config", "x.yaml"])


def test_checkpoints_are_saved_as_data(tmp_path):
    from models.checkpoint import save_checkpoint
    with pytest.raises(TypeError, match=r"checkpoint\['x'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "a.pt", {**tiny_state(), "x": np.zeros(2)})
    assert not (tmp_path / "a.pt").exists()


# ----------------------------------------------------------------------------- case ids are names
@pytest.mark.parametrize("bad", ["../victims/victim", "/tmp/x", "a/b", "..", ".hidden", "ok\n", "", 7])
def test_a_case_id_is_a_plain_name(bad):
    with pytest.raises(CaseError, match="is not a plain case id"):
        check_case_id(bad)


def test_verify_repair_never_deletes_outside_the_cache(cohort, tmp_path_factory, capsys):
    work = tmp_path_factory.mktemp("repair")
    import shutil
    cache = work / "cache"
    shutil.copytree(cohort / "cache", cache)
    victims = work / "victims"
    victims.mkdir()
    for suffix in (".json", ".npy", "_seg.npy"):
        (victims / f"victim{suffix}").write_text("keep me")
    table = (cache / "cases.csv").read_text().splitlines()
    fields = table[1].split(",")
    rows = [",".join([bad] + fields[1:]) for bad in ("../victims/victim", str(victims / "victim"))]
    (cache / "cases.csv").write_text("\n".join(table + rows) + "\n")
    assert preprocess.main(["verify", "--cache", str(cache)]) == 1
    assert "is not a plain case id" in capsys.readouterr().out
    assert preprocess.main(["verify", "--cache", str(cache), "--repair", "--raw", str(cohort / "raw"),
                            "--no-progress"]) == 0
    assert sorted(p.read_text() for p in victims.iterdir()) == ["keep me"] * 3
    assert "victim" not in (cache / "cases.csv").read_text()   # rebuilt from the cached cases


def test_synthesize_from_labels_refuses_a_path_as_case_id(cohort, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "case_00000").symlink_to(cohort / "raw" / "case_00000")
    entries = json.loads((cohort / "raw" / "kits.json").read_text())[:1]
    escape = tmp_path / "escape_src"
    for bad in ("../escape_src", str(escape)):
        (src / "kits.json").write_text(json.dumps(entries + [dict(entries[0], case_id=bad)]))
        assert preprocess.main(["synthesize", "--from-labels", str(src), "--out", str(tmp_path / "out"),
                                "--no-progress"]) == 2
        assert "is not a plain case id" in one_line_error(capsys.readouterr().err)
        with pytest.raises(SystemExit) as exit_:   # --only is checked by its parser, before any work
            preprocess.main(["synthesize", "--from-labels", str(src), "--out", str(tmp_path / "out"), "--only", bad])
        assert exit_.value.code == 2 and "is not a plain case id" in capsys.readouterr().err
    assert not escape.exists() and not (tmp_path / "out").exists()


def test_case_ids_from_summary_and_splits_are_checked(cohort, tmp_path, capsys):
    summary = {"metric_per_case": [{"reference_file": "/x/../../etc/passwd.nii.gz", "prediction_file": "p",
                                    "metrics": {"(1, 2)": {"Dice": 1.0, "TP": 1, "FP": 0, "FN": 0, "TN": 0}}}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "summary.json"), "--meta",
                          str(cohort / "raw" / "kits.json"), *FAST]) == 2
    assert "no case could be scored" in one_line_error(capsys.readouterr().err)
    from data.splits import load_split
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["../../x"], "val": [], "test": []}))
    with pytest.raises(CaseError, match=r"splits.json train\[0\]: '../../x' is not a plain case id"):
        load_split(tmp_path / "splits.json")


# ----------------------------------------------------------------------------- planted links
def test_a_link_planted_at_the_old_temporary_name_is_not_followed(cohort, tmp_path, capsys):
    out = tmp_path / "audit"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    for pid in range(os.getpid() - 2, os.getpid() + 3):   # the names a writer of 0.x would have used
        (out / f".per_case.csv.tmp{pid}").symlink_to(victim)
    assert evaluate.main(["--pred", str(cohort / "preds"), "--gt", str(cohort / "raw"), "--out", str(out), *FAST]) == 0
    assert victim.read_text() == "untouched"
    assert pd.read_csv(out / "per_case.csv").shape[0] == 8


def test_a_temporary_swapped_for_a_link_while_written_is_never_renamed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")

    def write_then_swap(tmp: Path):
        tmp.write_text("mine")
        tmp.unlink()
        tmp.symlink_to(victim)          # someone with write access to the folder swaps it

    with pytest.raises(WriteError, match="replaced while being written"):
        atomic_write(tmp_path / "result.csv", write_then_swap)
    assert victim.read_text() == "untouched" and not (tmp_path / "result.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]


def test_results_are_readable_by_the_group_like_any_file(tmp_path):
    atomic_write(tmp_path / "x.csv", lambda tmp: tmp.write_text("a"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.csv").stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- 5, 6, 7: wrong results
def test_verify_accepts_the_cache_the_cli_builds(cohort, capsys):
    assert "options" in json.loads((cohort / "cache" / "splits.json").read_text())
    assert preprocess.main(["verify", "--cache", str(cohort / "cache")]) == 0
    assert "no problems" in capsys.readouterr().out


def test_grouping_by_bmi_keeps_bmi_in_the_adjustment(cohort, tmp_path):
    common = ["--pred", str(cohort / "preds"), "--gt", str(cohort / "raw"), *FAST]
    assert evaluate.main(common + ["--group", "sex", "--out", str(tmp_path / "a")]) == 0
    assert evaluate.main(common + ["--group", "sex", "bmi", "--out", str(tmp_path / "b")]) == 0
    a, b = (pd.read_csv(tmp_path / x / "summary_sex.csv", index_col=0)["value"] for x in "ab")
    assert a["gap_adjusted"] == pytest.approx(b["gap_adjusted"]) and np.isfinite(a["gap_adjusted"])
    per_case = pd.read_csv(tmp_path / "b" / "per_case.csv")
    assert per_case["bmi_kg_m2"].tolist() == pytest.approx([31.0, 22.5, 27.0, 35.2, 24.0, 29.9, 26.1, 23.3])
    assert set(per_case["bmi"]) == {">=30", "[0,25)", "[25,30)"}
    # without BMI the figure differs: the adjustment really holds it
    assert evaluate.main(common + ["--group", "sex", "--adjust-for", "log_tumor_ml", "log_kidney_ml",
                                   "--out", str(tmp_path / "c")]) == 0
    c = pd.read_csv(tmp_path / "c" / "summary_sex.csv", index_col=0)["value"]
    assert c["gap_adjusted"] != pytest.approx(a["gap_adjusted"])


def test_two_audits_into_one_folder_never_mix(cohort, tmp_path):
    out = tmp_path / "shared"
    cases = ["case_00000,case_00001,case_00002,case_00003", "case_00004,case_00005,case_00006"]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "evaluate.py"), "--pred", str(cohort / "preds"), "--gt",
                               str(cohort / "raw"), "--cases", c, "--out", str(out), *FAST],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cases]
    results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    results = [(code, err) for (_, err), code in results]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "holds results (per_case.csv)" in one_line_error(refused)
    per_case = pd.read_csv(out / "per_case.csv")
    groups = pd.read_csv(out / "groups_sex.csv", index_col=0)
    assert groups.loc["all", "n"] == len(per_case) and len(per_case) in (3, 4)
    assert not (out / ".results.lock").exists()


# ----------------------------------------------------------------------------- 8, 9: bounded reads
def header_bomb(path: Path, shape, *, data: bytes = b"\0" * 16) -> Path:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_zooms(SPACING)
    raw = header.binaryblock + b"\0" * (int(header["vox_offset"]) - len(header.binaryblock)) + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))
    return path


def test_a_header_bomb_is_one_failed_case_and_the_batch_goes_on(cohort, tmp_path, capsys):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(cohort / "raw", raw)
    header_bomb(raw / "case_00003" / "segmentation.nii.gz", (1000, 32767, 32767))
    assert (raw / "case_00003" / "segmentation.nii.gz").stat().st_size < 1000
    assert preprocess.main(["run", "--raw", str(raw), "--out", str(tmp_path / "cache"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "case_00003: its header claims 1000x32767x32767" in err and "Traceback" not in err
    assert len(pd.read_csv(tmp_path / "cache" / "cases.csv")) == 7
    # the same file as a prediction: one failed case, the others scored
    preds = tmp_path / "preds"
    shutil.copytree(cohort / "preds", preds)
    header_bomb(preds / "case_00001.nii.gz", (1000, 32767, 32767))
    assert evaluate.main(["--pred", str(preds), "--gt", str(cohort / "raw"), "--out", str(tmp_path / "a"), *FAST]) == 1
    assert "case_00001: its header claims" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "a" / "per_case.csv")) == 7


def test_a_prediction_of_another_shape_is_refused_before_its_data_is_inflated(cohort, tmp_path, capsys):
    import shutil
    preds = tmp_path / "preds"
    shutil.copytree(cohort / "preds", preds)
    # 100 M voxels claimed, 16 bytes present: reading the data would fail as truncated
    header_bomb(preds / "case_00002.nii.gz", (400, 512, 512))
    assert evaluate.main(["--pred", str(preds), "--gt", str(cohort / "raw"), "--out", str(tmp_path / "a"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "case_00002: prediction shape (400, 512, 512) differs from the reference (12, 20, 24)" in err
    with pytest.raises(CaseError, match=r"has shape \(400, 512, 512\), its reference \(12, 20, 24\); not reading it"):
        read_volume(preds / "case_00002.nii.gz", shape=SHAPE)


def test_the_voxel_limit_is_configurable(tmp_path, monkeypatch):
    path = write_tiny_cohort(tmp_path, n_cases=1, shape=SHAPE) / "case_00000" / "segmentation.nii.gz"
    monkeypatch.setenv("FAIRKITS_MAX_VOXELS", "1000")
    with pytest.raises(CaseError, match=r"12x20x24 = 5,760 voxels, above the limit of 1,000"):
        read_volume(path)
    monkeypatch.setenv("FAIRKITS_MAX_VOXELS", "5760")
    assert read_volume(path).array.shape == SHAPE


# ----------------------------------------------------------------------------- 10, 11: YAML and JSON bombs
BOMB = ("[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"]
                        + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]")


def test_a_yaml_alias_bomb_is_refused_quickly_in_a_config_and_an_override(tmp_path):
    (tmp_path / "bomb.yaml").write_text(f"train:\n  epochs: {BOMB}\n")
    for call in (lambda: load_config(tmp_path / "bomb.yaml"),
                 lambda: load_config(ROOT / "configs" / "demo.yaml", [f"train.epochs={BOMB}"])):
        start = time.perf_counter()
        with pytest.raises(ConfigError) as err:
            call()
        assert time.perf_counter() - start < 5
        assert f"more than {MAX_NODES:,} values" in str(err.value) and len(str(err.value)) < 300


def test_a_large_wrong_value_is_never_formatted_whole(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", ["train.epochs=" + "x" * 10**6])
    assert len(str(err.value)) < 200


DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_json_is_one_line_everywhere(cohort, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    assert evaluate.main(["--nnunet-summary", str(deep), "--meta", str(cohort / "raw" / "kits.json"), *FAST]) == 2
    assert "nests deeper than 64 levels" in one_line_error(capsys.readouterr().err)
    assert evaluate.main(["--pred", str(cohort / "preds"), "--gt", str(cohort / "raw"), "--meta", str(deep), *FAST]) == 2
    assert "deep.json: nests deeper" in one_line_error(capsys.readouterr().err)
    assert preprocess.main(["run", "--raw", str(cohort / "raw"), "--metadata", str(deep), "--out",
                            str(tmp_path / "c"), "--no-progress"]) == 2
    assert "nests deeper" in one_line_error(capsys.readouterr().err)
    with pytest.raises(CaseError, match="nests deeper"):
        parse_json('{"a":' * 70 + "1" + "}" * 70, "x")


# ----------------------------------------------------------------------------- 12: memory bounded
def test_resampling_draws_in_blocks_whatever_the_cohort_size(monkeypatch):
    import fairness.stats as stats
    from fairness.significance import group_gap_test
    from fairness.tails import cvar_interval
    from fairness.welch import mean_intervals, two_group_test
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 1, 300)
    codes = (np.arange(300) % 3 == 0).astype(np.int64)
    # two groups: the test's and the intervals' bootstraps hold at most chunk_values draws at once
    whole_two = two_group_test(values, codes, n_boot=400, rng=np.random.default_rng(1))
    small_two = two_group_test(values, codes, n_boot=400, rng=np.random.default_rng(1), chunk_values=1000)
    assert float(small_two["p"]) == pytest.approx(float(whole_two["p"]), abs=0.05)
    assert mean_intervals(values, codes, 2, n_boot=400, chunk_values=1000)[0] == pytest.approx(
        mean_intervals(values, codes, 2, n_boot=400)[0], abs=0.01)
    # three groups: the noise-alone bootstrap draws in blocks of draw_chunks
    per_case = pd.DataFrame({"case_id": [f"c{i}" for i in range(300)], "mean": values,
                             "sex": np.array(["a", "b", "c"])[np.arange(300) % 3]})
    whole_ = group_gap_test(per_case, "sex", n_perm=400)
    cvar = cvar_interval(per_case["mean"], 0.2, n_boot=400)
    blocks = []
    real = stats.draw_chunks
    monkeypatch.setattr(stats, "DRAW_BUDGET", 1000)          # 300 cases: a block of 3 draws at a time
    monkeypatch.setattr("fairness.significance.draw_chunks", lambda n, m: blocks.append(n) or real(n, m))
    blocked = group_gap_test(per_case, "sex", n_perm=400)
    assert blocks and list(real(400, 300))[:2] == [(0, 3), (3, 6)]
    for key in ("sd_null95", "ser_null95", "gap_p"):       # the same figures, to resampling noise
        assert blocked[key] == pytest.approx(whole_[key], rel=0.1, abs=0.02)
    assert cvar_interval(per_case["mean"], 0.2, n_boot=400) == pytest.approx(cvar, rel=0.02)


# ----------------------------------------------------------------------------- 13, 14, 15: wrong types, ranges
@pytest.mark.parametrize("config, message", [
    ("data:\n  preprocess:\n    clip: 5\n", "preprocessing setting clip is a list of numbers, got 5"),
    ("- 1\n- 2\n", "a config is a mapping of sections"),
    ("data: 5\n", "a config is a mapping of sections"),
    ("data:\n  preprocess:\n    seed: 1.5\n", "preprocessing setting seed is a whole number, got 1.5"),
])
def test_preprocess_run_config_of_the_wrong_type_is_one_line(cohort, tmp_path, capsys, config, message):
    (tmp_path / "c.yaml").write_text(config)
    assert preprocess.main(["run", "--config", str(tmp_path / "c.yaml"), "--raw", str(cohort / "raw"),
                            "--out", str(tmp_path / "cache"), "--no-progress"]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv, message", [
    (["synthesize", "--out", "{tmp}/s", "--cases", "-1"], "argument --cases: must be at least 1, got -1"),
    (["synthesize", "--out", "{tmp}/s", "--cases", "1", "--shape", "2,4,4"], "argument --shape: must be at least 4"),
    (["synthesize", "--out", "{tmp}/s", "--cases", "1", "--shape", "4000,4000,4000"], "above the limit of"),
    (["split", "--cache", "{tmp}", "--test", "inf"], "argument --test: expected a finite number, got 'inf'"),
    (["split", "--cache", "{tmp}", "--test", "2.5"], "a count is a whole number"),
    (["export-nnunet", "--raw", "{tmp}", "--out", "{tmp}/n", "--id", "1000"], "argument --id: must be at most 999"),
])
def test_preprocess_numbers_out_of_range_are_refused_by_the_parser(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        preprocess.main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flag", ["--config", "--bias", "--nnunet-summary", "base"])
def test_dev_zero_is_refused_without_reading_it_all(cohort, tmp_path, capsys, flag):
    start = time.perf_counter()
    if flag == "--config":
        code = preprocess.main(["run", "--config", "/dev/zero", "--raw", str(cohort / "raw"), "--out", str(tmp_path / "c")])
    elif flag == "--bias":
        code = preprocess.main(["synthesize", "--out", str(tmp_path / "s"), "--cases", "2", "--bias", "/dev/zero"])
    elif flag == "--nnunet-summary":
        code = evaluate.main(["--nnunet-summary", "/dev/zero", "--meta", str(cohort / "raw" / "kits.json"), *FAST])
    else:
        (tmp_path / "c.yaml").write_text("base: /dev/zero\n")
        with pytest.raises(ConfigError, match="dev/zero: more than"):
            load_config(tmp_path / "c.yaml")
        return
    assert code == 2 and "/dev/zero: more than" in one_line_error(capsys.readouterr().err)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", "'train.epochs' must be a number at least 1, got -1"),
    ("train.batch_size=0", "'train.batch_size' must be a number at least 1"),
    ("optim.lr=0", "'optim.lr' must be a number above 0"),
    ("train.patch_size=[2,64,64]", "'train.patch_size' is three whole numbers >= 4"),
    ("eval.overlap=1.0", "'eval.overlap' must be a number at least 0 and at most 0.95"),
    ("fairness.dro.cvar_level=0", "'fairness.dro.cvar_level' must be a number above 0"),
])
def test_train_refuses_a_number_out_of_range(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(ROOT / "configs" / "demo.yaml", [override])


def test_train_py_prints_one_line_for_any_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--config", "configs/demo.yaml", "--set", "train.epochs=-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: config key 'train.epochs' must be a number at least 1, got -1")


def test_small_ones(cohort, tmp_path, capsys):
    assert preprocess.main(["export-nnunet", "--raw", str(cohort / "raw"), "--out", str(tmp_path / "n"),
                            "--id", "5", "--name", "ok\n"]) == 2
    assert "may hold only letters, digits" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "n").exists() or not any((tmp_path / "n").iterdir())
    assert evaluate.main(["--group-dice", "male=84", "male=80"]) == 2
    assert "group male is given twice (male=84 and male=80)" in one_line_error(capsys.readouterr().err)
    assert evaluate.main(["--group-dice", "male=nan", "female=80"]) == 2
    assert "finite Dice" in one_line_error(capsys.readouterr().err)
    for flag, value, message in (("--n-perm", "0", "must be at least 100"), ("--n-boot", "5", "must be at least 20"),
                                 ("--cvar-level", "0", "must be above 0")):
        with pytest.raises(SystemExit):
            evaluate.main(["--group-dice", "male=84", "female=80", flag, value])
        assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_naming_its_type_and_debug_shows_the_traceback(capsys):
    from data.errors import report_error
    try:
        raise TypeError("unsupported operand type(s)\nsecond line")
    except TypeError as exc:
        assert report_error(exc) == 2
        assert capsys.readouterr().err == ("error: TypeError: unsupported operand type(s) second line (rerun with "
                                           "--debug for the traceback)\n")
        report_error(exc, debug=True)
        assert "Traceback" in capsys.readouterr().err


def test_a_path_as_case_id_in_kits_json_stops_preprocessing_naming_the_file(cohort, tmp_path, capsys):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(cohort / "raw", raw)
    entries = json.loads((raw / "kits.json").read_text())
    (raw / "kits.json").write_text(json.dumps(entries + [dict(entries[0], case_id="../../outside")]))
    assert preprocess.main(["run", "--raw", str(raw), "--out", str(tmp_path / "cache"), "--no-progress"]) == 2
    assert "kits.json entry 8: '../../outside' is not a plain case id" in one_line_error(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        preprocess.main(["run", "--raw", str(raw), "--out", str(tmp_path / "cache"), "--cases", "case_00000,../x"])
    assert "argument --cases: '../x' is not a plain case id" in capsys.readouterr().err
