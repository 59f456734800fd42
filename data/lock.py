"""One process at a time prepares a folder: a lock file that waiting processes respect, and that
the next one takes over when its holder died.

The tasks of a SLURM array start together on one shared cache; the first takes CACHE/.prepare.lock
and prepares (synthesis, preprocessing, split), the others wait, saying who holds it, and then
find everything done. The lock file holds JSON (pid, host, a random token, the start time) and
appears complete or not at all: it is written under a private name and hard-linked to the lock's
name, which fails when the name exists (atomic on local file systems and on NFS alike). While it
is held, a thread touches it every HEARTBEAT_S seconds (30).

A lock is stale, and taken over by a waiting process, when
  - it is this host's (same hostname) and its pid is not alive: a process that was killed;
  - it is another host's (whose pids cannot be checked from here) and its heartbeat has stopped:
    the file's mtime has not moved for STALE_S seconds (600) while this process watched it, or
    was already older than that when it first looked (which trusts the hosts' clocks to agree
    within minutes, as NTP keeps them on a cluster).
A live lock of this host is never taken over, however old: preprocessing the full cohort takes
hours. Taking over is serialised by a second lock file (LOCK.break, held for milliseconds): the
breaker reads the lock again under it and removes it only if it is still the stale one, so two
waiters never both take it over and a fresh lock is never removed. (Left alone: a process that
dies in those milliseconds leaves a stale LOCK.break, removed by the same rules after 60 s; and
a SLURM job suspended for longer than STALE_S loses its lock to another host's waiter.)

An audit's results folder is held the same way while it is written (`results_folder`, lock
.results.lock): a second audit into the same folder waits, then finds the first one's finished
results and is refused unless --overwrite; two audits never mix their files.

Usage:
    with FolderLock(cache_dir, log=print):      # creates cache_dir when missing
        ... synthesise, preprocess, split ...
    with results_folder(out_dir, overwrite=False, marker="per_case.csv"):
        ... write the tables, the marker last ...
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data.atomic import process_alive
from data.errors import CaseError

LOCK_NAME = ".prepare.lock"
RESULTS_LOCK_NAME = ".results.lock"
POLL_S = 2.0           # a waiting process looks again every POLL_S seconds
HEARTBEAT_S = 30.0     # the holder touches the lock file every HEARTBEAT_S seconds
STALE_S = 600.0        # another host's lock without a heartbeat for STALE_S seconds is stale
BREAK_STALE_S = 60.0   # the same for LOCK.break, which is held for milliseconds


@dataclass(frozen=True)
class LockInfo:
    pid: int | None
    host: str | None
    token: str | None
    since: str
    mtime: float

    def holder(self) -> str:
        return f"pid {self.pid} on {self.host}" if self.host else "an unknown process (unreadable lock file)"


def _read(path: Path) -> LockInfo | None:
    """The lock's content; None when it is gone."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return LockInfo(int(data["pid"]), str(data["host"]), str(data["token"]), str(data.get("since", "?")), mtime)
    except (ValueError, KeyError, TypeError):
        return LockInfo(None, None, None, "?", mtime)


