"""Batches on a SLURM cluster: train.py --slurm writes the scripts, --task runs one run of the batch,
--prepare-only the shared data; the array's tasks run here too, and evaluate.py --compare reads the
batch folder they fill."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import evaluate
import train
from config import ConfigError
from tests.kits_fixtures import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
TARGET = (3.22, 1.62, 1.62)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    write_tiny_cohort(root / "raw", n_cases=8, shape=(24, 40, 48), spacing=TARGET)
    return root


def tiny_sets(root: Path) -> list[str]:
    sets = [f"data.raw={root / 'raw'}", f"data.cache={root / 'cache'}", f"train.out_dir={root / 'runs'}",
            "data.test=2", "train.patch_size=[16,32,32]", "model.base_features=4", "model.max_features=16",
            "train.epochs=1", "train.batch_size=2", "train.steps_per_epoch=null", "train.workers=0", "eval.every=100", "train.checkpoint_every=1",
            "train.image_slices=1"]
    return [arg for s in sets for arg in ("--set", s)]


def batch_args(root: Path, name: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "baseline_nnunet.yaml"), "--seeds", "0", "1", "--name", name,
            "--no-progress", *tiny_sets(root)]


def sweep_file(tmp_path: Path) -> Path:
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(f"config: {ROOT / 'configs' / 'baseline_nnunet.yaml'}\n"
                     "runs:\n  slow: {optim.lr: 0.001}\n  mid: {optim.lr: 0.003}\n  fast: {optim.lr: 0.01}\n")
    return sweep


def sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


# ----------------------------------------------------------------------------- the scripts
def test_slurm_writes_a_preprocessing_job_and_an_array_of_one_task_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "work"
    args = ["--sweep", str(sweep_file(tmp_path)), "--seeds", "0", "1", *tiny_sets(root),
            "--set", "data.preprocess_workers=3", "--set", "train.workers=3", "--slurm",
            "--slurm-opt", "partition=gpu", "gpus=a100:2", "time=1-00:00:00", "account=lab", "parallel=2",
            "mail-type=END", "exclusive", "prep.time=0:30:00", "prep.partition=cpu", "setup=module load cuda/12"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    folder = root / "runs" / "lr" / "slurm"
    logs = folder / "logs"
    array, prep, submit = ((folder / n).read_text() for n in ("train_array.sh", "prepare.sh", "submit.sh"))
    runs = [f"lr/{entry}/seed{seed}" for entry in ("slow", "mid", "fast") for seed in (0, 1)]
    # the array: 6 tasks, 2 at a time; two A100s per task (torchrun), 2 x (3 workers + 1) CPUs
    assert sbatch_lines(array) == [
        "#SBATCH --job-name=fk-lr", "#SBATCH --array=0-5%2", f"#SBATCH --output={logs}/train_%A_%a.out",
        "#SBATCH --time=1-00:00:00", "#SBATCH --mem=64G", "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:a100:2",
        "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --mail-type=END", "#SBATCH --exclusive"]
    assert [line[1:].split() for line in array.splitlines() if re.match(r"#\s+\d\s", line)] == \
        [[str(i), run] for i, run in enumerate(runs)]
    body = array[array.index(": \"${SLURM_ARRAY_TASK_ID"):]
    assert body.splitlines()[:5] == [
        ': "${SLURM_ARRAY_TASK_ID:?is not set: run task I with SLURM_ARRAY_TASK_ID=I bash $0, I in 0-5}"',
        "set -euo pipefail", f"cd {tmp_path}", "export PYTHONUNBUFFERED=1   # log lines reach the log file as they "
        "are printed", "module load cuda/12"]
    assert f"exec {sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2 {ROOT / 'train.py'} \\" in body
    assert f"    --sweep {tmp_path / 'lr.yaml'} \\\n    --seeds 0 1 \\\n" in body
    assert body.rstrip().endswith('--task "$SLURM_ARRAY_TASK_ID"')
    # the preprocessing job: the shared options, its own resources, no GPU, --prepare-only
    assert sbatch_lines(prep) == [
        "#SBATCH --job-name=fk-prep-lr", f"#SBATCH --output={logs}/prepare_%j.out", "#SBATCH --partition=cpu",
        "#SBATCH --account=lab", "#SBATCH --mail-type=END", "#SBATCH --time=0:30:00", "#SBATCH --mem=32G",
        "#SBATCH --cpus-per-task=3"]
    assert prep.rstrip().endswith("--set train.workers=3 \\\n    --prepare-only") and "torch.distributed" not in prep
    # submit.sh: the array waits for the preprocessing job to succeed
    assert f"prep=$(sbatch --parsable {folder / 'prepare.sh'})" in submit
    assert f'array=$(sbatch --parsable --dependency=afterok:"$prep" {folder / "train_array.sh"})' in submit
    assert logs.is_dir() and all(os.access(folder / n, os.X_OK) for n in ("train_array.sh", "prepare.sh", "submit.sh"))
    # printed: how to submit, run a task here, find the logs; nothing trained, nothing prepared
    assert f"submit:          bash {folder / 'submit.sh'}   (or add --submit)" in out
    assert f"one task here:   SLURM_ARRAY_TASK_ID=0 bash {folder / 'train_array.sh'}" in out
    assert f"when it is done: python evaluate.py --compare {root / 'runs' / 'lr'}/*/" in out
    assert sorted(p.name for p in (root / "runs" / "lr").iterdir()) == ["slurm"] and not (root / "raw").exists()


def test_one_gpu_is_the_default_and_bad_options_are_one_line_errors(cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(batch_args(cohort, "defaults") + ["--slurm"]) == 0
    array = (cohort / "runs" / "defaults" / "slurm" / "train_array.sh").read_text()
    assert sbatch_lines(array)[1:] == [
        "#SBATCH --array=0-1", f"#SBATCH --output={cohort / 'runs' / 'defaults' / 'slurm' / 'logs'}/train_%A_%a.out",
        "#SBATCH --time=48:00:00", "#SBATCH --mem=64G", "#SBATCH --cpus-per-task=1", "#SBATCH --gres=gpu:1"]
    assert "torch.distributed" not in array
    assert train.main(batch_args(cohort, "named") + ["--slurm", "--slurm-opt", "job-name=mine", "gpus=0"]) == 0
    folder = cohort / "runs" / "named" / "slurm"
    assert sbatch_lines((folder / "train_array.sh").read_text())[0] == "#SBATCH --job-name=mine"
    assert sbatch_lines((folder / "prepare.sh").read_text())[0] == "#SBATCH --job-name=fk-prep-named"
    assert not any("gres" in line for line in sbatch_lines((folder / "train_array.sh").read_text()))
    cases = {"array=0-3": "--slurm-opt array: set by fairkits (one task per run); leave it out",
             "output=x.log": "--slurm-opt output: set by fairkits (logs/); leave it out",
             "p=gpu": "expected KEY=VALUE with sbatch's long option name as KEY (partition=gpu, not p=gpu or -p gpu)",
             "gpus=two": "expected gpus=N or gpus=TYPE:N (e.g. 2 or a100:2)",
             "parallel=0": "--slurm-opt parallel=0: expected a number of tasks >= 1",
             "prep.parallel=2": "--slurm-opt prep.parallel: parallel is not an option of the preprocessing job alone",
             "time=": "--slurm-opt 'time=': no value after '='"}
    for option, message in cases.items():
        with pytest.raises(ConfigError) as err:
            train.main(batch_args(cohort, "bad") + ["--slurm", "--slurm-opt", option])
        assert message in str(err.value) and "\n" not in str(err.value)
    for flags, message in ((["--submit"], "--submit goes with --slurm"),
                           (["--slurm-opt", "time=1:00:00"], "--slurm-opt goes with --slurm"),
                           (["--slurm", "--task", "0"], "--slurm writes the scripts that run --prepare-only and --task")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            train.main(batch_args(cohort, "bad") + flags)
    with pytest.raises(ConfigError, match=re.escape("--task goes with a batch: add --seeds S... (e.g. --seeds 0)")):
        train.main(["--config", str(ROOT / "configs" / "baseline_nnunet.yaml"), "--task", "0"])


def fake_sbatch(bin_dir: Path, calls: Path) -> None:
    """An sbatch that records its arguments and answers job ids 101, then 102 (with a cluster name)."""
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f'#!/bin/bash\necho "$@" >> {calls}\nn=$(wc -l < {calls})\n'
                      'if [ "$n" = 1 ]; then echo 101; else echo "102;cluster"; fi\n')
    script.chmod(0o755)


def test_submit_calls_sbatch_in_order_and_says_so_when_it_is_missing(cohort, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    folder = cohort / "runs" / "sub" / "slurm"
    with pytest.raises(ConfigError) as err:
        train.main(batch_args(cohort, "sub") + ["--slurm", "--submit"])
    assert str(err.value) == (f"--submit: sbatch is not on PATH (not a SLURM login node?); the scripts are written: "
                              f"submit them there with bash {folder / 'submit.sh'}")
    assert (folder / "train_array.sh").is_file()
    calls = tmp_path / "calls.txt"
    fake_sbatch(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    capsys.readouterr()
    assert train.main(batch_args(cohort, "sub") + ["--slurm", "--submit"]) == 0
    assert calls.read_text().splitlines() == [f"--parsable {folder / 'prepare.sh'}",
                                              f"--parsable --dependency=afterok:101 {folder / 'train_array.sh'}"]
    assert (f"submitted: preprocessing job 101; training array 102 (tasks 0-1), after job 101 succeeds; "
            f"logs in {folder / 'logs'}") in capsys.readouterr().out
    # submit.sh does the same
    calls.unlink()
    done = subprocess.run(["bash", str(folder / "submit.sh")], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines()[1] == f"--parsable --dependency=afterok:101 {folder / 'train_array.sh'}"
    assert done.stdout.splitlines()[0] == ("submitted: preprocessing job 101; training array 102 (tasks 0-1), "
                                           "after job 101 succeeds")


# ----------------------------------------------------------------------------- --task and the batch folder
def test_task_trains_one_run_of_the_batch_as_the_batch_would_and_compare_reads_the_folder(cohort, tmp_path, capsys):
    args = batch_args(cohort, "tasks")
    batch = cohort / "runs" / "tasks"
    with pytest.raises(ConfigError, match=r"^--task 2 is out of range: this batch has 2 run\(s\), tasks 0-1$"):
        train.main(args + ["--task", "2"])
    assert train.main(args + ["--task", "1"]) == 0
    assert "task 1 of 2 in tasks: 0 finished, 1 to train\n\n=== run 1/1: tasks/seed1\n" in capsys.readouterr().out
    assert sorted(p.name for p in batch.iterdir()) == ["seed1"]
    ckpt = torch.load(batch / "seed1" / "last.pt", weights_only=False)
    assert ckpt["config"]["train"]["seed"] == 1 and ckpt["config"]["train"]["name"] is None
    # the same task again: kept; interrupted before its tables: resumed, like the batch would
    assert train.main(args + ["--task", "1"]) == 0
    assert "task 1 of 2 in tasks: 1 finished, 0 to train (kept: tasks/seed1)" in capsys.readouterr().out
    (batch / "seed1" / "eval" / "per_case.csv").unlink()
    assert train.main(args + ["--task", "1"]) == 0
    assert "=== run 1/1: tasks/seed1 (resuming)" in capsys.readouterr().out
    assert train.main(args + ["--task", "0"]) == 0
    capsys.readouterr()
    # the batch command finds both runs finished: --task made exactly the batch's runs
    assert train.main(args) == 0
    assert "2 runs in tasks: 2 finished, 0 to train (kept: tasks/seed0, tasks/seed1)" in capsys.readouterr().out
    seeds = [torch.load(batch / f"seed{s}" / "last.pt", weights_only=False)["config"]["train"]["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
    # evaluate.py --compare reads the batch folder the tasks filled: one method over 2 seeds
    assert evaluate.main(["--compare", str(batch), "--group", "sex", "--source", "train",
                          "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv", index_col=0)
    per_seed = [100 * pd.read_csv(batch / f"seed{s}" / "eval" / "per_case.csv")["mean"].mean() for s in (0, 1)]
    assert list(table.index) == ["tasks"] and table.loc["tasks", "seeds"] == 2
    assert table.loc["tasks", "mean"] == pytest.approx(sum(per_seed) / 2)


def test_task_of_a_sweep_is_its_entry_and_seed_in_the_files_order(cohort, tmp_path, capsys):
    args = ["--sweep", str(sweep_file(tmp_path)), "--name", "swept", "--no-progress", *tiny_sets(cohort)]
    assert train.main(args + ["--task", "1"]) == 0
    assert "task 1 of 3 in swept: 0 finished, 1 to train\n\n=== run 1/1: swept/mid\n" in capsys.readouterr().out
    assert [p.name for p in (cohort / "runs" / "swept").iterdir()] == ["mid"]
    assert torch.load(cohort / "runs" / "swept" / "mid" / "last.pt", weights_only=False)["config"]["optim"]["lr"] == 0.003
    with pytest.raises(ConfigError, match=r"^--task -1 is out of range: this batch has 3 run\(s\), tasks 0-2$"):
        train.main(args + ["--task", "-1"])


def test_the_array_script_runs_its_tasks_here_after_the_preprocessing_script(tmp_path):
    """prepare.sh, then task 1 of train_array.sh, as SLURM would run them (stdout to a file: plain
    progress lines, no carriage returns), on a fresh cohort and cache."""
    root = tmp_path / "w"
    write_tiny_cohort(root / "raw", n_cases=8, shape=(24, 40, 48), spacing=TARGET)
    args = ["--config", str(ROOT / "configs" / "baseline_nnunet.yaml"), "--seeds", "0", "1", "--name", "arr",
            *tiny_sets(root)]
    assert train.main(args + ["--slurm"]) == 0
    folder = root / "runs" / "arr" / "slurm"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    log = tmp_path / "prepare.out"
    with open(log, "w") as fh:
        assert subprocess.run(["bash", str(folder / "prepare.sh")], stdout=fh, stderr=subprocess.STDOUT,
                              env=env).returncode == 0
    text = log.read_text()
    assert "\r" not in text and "preprocess: 8/8 cases (100 %) in" in text
    assert text.rstrip().endswith(f"data ready in {root / 'cache'}: 6 train, 0 validation, 2 test cases")
    done = subprocess.run(["bash", str(folder / "train_array.sh")], capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "SLURM_ARRAY_TASK_ID: is not set: run task I with SLURM_ARRAY_TASK_ID=I" in done.stderr
    done = subprocess.run(["bash", str(folder / "train_array.sh")], capture_output=True, text=True,
                          env={**env, "SLURM_ARRAY_TASK_ID": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("task 1 of 2 in arr: 0 finished, 1 to train\n\n=== run 1/1: arr/seed1\n")
    assert "\r" not in done.stdout + done.stderr and "preprocess" not in done.stdout + done.stderr   # found it ready
    assert (root / "runs" / "arr" / "seed1" / "eval" / "per_case.csv").is_file()
    assert not (root / "runs" / "arr" / "seed0").exists()
