"""The bad-input corpus: every malformed input the tools meet, built on the fly, and what they do.

Each table row is one bad input (tiny volumes) with the fragment of the message the tool must
give. The checks, for every row:
    - a one-line error naming the case or the file and the problem; no traceback (unless --debug);
    - batch work (preprocess.py run, evaluate.py --pred) goes on with the other cases and lists
      the failures at the end, on stderr, with exit code 1; a fatal error is "error: ..." and 2;
    - nothing already written changes: the files of an existing cache, run or results folder keep
      their bytes and modification times.
The CLIs are driven in-process through their main(argv); train.main raises its errors (its
`__main__` block prints them), so one row also runs `python train.py` in a subprocess.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import evaluate
import preprocess
import train
from config import ConfigError
from data.errors import CaseError
from data.nifti import kits_affine, read_volume, write_volume
from data.splits import load_split
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
SPACING = (4.0, 0.9, 0.9)            # write_tiny_cohort's default
SHAPE = (12, 20, 24)
CACHED = [f"case_{i:05d}" for i in range(4)]   # preprocessed once, by the fixture
VICTIM = "case_00004"                # the case each row breaks
BYSTANDER = "case_00005"             # a good case that must still be processed
FAST_AUDIT = ["--no-progress", "--n-boot", "20"]


# ----------------------------------------------------------------------------- the shared cohort
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """raw/ (6 good cases), cache/ (the first 4 preprocessed, with splits.json), preds/ (perfect
    predictions of all 6) and audit/ (a finished evaluate.py --pred results folder)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    raw = write_tiny_cohort(root / "raw", n_cases=6, shape=SHAPE, spacing=SPACING)
    assert preprocess.main(["run", "--raw", str(raw), "--out", str(root / "cache"), "--cases", ",".join(CACHED),
                            "--no-progress"]) == 0
    _, labels = make_case_arrays(SHAPE)
    for i in range(6):
        write_volume(root / "preds" / f"case_{i:05d}.nii.gz", labels, kits_affine(SPACING), spacing=SPACING)
    assert evaluate.main(["--pred", str(root / "preds"), "--gt", str(raw), "--cases", ",".join(CACHED),
                          "--out", str(root / "audit"), *FAST_AUDIT]) == 0
    return root


def copy_of(corpus, tmp_path, *names) -> list[Path]:
    """Fresh copies (mtimes kept) of the corpus folders a row may change."""
    out = []
    for name in names:
        shutil.copytree(corpus / name, tmp_path / name)
        out.append(tmp_path / name)
    return out


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_untouched(before: dict, folder: Path, *, except_for=()) -> None:
    after = snapshot(folder)
    for name, (data, mtime) in before.items():
        if name in except_for:
            continue
        assert name in after, f"{name} was removed"
        assert after[name][0] == data, f"{name} changed"
        assert after[name][1] == mtime, f"{name} was rewritten"


def assert_failure_list(err: str, where: str, fragment: str) -> str:
    """stderr holds exactly the closing list of one failure: one line naming `where` (the case)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[:-1] == ["1 case(s) failed:"], err
    line = lines[-1].strip()
    assert line.startswith(where) and fragment in line, line
    return line


def assert_one_error_line(err: str, fragment: str) -> str:
    """stderr is one line, "error: ...", holding the fragment (a fatal error)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    return lines[0]


# ----------------------------------------------------------------------------- how inputs are broken
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])          # the header survives, the voxels do not


def not_nifti(path: Path) -> None:
    path.write_bytes(b"patient list, exported from the PACS\n")


def rewrite(change):
    """A breaker that rewrites a NIfTI: change(array, affine) -> (array, affine)."""
    def apply(path: Path) -> None:
        vol = read_volume(path)
        array, affine = change(np.asarray(vol.array), vol.affine)
        write_volume(path, array, affine, spacing=SPACING if array.ndim == 3 else None)
    return apply


