"""SLURM scripts for a --seeds / --sweep batch: one preprocessing job, then a job array with one
task per run (SPEC §6 "Clusters"); written by `train.py ... --slurm`, submitted only with --submit.

Into BATCH/slurm/ (BATCH = train.out_dir/NAME, the batch folder the runs fill):
    prepare.sh       `train.py ... --prepare-only`: the shared data once (synthesis if configured,
                     preprocessing, split; data/prepare.py, the code every run uses)
    train_array.sh   `#SBATCH --array=0-(N-1)`: task I runs `train.py ... --task I` (I =
                     $SLURM_ARRAY_TASK_ID), the I-th run of the batch as the batch would train it;
                     its header lists which task is which run
    submit.sh        sbatch prepare.sh, then sbatch --dependency=afterok:JOB train_array.sh
    logs/            prepare_<job>.out, train_<array job>_<task>.out (stdout and stderr)
Each script changes into the folder train.py was called from (the config's relative paths are
relative to it), sets PYTHONUNBUFFERED (log lines appear as they are printed) and runs the same
Python (its absolute path). `SLURM_ARRAY_TASK_ID=I bash train_array.sh` runs task I here.

`--slurm-opt KEY=VALUE` (or a bare KEY for a flag) sets `#SBATCH --KEY=VALUE`; KEY is sbatch's
long option name (partition, account, qos, time, mem, constraint, mail-type, ...), and one that
fairkits does not know is passed through as it is, for sbatch to check at submission. A few
keys are fairkits' own:
    gpus=N | gpus=TYPE:N   GPUs per run, written as --gres=gpu:[TYPE:]N (the form every SLURM
                           version takes); N > 1 runs the task under torchrun (DDP); 0: none
    cpus=N                 short for cpus-per-task
    parallel=K             at most K tasks at a time (--array=0-(N-1)%K)
    setup=COMMAND          a shell line run before Python (module load ..., source venv/bin/activate);
                           repeatable
    prep.KEY=VALUE         for the preprocessing job only
The resources (time, mem, cpus-per-task, gpus / gres, constraint, ...) and job-name are per
job: the array's apply to the array only, and the preprocessing job has its own defaults
(prep.KEY changes them); every other key (partition, account, qos, mail-type, ...) applies to both.
Defaults: the array job-name=fk-NAME, gpus=1, time=48:00:00, mem=64G, cpus-per-task = GPUs x
(train.workers + 1); the preprocessing job job-name=fk-prep-NAME, time=12:00:00, mem=32G,
cpus-per-task = data.preprocess_workers, no GPU.
Keys fairkits sets itself (array, dependency, output, error, chdir, ...) are refused.

Usage:
    scripts = write_scripts(folder=batch_dir / "slurm", batch="demo", runs=["demo/seed0", ...],
                            command=train_command(...), workdir=Path.cwd(), options=["partition=gpu"],
                            cfgs=[run.cfg for run in plan])
    print(scripts.describe())
    prep_job, array_job = submit(scripts)            # only on --submit
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from config import ConfigError
from data.atomic import write_text

OWNED = {"array": "one task per run", "dependency": "submit.sh / --submit wire it", "output": "logs/",
         "error": "logs/ (with stdout)", "chdir": "the scripts cd into the folder train.py was called from",
         "parsable": "submit.sh uses it", "wrap": "the scripts are the jobs", "wait": "submit.sh returns at once",
         "hold": "submit.sh wires the order"}
PER_JOB = {"job-name", "time", "mem", "mem-per-cpu", "mem-per-gpu", "cpus-per-task", "cpus-per-gpu", "gres", "gpus",
             "gpus-per-node", "gpus-per-task", "gpus-per-socket", "constraint", "nodes", "ntasks",
             "ntasks-per-node", "exclusive", "time-min"}
KEY = re.compile(r"^[a-z][a-z0-9-]+$")


@dataclass(frozen=True)
class JobOptions:
    array: dict          # #SBATCH options of the training array, in order ({key: value or None})
    prep: dict           # ... of the preprocessing job
    gpus: int            # GPUs per run: > 1 runs each task under torchrun
    parallel: int | None
    setup: list          # shell lines run before Python in both scripts


def _split(pair: str) -> tuple[str, str | None]:
    key, sep, value = pair.partition("=")
    key = key.strip().removeprefix("--")
    if sep and not value.strip():
        raise ConfigError(f"--slurm-opt {pair!r}: no value after '='")
    if "\n" in value:
        raise ConfigError(f"--slurm-opt {key}: a value cannot hold a line break")
    return key, (value.strip() if sep else None)


def _gpu_count(gres: str) -> int:
    """N of gpu:N or gpu:TYPE:N (1 when the form is another)."""
    parts = gres.split(",")[0].split(":")
    return int(parts[-1]) if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit() else 1


def _gres(gpus: str, pair: str) -> str | None:
    """gpus=N / TYPE:N as gres (None for 0)."""
    if not re.fullmatch(r"([A-Za-z0-9_.-]+:)?\d+", gpus):
        raise ConfigError(f"--slurm-opt {pair}: expected gpus=N or gpus=TYPE:N (e.g. 2 or a100:2)")
    return None if gpus.split(":")[-1] == "0" else f"gpu:{gpus}"


def parse_options(pairs, *, workers: int, preprocess_workers: int) -> JobOptions:
    """The --slurm-opt pairs over the defaults (see the module docstring)."""
    given = {"array": {"gres": "gpu:1"}, "prep": {}}
    setup, parallel = [], None
    for pair in pairs or []:
        key, value = _split(pair)
        job = "array"
        if key.startswith("prep."):
            key, job = key[len("prep."):], "prep"
        if not KEY.match(key):
            raise ConfigError(f"--slurm-opt {pair!r}: expected KEY=VALUE with sbatch's long option name as KEY "
                              "(partition=gpu, not p=gpu or -p gpu)")
        if key in OWNED:
            raise ConfigError(f"--slurm-opt {key}: set by fairkits ({OWNED[key]}); leave it out")
        if key in ("parallel", "setup") and job == "prep":
            raise ConfigError(f"--slurm-opt prep.{key}: {key} is not an option of the preprocessing job alone")
        if key in ("gpus", "parallel", "setup") and value is None:
            example = {"gpus": "2", "parallel": "4", "setup": "'module load cuda'"}[key]
            raise ConfigError(f"--slurm-opt {key}: give a value, e.g. {key}={example}")
        if key == "setup":
            setup.append(value)
        elif key == "parallel":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"--slurm-opt parallel={value}: expected a number of tasks >= 1")
            parallel = int(value)
        elif key == "gpus":
            given[job]["gres"] = _gres(value, pair)
        else:
            given[job]["cpus-per-task" if key == "cpus" else key] = value
    array = {k: v for k, v in given["array"].items() if not (k == "gres" and v is None)}
    n_gpus = _gpu_count(array["gres"]) if "gres" in array else 0
    array = {"time": "48:00:00", "mem": "64G", "cpus-per-task": str(max(1, n_gpus) * (workers + 1)), **array}
    shared = {k: v for k, v in array.items() if k not in PER_JOB}
    prep = {**shared, "time": "12:00:00", "mem": "32G", "cpus-per-task": str(max(1, preprocess_workers)),
            **given["prep"]}
    prep = {k: v for k, v in prep.items() if not (k == "gres" and v is None)}
    return JobOptions(array=array, prep=prep, gpus=n_gpus, parallel=parallel, setup=setup)


def train_command(*, python: str, entry: Path, config, sweep, seeds, name, sets, flags=()) -> list[str]:
    """train.py's command for the batch (without --task / --prepare-only), with absolute paths."""
    cmd = [python, str(Path(entry).resolve())]
    if sweep is not None:
        cmd += ["--sweep", str(Path(sweep).resolve())]
    elif config is not None:
        cmd += ["--config", str(Path(config).resolve())]
    if seeds:
        cmd += ["--seeds", *map(str, seeds)]
    if name:
        cmd += ["--name", name]
    for s in sets:
        cmd += ["--set", s]
    return cmd + list(flags)


