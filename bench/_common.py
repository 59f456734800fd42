"""Helpers every benchmark script shares: CPU accounting, contention, child processes, verdicts.

    machine_busy_seconds()   CPU seconds all processes used since boot (/proc/stat)
    cpu_seconds()            this process's user + system CPU seconds
    loadavg()                "1.02 0.98 0.75"
    verdict(ok)              "PASS" / "FAIL"
    emit(result)             a child's one result line (RESULT_TAG + JSON) for run_step to read
    thread_env(n)            os.environ with the BLAS/OpenMP thread counts set to n
    run_step(cmd, env, step) run a child benchmark step, echo its output, return its result dict
                             with "other_processes_cores": other processes' CPU use meanwhile
    write_json(path, figs)   the figures, for --json
    run_logged(cmd, log)     run a project command from the repository root, its output appended to
                             a log file; exit with one line naming the command and the log on failure

Imported by the scripts in bench/ (run as `python bench/X.py`, so this folder is on sys.path).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULT_TAG = "BENCH_RESULT "
BUSY_WARN_CORES = 0.25  # other processes' average CPU use above which the timings are flagged


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine has used since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_step(cmd: list[str], env: dict, step: str) -> dict:
    """Run one benchmark step in its own process; its RESULT_TAG line is the result."""
    # Other processes' CPU use while the child ran = machine-wide busy time - the child's - ours.
    busy0, kids0, self0 = machine_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    wall0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    wall = time.perf_counter() - wall0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    others = max(0.0, machine_busy_seconds() - busy0 - child_cpu - (time.process_time() - self0))
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
        else:
            print(line)
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"error: step {step} failed (exit {proc.returncode}); see its output above")
    result["other_processes_cores"] = others / wall if wall > 0 else 0.0
    return result


def write_json(path: Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures -> {path}")


def run_logged(cmd: list, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        done = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"error: failed (exit {done.returncode}): {' '.join(map(str, cmd))}; see {log}")