def with_zooms(*zooms):
    """Store these zooms in the header as they are (nibabel refuses to write a zero or negative one)."""
    def apply(path: Path) -> None:
        raw = bytearray(gzip.decompress(path.read_bytes()))
        struct.pack_into("<3f", raw, 80, *zooms)    # pixdim[1:4] of the NIfTI-1 header
        path.write_bytes(gzip.compress(bytes(raw)))
    return apply


def with_value(value, dtype=np.float32):
    def change(array, affine):
        array = array.astype(dtype)
        array[5, 5, 5] = value
        return array, affine
    return rewrite(change)


as_2d = rewrite(lambda a, aff: (a[0], aff))
as_4d = rewrite(lambda a, aff: (np.stack([a, a], axis=-1), aff))
one_slice_less = rewrite(lambda a, aff: (a[:, :, :-1], aff))
shifted = rewrite(lambda a, aff: (a, aff + np.array([[0, 0, 0, 10.0]] * 3 + [[0, 0, 0, 0]])))
half_label = with_value(0.5)
label_seven = with_value(7, np.uint8)
all_zero = rewrite(lambda a, aff: (np.zeros_like(a), aff))


def edit_meta(**changes):
    """A breaker of the victim's kits.json entry: a value, None to drop the key, or drop=True."""
    def apply(raw: Path) -> None:
        entries = json.loads((raw / "kits.json").read_text())
        if changes.get("drop"):
            entries = [e for e in entries if e["case_id"] != VICTIM]
        for entry in entries:
            if entry["case_id"] == VICTIM:
                for key, value in changes.items():
                    if value is None:
                        entry.pop(key)
                    else:
                        entry[key] = value
        (raw / "kits.json").write_text(json.dumps(entries))
    return apply


