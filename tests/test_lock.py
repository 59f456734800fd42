"""The preparation lock (data/lock.py): many processes on one empty cache prepare it once, as one
process would; a lock left by a dead process (or another host's without a heartbeat) is taken over."""
import json
import multiprocessing as mp
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from config import load_config
from data.lock import LOCK_NAME, FolderLock
from data.prepare import prepare_data
from tests.kits_fixtures import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
HOLD_S = 0.4


def tiny_synthetic(root: Path) -> dict:
    """The demo's data section on a 4-case synthetic cohort (synthesis, preprocessing, split)."""
    return load_config(ROOT / "configs" / "demo.yaml", [
        f"data.raw={root / 'raw'}", f"data.cache={root / 'cache'}", "data.synthesize_cases=4",
        "data.synthesize_shape=[24,48,48]", "data.test=1", "data.preprocess_workers=1",
        f"data.synthesize_bias={ROOT / 'configs' / 'bias' / 'poor_protocol_female.yaml'}"])["data"]


def prepare_in_child(data_cfg, barrier, results):
    """One of several processes starting on the same cache at the same moment."""
    import data.lock
    import data.prepare

    data.lock.POLL_S = 0.05
    real = data.prepare._prepare

    def held_a_while(*args, **kwargs):   # the holder keeps the lock long enough for every other to find it held
        time.sleep(HOLD_S)
        return real(*args, **kwargs)

    data.prepare._prepare = held_a_while
    lines = []
    barrier.wait()
    try:
        _, split = data.prepare.prepare_data(data_cfg, progress=False, log=lines.append)
        results.put(("ok", lines, split))
    except BaseException as exc:  # noqa: BLE001 - the parent reports whatever happened
        results.put(("failed", lines, repr(exc)))


def run_together(data_cfg, n: int) -> list:
    # forked from a server that imported this module once (as spawn would, without torch's threads
    # started): seconds instead of one full interpreter start per process
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=prepare_in_child, args=(data_cfg, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return outcomes


def files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(folder: Path, *, pid: int, host: str, token: str = "0123456789abcdef") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host, "token": token, "since": "2026-01-01 00:00:00"}))
    return path


@pytest.mark.parametrize("start", ["empty", "stale lock"])
def test_processes_preparing_one_cache_together_make_the_cache_one_process_makes(tmp_path, start):
    together, alone = tiny_synthetic(tmp_path / "together"), tiny_synthetic(tmp_path / "alone")
    if start == "stale lock":   # left by a process killed while preparing: one of them takes it over
        write_lock(Path(together["cache"]), pid=dead_pid(), host=socket.gethostname())
    n = 4 if start == "empty" else 3
    outcomes = run_together(together, n)
    assert [status for status, _, _ in outcomes] == ["ok"] * n, outcomes
    assert all(split == outcomes[0][2] for _, _, split in outcomes)
    logs = ["\n".join(lines) for _, lines, _ in outcomes]
    # exactly one process synthesised, preprocessed and split; every other waited, then found it done
    assert sum("synthesising 4 procedural cases" in log for log in logs) == 1
    assert sum("preprocessed 4 case(s), kept 0 already done, 0 failed" in log for log in logs) == 1
    assert sum("splits.json: train 3, val 0, test 1" in log for log in logs) == 1
    assert sum(f"waiting: {together['cache']} is being prepared by pid" in log for log in logs) == n - 1
    assert sum("took over the lock" in log for log in logs) == (1 if start == "stale lock" else 0)
    # ... and the result is byte for byte the cache (and synthetic cohort) of a single process
    _, split = prepare_data(alone, progress=False, log=lambda *a: None)
    assert split == outcomes[0][2]
    made, reference = files(Path(together["cache"])), files(Path(alone["cache"]))
    source = json.loads(made.pop("source.json")), json.loads(reference.pop("source.json"))
    assert source[0]["raw"] == together["raw"] and source[1]["raw"] == alone["raw"]   # the one path that differs
    assert sorted(made) == sorted(reference) and len(made) == 4 * 3 + 4   # no lock or temporary left
    assert made == reference
    assert files(Path(together["raw"])) == files(Path(alone["raw"]))


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    raw = write_tiny_cohort(tmp_path / "raw", n_cases=4, spacing=(3.22, 1.62, 1.62))
    pid = dead_pid()
    lock = write_lock(tmp_path / "cache", pid=pid, host=socket.gethostname())
    cfg = load_config(None, [f"data.raw={raw}", f"data.cache={tmp_path / 'cache'}", "data.test=1"])
    lines = []
    _, split = prepare_data(cfg["data"], progress=False, log=lines.append)
    assert lines[0] == (f"took over the lock {lock} of pid {pid} on {socket.gethostname()} "
                        "(since 2026-01-01 00:00:00): that process is not running")
    assert "preprocessed 4 case(s)" in lines[1] and len(split["test"]) == 1 and not lock.exists()


def test_a_live_lock_is_waited_for(tmp_path):
    lock = write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname())   # our parent: alive
    threading.Timer(0.3, lock.unlink).start()                                  # it finishes
    lines, start = [], time.monotonic()
    with FolderLock(tmp_path, log=lines.append, poll_s=0.02):
        waited = time.monotonic() - start
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert waited >= 0.3 and not lock.exists()
    assert lines == [f"waiting: {tmp_path} is being prepared by pid {os.getppid()} on {socket.gethostname()} "
                     "(since 2026-01-01 00:00:00); this process goes on when it is done"]


def test_another_hosts_lock_is_taken_over_when_its_heartbeat_stops(tmp_path):
    # an old lock from another host (its pid means nothing here): stale at first sight
    lock = write_lock(tmp_path, pid=1, host="node-elsewhere")
    os.utime(lock, (time.time() - 1000, time.time() - 1000))
    lines = []
    with FolderLock(tmp_path, log=lines.append, stale_s=600):
        pass
    assert len(lines) == 1 and lines[0].startswith(f"took over the lock {lock} of pid 1 on node-elsewhere")
    assert "its heartbeat stopped 1000 s ago (another host's lock is stale after 600 s without one)" in lines[0]
    # a fresh one with a heartbeat for 1 s: waited for while it beats, taken over 0.4 s after it stops
    lock = write_lock(tmp_path, pid=1, host="node-elsewhere")
    stop = time.monotonic() + 1.0

    def beat():
        while time.monotonic() < stop:
            os.utime(lock)
            time.sleep(0.05)

    threading.Thread(target=beat, daemon=True).start()
    lines, start = [], time.monotonic()
    with FolderLock(tmp_path, log=lines.append, poll_s=0.02, stale_s=0.4):
        waited = time.monotonic() - start
    assert 1.3 <= waited < 5, waited
    assert lines[0].startswith("waiting:") and lines[1].startswith(f"took over the lock {lock} of pid 1 on node-elsewhere")


def test_the_holder_beats_and_notices_when_its_lock_was_taken(tmp_path):
    lines = []
    held = FolderLock(tmp_path, log=lines.append, heartbeat_s=0.05)
    held.acquire()
    lock = tmp_path / LOCK_NAME
    first = lock.stat().st_mtime_ns
    time.sleep(0.3)
    assert lock.stat().st_mtime_ns > first      # the heartbeat moved it
    write_lock(tmp_path, pid=1, host="node-elsewhere", token="fedcba9876543210")   # someone took it over
    held.release()
    assert lines == [f"warning: the lock {lock} was taken over by pid 1 on node-elsewhere while this process held it"]
    assert json.loads(lock.read_text())["token"] == "fedcba9876543210"        # theirs is left alone