def _torchrun(cmd: list[str], gpus: int) -> list[str]:
    """The same command under torchrun (PyTorch DDP), one process per GPU of the task."""
    return [cmd[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *cmd[1:]]


@dataclass(frozen=True)
class SlurmScripts:
    folder: Path
    batch: str
    runs: list
    prepare: Path
    array: Path
    submit: Path
    logs: Path
    compare_hint: str

    @property
    def array_range(self) -> str:
        return f"0-{len(self.runs) - 1}"

    def describe(self) -> str:
        """What was written and how to submit it (train.py prints this)."""
        return "\n".join([
            f"wrote the SLURM scripts of batch {self.batch} ({len(self.runs)} runs) into {self.folder}:",
            "  prepare.sh      the shared data once (synthesis, preprocessing, split): train.py --prepare-only",
            f"  train_array.sh  sbatch --array={self.array_range}: task I trains run I (train.py --task I)",
            "  submit.sh       sbatch prepare.sh, then train_array.sh with --dependency=afterok on it",
            f"submit:          bash {self.submit}   (or add --submit)",
            f"one task here:   SLURM_ARRAY_TASK_ID=0 bash {self.array}",
            f"logs:            {self.logs}/ (prepare_<job>.out, train_<array job>_<task>.out)",
            f"when it is done: python evaluate.py --compare {self.compare_hint}",
        ])


def _sbatch_lines(options: dict) -> list[str]:
    return [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in options.items()]


def _job_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _shell(cmd: list[str]) -> str:
    """The command quoted for bash: Python and the script on one line, then one option (with its
    values) per continued line; $SLURM_ARRAY_TASK_ID stays a variable."""
    head = next(i for i, token in enumerate(cmd) if token.endswith(".py")) + 1
    groups = [cmd[:head]]
    for token in cmd[head:]:
        if token.startswith("--"):
            groups.append([])
        groups[-1].append(token)
    return " \\\n    ".join(" ".join(map(_quote, group)) for group in groups)


def _quote(token: str) -> str:
    return '"$SLURM_ARRAY_TASK_ID"' if token == "$SLURM_ARRAY_TASK_ID" else shlex.quote(token)


def _preamble(workdir: Path, setup: list) -> list[str]:
    return ["set -euo pipefail", f"cd {shlex.quote(str(workdir))}",
            "export PYTHONUNBUFFERED=1   # log lines reach the log file as they are printed", *setup]


def render_prepare(*, batch: str, logs: Path, options: JobOptions, workdir: Path, command: list[str]) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# fairkits: the shared data of batch {batch}, prepared once (synthesis if configured, preprocessing,",
        "# split) before its training array, which submit.sh makes wait for this job (--dependency=afterok).",
        *_sbatch_lines({"job-name": _job_name(f"fk-prep-{batch}"), "output": f"{logs}/prepare_%j.out",
                        **options.prep}),
        *_preamble(workdir, options.setup), f"exec {_shell([*command, '--prepare-only'])}", ""])