# ----------------------------------------------------------------------------- per-case bad inputs
# (name, tool, file broken, breaker, fragment of the one-line message after "case_00004: ")
#   files: imaging / segmentation of the victim in raw/, its prediction in preds/, or kits.json
#   tools: preprocess.py run (into an existing cache) or evaluate.py --pred (against raw/)
PRED = f"{VICTIM}.nii.gz"
PER_CASE = [
    ("truncated .nii.gz", "preprocess", "imaging", truncate, "imaging.nii.gz is truncated or corrupt (EOFError"),
    ("truncated .nii.gz", "evaluate", "prediction", truncate, f"{PRED} is truncated or corrupt (EOFError"),
    ("not NIfTI", "preprocess", "segmentation", not_nifti, "segmentation.nii.gz is not a readable NIfTI file"),
    ("not NIfTI", "evaluate", "prediction", not_nifti, f"{PRED} is not a readable NIfTI file"),
    ("2D image", "preprocess", "imaging", as_2d, "imaging.nii.gz has shape (20, 24); expected a 3D volume"),
    ("4D image", "preprocess", "segmentation", as_4d,
     "segmentation.nii.gz has shape (12, 20, 24, 2); expected a 3D volume"),
    ("4D image", "evaluate", "prediction", as_4d, f"{PRED} has shape (12, 20, 24, 2); expected a 3D volume"),
    ("NaN voxels in the CT", "preprocess", "imaging", with_value(np.nan), "imaging.nii.gz contains NaN or Inf voxels"),
    ("Inf voxels in the CT", "preprocess", "imaging", with_value(-np.inf), "imaging.nii.gz contains NaN or Inf voxels"),
    ("zero spacing", "preprocess", "segmentation", with_zooms(0.0, 0.9, 0.9),
     "segmentation.nii.gz has invalid spacing (0, 0.9, 0.9) in its header"),
    ("negative spacing", "preprocess", "imaging", with_zooms(-4.0, 0.9, 0.9),
     "imaging.nii.gz has invalid spacing (-4, 0.9, 0.9) in its header"),
    ("NaN spacing", "preprocess", "segmentation", with_zooms(np.nan, 0.9, 0.9),
     "segmentation.nii.gz has invalid spacing (nan, 0.9, 0.9) in its header"),
    ("zero spacing", "evaluate", "prediction", with_zooms(4.0, 0.0, 0.9),
     f"{PRED} has invalid spacing (4, 0, 0.9) in its header"),
    ("image and label shapes disagree", "preprocess", "imaging", one_slice_less,
     "image shape (12, 20, 23) differs from label shape (12, 20, 24)"),
    ("prediction and reference shapes disagree", "evaluate", "prediction", one_slice_less,
     "prediction shape (12, 20, 23) differs from the reference (12, 20, 24)"),
    ("affines disagree", "preprocess", "imaging", shifted,
     "image and label affines disagree (imaging.nii.gz vs segmentation.nii.gz, largest difference 10)"),
    ("affines disagree", "evaluate", "prediction", shifted,
     f"{PRED} has another affine than the reference segmentation.nii.gz"),
    ("float labels 0.5", "preprocess", "segmentation", half_label,
     "label map holds non-integer or non-finite values (e.g. 0.5 in 1 voxel(s))"),
    ("float labels 0.5", "evaluate", "prediction", half_label, "label map holds non-integer or non-finite values"),
    ("label 7 with kits19", "preprocess", "segmentation", label_seven,
     "label values [7] are not in the label scheme {0:0,1:1,2:2}"),
    ("label 7 with kits19", "evaluate", "prediction", label_seven,
     "label values [7] are not in the label scheme {0:0,1:1,2:2}"),
    ("empty label map", "preprocess", "segmentation", all_zero, "label map is empty (no kidney)"),
    ("empty reference label map", "evaluate", "segmentation", all_zero, "reference label map is empty (no kidney)"),
    ("empty prediction is scored, not an error", "evaluate", "prediction", all_zero, None),
    ("case folder missing from kits.json", "preprocess", "kits.json", edit_meta(drop=True),
     "not in the metadata file kits.json"),
    ("case folder missing from kits.json", "evaluate", "kits.json", edit_meta(drop=True),
     "not in the metadata file kits.json"),
    ("missing sex", "preprocess", "kits.json", edit_meta(gender=None), "missing gender (sex)"),
    ("unknown sex", "preprocess", "kits.json", edit_meta(gender="x"), "unknown sex value 'x' (expected male or female)"),
    ("unknown sex", "evaluate", "kits.json", edit_meta(gender="x"), "unknown sex value 'x' (expected male or female)"),
    ("missing age", "preprocess", "kits.json", edit_meta(age_at_nephrectomy=None), "missing age_at_nephrectomy"),
    ("missing age", "evaluate", "kits.json", edit_meta(age_at_nephrectomy=None), "missing age_at_nephrectomy"),
    ("non-numeric age", "preprocess", "kits.json", edit_meta(age_at_nephrectomy="sixty"),
     "age_at_nephrectomy is the text 'sixty'; expected a number"),
]


def break_victim(raw: Path, preds: Path, target: str, breaker) -> None:
    if target == "kits.json":
        breaker(raw)
    elif target == "prediction":
        breaker(preds / PRED)
    else:
        breaker(raw / VICTIM / f"{target}.nii.gz")


def rows_for(tool: str) -> list:
    return [pytest.param(*row, id=f"{row[0]} ({row[2]})") for row in PER_CASE if row[1] == tool]