def _create(path: Path, token: str) -> bool:
    """Make the lock file, complete, if it does not exist; whether this call made it."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "token": token,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    private = path.with_name(f"{path.name}.{token}")
    try:
        with open(private, "x") as fh:   # O_EXCL: never through a link planted at that name
            fh.write(json.dumps(record) + "\n")
        os.link(private, path)
        return True
    except (FileExistsError, FileNotFoundError):   # FileNotFoundError: the folder went (FolderLock.release)
        return False
    except OSError as exc:
        raise CaseError(str(path), f"cannot create the lock file ({exc.strerror or exc})") from None
    finally:
        private.unlink(missing_ok=True)


class FolderLock:
    """Hold FOLDER/.prepare.lock for the duration of a `with` block (see the module docstring)."""

    def __init__(self, folder, *, log=print, name: str = LOCK_NAME, poll_s: float | None = None,
                 heartbeat_s: float | None = None, stale_s: float | None = None, doing: str = "prepared"):
        self.folder, self.log, self.doing = Path(folder), log, doing
        self.path = self.folder / name
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._made_folder = False

    # -------------------------------------------------------------------------------- holding
    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        self._made_folder = not self.folder.exists()
        announced, watched = None, None   # watched: (token, mtime) and when this process first saw it
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CaseError(str(self.folder), f"cannot create the output folder ({exc.strerror or exc})") from None
            if _create(self.path, self.token):
                break
            info = _read(self.path)
            if info is None:
                continue                  # released between our attempt and the read: try again
            if watched is None or watched[0] != (info.token, info.mtime):
                watched = ((info.token, info.mtime), time.monotonic())
            why = self._stale(info, time.monotonic() - watched[1])
            if why:
                if self._break(info):
                    self.log(f"took over the lock {self.path} of {info.holder()} (since {info.since}): {why}")
                continue
            if announced != info.token:
                self.log(f"waiting: {self.folder} is being {self.doing} by {info.holder()} (since {info.since}); "
                         "this process goes on when it is done")
                announced = info.token
            time.sleep(self.poll_s)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="prepare-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        info = _read(self.path)
        if info is not None and info.token == self.token:
            self.path.unlink(missing_ok=True)
            if self._made_folder:         # a preparation that failed at once leaves no empty folder
                try:
                    self.folder.rmdir()
                except OSError:
                    pass                  # not empty: prepared, or the next process's lock is in it
        else:
            self.log(f"warning: the lock {self.path} was taken over by "
                     f"{info.holder() if info else 'another process'} while this process held it")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            info = _read(self.path)
            if info is None or info.token != self.token:
                return                    # taken over: release() says so
            try:
                os.utime(self.path)
            except OSError:
                pass                      # a missed beat: the next one may succeed

    # -------------------------------------------------------------------------------- staleness
    def _stale(self, info: LockInfo, watched_s: float, stale_s: float | None = None) -> str:
        """Why the lock is stale ('' when it is not)."""
        stale_s = self.stale_s if stale_s is None else stale_s
        if info.host == socket.gethostname():
            return "" if process_alive(info.pid) else "that process is not running"
        age = time.time() - info.mtime
        if watched_s >= stale_s or age >= stale_s:
            return (f"its heartbeat stopped {max(watched_s, age):.0f} s ago (another host's lock is "
                    f"stale after {stale_s:.0f} s without one)")
        return ""

    def _break(self, stale: LockInfo) -> bool:
        """Remove the stale lock, unless someone else already replaced it; whether this call did."""
        breaker = self.path.with_name(self.path.name + ".break")
        while not _create(breaker, self.token):
            info = _read(breaker)
            if info is not None and self._stale(info, 0.0, stale_s=BREAK_STALE_S):
                breaker.unlink(missing_ok=True)
            else:
                time.sleep(min(self.poll_s, 0.1))
        try:
            now = _read(self.path)
            if now is None or now.token != stale.token or now.mtime != stale.mtime:
                return False              # already taken over (or its holder came back to life)
            self.path.unlink(missing_ok=True)
            return True
        finally:
            breaker.unlink(missing_ok=True)


MANIFEST_NAME = ".fairkits-audit.json"    # the files one audit wrote into its folder
# what an audit writes into its folder, for the folders of earlier versions that had no manifest
AUDIT_OUTPUTS = ("groups_*.csv", "summary_*.csv", "report_*.md", "report_*.tex", "box_*.png", "per_case.csv",
                 "summary.json", "slices.csv", "slice_members.csv", "embeddings.csv", "compare*.csv", "compare*.md",
                 "compare*.tex", "tradeoff_*.png", "seeds_*.csv", "seeds_*.md", "seeds_*.tex", "recipe_*.csv",
                 "checkpoints.txt", "report.html", "events.out.tfevents.*")


@contextmanager
def results_folder(folder, *, overwrite: bool, marker: str, log=None):
    """Hold `folder` (created when missing) for one writer while the block writes its results;
    refused (CaseError) when it holds finished results (`marker`, written last) and not overwrite.
    A second writer waits for the first, then meets that check.

    One folder is one audit: before the block, what an earlier audit left there (its manifest's
    files, and the audit's own file names for a folder of an earlier version; not the predictions of
    --ckpt, which audit/checkpoints.py keeps or clears by their own record) is removed, whether it
    finished (with overwrite) or was killed, and so are temporaries of killed writers. The files the
    block writes are recorded (data/atomic.recording) and listed in MANIFEST_NAME at the end."""
    from data.atomic import recording, remove_stale_temporaries, write_text

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaseError(str(folder), f"cannot create the results folder ({exc.strerror or exc})") from None
    if log is None:
        log = lambda text: print(text, file=sys.stderr, flush=True)   # noqa: E731 - stdout holds the results
    with FolderLock(folder, log=log, name=RESULTS_LOCK_NAME, doing="written by another audit"):
        refuse_finished(folder, overwrite=overwrite, marker=marker)
        remove_stale_temporaries(folder)
        removed = clear_earlier_audit(folder)
        if removed:
            log(f"note: removed {removed} file(s) an earlier audit left in {folder}")
        with recording(folder) as written:
            yield folder
        write_text(folder / MANIFEST_NAME, json.dumps(sorted(written.written), indent=1) + "\n")


def clear_earlier_audit(folder: Path) -> int:
    """Remove the files an earlier audit wrote into `folder` (its manifest's, and AUDIT_OUTPUTS');
    regular files directly in the folder only (a link or a folder is left alone); their count."""
    from data.untrusted import read_json

    names = set()
    manifest = folder / MANIFEST_NAME
    if manifest.is_file() and not manifest.is_symlink():
        try:
            listed = read_json(manifest)
            names |= {n for n in listed if isinstance(n, str) and "/" not in n and not n.startswith(".")} \
                if isinstance(listed, list) else set()
        except CaseError:
            pass
    for pattern in AUDIT_OUTPUTS:
        names |= {p.name for p in folder.glob(pattern)}
    removed = 0
    for name in sorted(names):
        path = folder / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed += 1
    manifest.unlink(missing_ok=True)
    return removed


def refuse_finished(folder, *, overwrite: bool, marker: str) -> None:
    """CaseError when `folder` holds finished results and not overwrite (also worth asking before
    long work: results_folder asks again under the lock)."""
    if (Path(folder) / marker).exists() and not overwrite:
        raise CaseError(str(folder), f"holds results ({marker}); pass --overwrite to replace them or choose "
                                     "another --out")