def render_array(*, batch: str, runs: list, logs: Path, options: JobOptions, workdir: Path,
                 command: list[str]) -> str:
    n = len(runs)
    task = [*command, "--task", "$SLURM_ARRAY_TASK_ID"]
    if options.gpus > 1:
        task = _torchrun(task, options.gpus)
    width = len(str(n - 1))
    return "\n".join([
        "#!/bin/bash",
        f"# fairkits: batch {batch}, {n} runs, one array task each; the batch is",
        f"#   {shlex.join(command)}",
        "# Task I trains the batch's run I (train.py --task I): a finished run is kept, an interrupted one",
        "# resumes from its last.pt, so the array (or one task) can be submitted again after a time-out.",
        f"# Without SLURM: SLURM_ARRAY_TASK_ID=I bash {logs.parent / 'train_array.sh'}   (I in 0-{n - 1})",
        "# task  run",
        *[f"#  {i:>{width}}  {run}" for i, run in enumerate(runs)],
        *_sbatch_lines({"job-name": _job_name(f"fk-{batch}"),
                        "array": f"0-{n - 1}" + (f"%{options.parallel}" if options.parallel else ""),
                        "output": f"{logs}/train_%A_%a.out", **options.array}),
        f': "${{SLURM_ARRAY_TASK_ID:?is not set: run task I with SLURM_ARRAY_TASK_ID=I bash $0, I in 0-{n - 1}}}"',
        *_preamble(workdir, options.setup), f"exec {_shell(task)}", ""])