@pytest.mark.parametrize("name, tool, target, breaker, fragment", rows_for("preprocess"))
def test_preprocess_names_the_bad_case_goes_on_and_keeps_the_cache(corpus, tmp_path, capsys, name, tool, target,
                                                                    breaker, fragment):
    raw, cache = copy_of(corpus, tmp_path, "raw", "cache")
    break_victim(raw, None, target, breaker)
    before = snapshot(cache)
    capsys.readouterr()
    code = preprocess.main(["run", "--raw", str(raw), "--out", str(cache), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert_failure_list(err, VICTIM, fragment)
    assert "preprocessed 1 case(s), kept 4 already done, 1 failed" in out
    # the other cases went on: the bystander is cached, the victim left nothing behind
    assert pd.read_csv(cache / "cases.csv")["case_id"].tolist() == CACHED + [BYSTANDER]
    assert_untouched(before, cache, except_for={"cases.csv"})
    new = set(snapshot(cache)) - set(before)
    assert new == {f"{BYSTANDER}.npy", f"{BYSTANDER}_seg.npy", f"{BYSTANDER}.json"}


@pytest.mark.parametrize("name, tool, target, breaker, fragment", rows_for("evaluate"))
def test_evaluate_pred_names_the_bad_case_and_scores_the_others(corpus, tmp_path, capsys, name, tool, target,
                                                                 breaker, fragment):
    raw, preds = copy_of(corpus, tmp_path, "raw", "preds")
    break_victim(raw, preds, target, breaker)
    before_raw, before_preds = snapshot(raw), snapshot(preds)
    capsys.readouterr()
    code = evaluate.main(["--pred", str(preds), "--gt", str(raw), "--group", "sex", *FAST_AUDIT])
    out, err = capsys.readouterr()
    if fragment is None:   # an empty prediction is a (bad) prediction: Dice 0, not an input error
        assert code == 0 and err == ""
        assert "scored 6 case(s), 0 failed" in out
        return
    assert code == 1
    assert_failure_list(err, VICTIM, fragment)
    assert "scored 5 case(s), 1 failed" in out
    assert_untouched(before_raw, raw)        # the audit only reads
    assert_untouched(before_preds, preds)


# ----------------------------------------------------------------------------- fatal bad inputs
# (name, what is written to kits.json, fragment of "error: .../kits.json: ...")
BAD_METADATA = [
    ("kits.json is not JSON", '[{"case_id": "case_00000", "gender": "male",', "kits.json: not valid JSON"),
    ("duplicate case ids", json.dumps([{"case_id": "case_00001"}, {"case_id": "case_00002"}, {"case_id": "case_00001"}]),
     "kits.json: duplicate case_id case_00001"),
    ("kits.json of the wrong shape", json.dumps({"case_00000": "male"}), "kits.json: expected a list of per-case objects"),
]


@pytest.mark.parametrize("name, text, fragment", BAD_METADATA, ids=[r[0] for r in BAD_METADATA])
def test_bad_metadata_file_stops_preprocessing_before_anything_is_written(corpus, tmp_path, capsys, name, text,
                                                                         fragment):
    raw, cache = copy_of(corpus, tmp_path, "raw", "cache")
    (raw / "kits.json").write_text(text)
    before = snapshot(cache)
    capsys.readouterr()
    assert preprocess.main(["run", "--raw", str(raw), "--out", str(cache), "--no-progress"]) == 2
    line = assert_one_error_line(capsys.readouterr().err, fragment)
    assert str(raw / "kits.json") in line
    assert_untouched(before, cache)
    assert set(snapshot(cache)) == set(before)


@pytest.mark.parametrize("name, text, fragment", BAD_METADATA[:2], ids=[r[0] for r in BAD_METADATA[:2]])
def test_bad_metadata_file_leaves_earlier_results_alone(corpus, tmp_path, capsys, name, text, fragment):
    raw, preds, audit = copy_of(corpus, tmp_path, "raw", "preds", "audit")
    (raw / "kits.json").write_text(text)
    before = snapshot(audit)
    capsys.readouterr()
    code = evaluate.main(["--pred", str(preds), "--gt", str(raw), "--out", str(audit), "--overwrite", *FAST_AUDIT])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, fragment)
    assert_untouched(before, audit)


def test_debug_shows_the_traceback(corpus, tmp_path, capsys):
    raw, preds = copy_of(corpus, tmp_path, "raw", "preds")
    (raw / "kits.json").write_text("{not json")
    for main, argv in ((preprocess.main, ["--debug", "run", "--raw", str(raw), "--out", str(tmp_path / "c")]),
                       (evaluate.main, ["--pred", str(preds), "--gt", str(raw), "--debug", "--no-progress"])):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
        assert "not valid JSON" in err.strip().splitlines()[-1]


def unwritable_parents(tmp_path) -> list[tuple[str, Path]]:
    """Folders nobody can create: under a regular file (for everyone) and under a read-only folder
    (not for root, whom chmod does not stop)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be\n")
    places = [("under a file", blocker)]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        places.append(("read-only", locked))
    return places


def test_unwritable_output_folders_are_one_line_errors(corpus, tmp_path, capsys):
    raw, preds = copy_of(corpus, tmp_path, "raw", "preds")
    for _, parent in unwritable_parents(tmp_path):
        capsys.readouterr()
        out = parent / "cache"
        assert preprocess.main(["run", "--raw", str(raw), "--out", str(out), "--no-progress"]) == 2
        assert str(out) in assert_one_error_line(capsys.readouterr().err, "cannot create the output folder")
        out = parent / "audit"
        assert evaluate.main(["--pred", str(preds), "--gt", str(raw), "--out", str(out), *FAST_AUDIT]) == 2
        assert str(out) in assert_one_error_line(capsys.readouterr().err, "cannot create the results folder")


# ----------------------------------------------------------------------------- splits and groups
def test_split_naming_a_case_that_does_not_exist(corpus, tmp_path):
    (cache,) = copy_of(corpus, tmp_path, "cache")
    split = json.loads((cache / "splits.json").read_text())
    split["test"].append("case_00099")
    (cache / "splits.json").write_text(json.dumps(split))
    with pytest.raises(CaseError) as caught:
        load_split(cache / "splits.json", known_cases=CACHED)
    assert str(caught.value) == f"{cache / 'splits.json'}: names cases that do not exist: case_00099"
    # train.py reads it through the same check, before any training
    before = snapshot(cache)
    with pytest.raises(CaseError, match="names cases that do not exist: case_00099"):
        train.main(train_args(corpus, tmp_path, "split", f"data.cache={cache}"))
    assert_untouched(before, cache)


def test_a_group_with_no_case_in_the_test_split_is_shown_and_said(corpus, capsys):
    capsys.readouterr()
    cases = "case_00000,case_00001,case_00002"  # ages 45, 52, 66: nobody >= 70
    assert evaluate.main(["--pred", str(corpus / "preds"), "--gt", str(corpus / "raw"), "--cases", cases,
                          "--group", "age", *FAST_AUDIT]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith((">=70", "all"))}
    assert rows == {">=70": "0", "all": "3"}  # the empty group stays in the table, with n 0
    assert "(no scored cases in >=70: SD, SER and ES-Dice are over the 3 group(s) present)" in out
    assert "Kruskal-Wallis: group(s) ['>=70'] have no 'mean' value and are left out" in out


# ----------------------------------------------------------------------------- config errors
def train_args(corpus, tmp_path, name, *sets):
    """A tiny run on the corpus cache (data.raw unset: the cache is read as it is)."""
    base = [f"data.cache={corpus / 'cache'}", f"train.out_dir={tmp_path / 'runs'}", "train.patch_size=[16,32,32]",
            "model.base_features=4", "model.max_features=16", "train.epochs=1", "train.batch_size=2", "train.steps_per_epoch=null",
            "train.workers=0", "eval.every=100", "train.image_slices=0", *sets]
    args = ["--config", str(ROOT / "configs" / "baseline_nnunet.yaml"), "--name", name, "--no-progress"]
    for s in base:
        args += ["--set", s]
    return args


CONFIG_ERRORS = [
    ("unknown key", ["train.epoch=2"], "unknown config key 'train.epoch'; valid keys in train: amp, augment,"),
    ("wrong type", ["train.epochs=two"], "config key 'train.epochs' expects int, got 'two'"),
    ("unknown model", ["model.name=resnet"], "unknown model.name 'resnet'; valid: attention_unet, nnunet, unet, vnet"),
    ("unknown method", ["fairness.method=balanced"],
     "unknown fairness.method 'balanced'; valid: none, resm, stratified, dro, dmoe, fairmeta"),
    ("moved key", ["sampler.name=resm"], "config key 'sampler.name' is now fairness.method (resm, stratified;"),
    ("moved fair-meta weight", ["fairness.beta=1.5"], "config key 'fairness.beta' is now fairness.fairmeta.cls_weight"),
    ("moved dMoE section", ["model.moe={router: shared}"], "config key 'model.moe' is now fairness.dmoe"),
    ("removed key", ["eval.criterion=mean_dice"], "config key 'eval.criterion' was removed (it was never read"),
    ("unknown loss", ["loss.name=focal"], "unknown loss.name 'focal'; valid: dice_ce"),
]


@pytest.mark.parametrize("name, sets, fragment", CONFIG_ERRORS, ids=[r[0] for r in CONFIG_ERRORS])
def test_config_errors_name_the_key_and_the_valid_values_before_any_folder_is_made(corpus, tmp_path, name, sets,
                                                                                   fragment):
    with pytest.raises(ConfigError) as caught:
        train.main(train_args(corpus, tmp_path, "cfg", *sets))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_a_config_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  patch_size: [16, 32\n  epochs: 2\n")
    with pytest.raises(ConfigError) as caught:
        train.main(["--config", str(bad)])
    assert str(caught.value) == f"{bad}: not valid YAML (expected ',' or ']', but got ':' at line 3, column 9)"


def test_a_batch_size_stratification_cannot_divide(corpus, tmp_path):
    with pytest.raises(ConfigError) as caught:
        train.main(train_args(corpus, tmp_path, "strat", "fairness.method=stratified", "fairness.attribute=sex",
                              "train.batch_size=3"))
    assert str(caught.value) == ("sampler 'stratified' by sex: stratified batches need a batch size divisible by "
                                 "the 2 groups (female, male); got train.batch_size=3")
    assert not (tmp_path / "runs" / "strat" / "last.pt").exists()


def test_a_patch_larger_than_every_case_trains_on_padded_cases(corpus, tmp_path, capsys):
    before = snapshot(corpus / "cache")
    assert train.main(train_args(corpus, tmp_path, "big_patch")) == 0
    out = capsys.readouterr().out
    assert ("note: patch (16, 32, 32) is larger than every training case (largest 12x9x10 per axis): "
            "cases are zero-padded") in out
    run = tmp_path / "runs" / "big_patch"
    assert (run / "last.pt").is_file() and len(pd.read_csv(run / "eval" / "per_case.csv")) == 1
    # one test case: one sex has no case, and the test table says so
    assert "(no scored cases in " in out and "SD, SER and ES-Dice are over the 1 group(s) present)" in out
    assert_untouched(before, corpus / "cache")


def test_an_output_folder_that_cannot_be_made(corpus, tmp_path):
    for kind, parent in unwritable_parents(tmp_path):
        out_dir = parent / "runs"
        with pytest.raises(ConfigError) as caught:
            train.main(train_args(corpus, tmp_path, "x", f"train.out_dir={out_dir}"))
        assert str(caught.value).startswith(f"cannot create the run folder {out_dir / 'x'} ("), kind


def test_train_cli_prints_one_line_and_the_traceback_only_with_debug(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x\n")
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "baseline_nnunet.yaml"),
           "--name", "x", "--set", f"train.out_dir={blocker / 'runs'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"error: cannot create the run folder {blocker / 'runs' / 'x'} (Not a directory); check train.out_dir"]
    debug = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: cannot create the run folder")