def render_submit(*, prepare: Path, array: Path, logs: Path, n: int) -> str:
    return "\n".join([
        "#!/bin/bash",
        "# Submits the preprocessing job, then the training array, which starts when that job has succeeded.",
        "set -euo pipefail",
        f"prep=$(sbatch --parsable {shlex.quote(str(prepare))})",
        'prep=${prep%%;*}   # --parsable prints JOBID[;CLUSTER]',
        f'array=$(sbatch --parsable --dependency=afterok:"$prep" {shlex.quote(str(array))})',
        'array=${array%%;*}',
        f'echo "submitted: preprocessing job $prep; training array $array (tasks 0-{n - 1}), after job $prep succeeds"',
        f'echo "logs: {logs}/prepare_$prep.out, {logs}/train_${{array}}_<task>.out"', ""])


def write_scripts(*, folder: Path, batch: str, runs: list, command: list[str], workdir: Path, options,
                  cfgs: list, sweep: bool = False) -> SlurmScripts:
    """Write prepare.sh, train_array.sh and submit.sh into `folder` (and make logs/); earlier
    scripts there are replaced (they are made from the command alone), logs are kept."""
    opts = parse_options(options, workers=max(c["train"]["workers"] for c in cfgs),
                         preprocess_workers=max(c["data"]["preprocess_workers"] for c in cfgs))
    folder, workdir = Path(folder).resolve(), Path(workdir).resolve()
    logs = folder / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {logs} ({exc.strerror or exc}); check train.out_dir") from None
    scripts = SlurmScripts(folder=folder, batch=batch, runs=list(runs), prepare=folder / "prepare.sh",
                           array=folder / "train_array.sh", submit=folder / "submit.sh", logs=logs,
                           compare_hint=f"{folder.parent}/*/" if sweep else str(folder.parent))
    texts = {scripts.prepare: render_prepare(batch=batch, logs=logs, options=opts, workdir=workdir, command=command),
             scripts.array: render_array(batch=batch, runs=runs, logs=logs, options=opts, workdir=workdir,
                                         command=command),
             scripts.submit: render_submit(prepare=scripts.prepare, array=scripts.array, logs=logs, n=len(runs))}
    for path, text in texts.items():
        write_text(path, text)
        os.chmod(path, 0o755)
    return scripts


def _sbatch(args: list[str]) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"sbatch {' '.join(args)} failed: {said[-1] if said else f'exit status {done.returncode}'}")
    return done.stdout.strip().split(";")[0]


def submit(scripts: SlurmScripts) -> tuple[str, str]:
    """sbatch the preprocessing job, then the array after it (afterok); (job id, array job id)."""
    if shutil.which("sbatch") is None:
        raise ConfigError(f"--submit: sbatch is not on PATH (not a SLURM login node?); the scripts are written: "
                          f"submit them there with bash {scripts.submit}")
    prep = _sbatch([str(scripts.prepare)])
    try:
        array = _sbatch([f"--dependency=afterok:{prep}", str(scripts.array)])
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the preprocessing job {prep} was submitted; scancel {prep} or submit "
                          f"the array by hand: sbatch --dependency=afterok:{prep} {scripts.array})") from None
    return prep, array
