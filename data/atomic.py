"""Atomic file writes: the one way fairkits writes a result file.

A file is written under a temporary name beside its target (`.NAME.tmp<pid>.<random><suffix>`,
created with O_EXCL: a planted link is never followed), optionally
flushed to disk, then renamed over the target: a process killed at any moment leaves the previous
complete file or the new one, never a torn one. A write that fails (a full disk: ENOSPC, or any
OSError) removes its temporary, leaves the previous file as it was, and raises WriteError (a
CaseError naming the file and the error). Temporaries left by killed writers are removed by
`remove_stale_temporaries` (only those whose process is gone: a live writer's are kept).

Usage:
    atomic_write(path, lambda tmp: tmp.write_text(text))
    atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".npy")     # np.save keeps the name
    atomic_write(path, lambda tmp: torch.save(state, tmp), fsync=True)
    atomic_link(source, path)                         # a hard link, swapped in the same way
    remove_stale_temporaries(folder)                  # or pattern=".last.pt.tmp*"
    write_text(path, text); write_csv(frame, path, index=False); write_figure(path, fig)
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from data.errors import WriteError

_UMASK = os.umask(0)   # read once (os.umask only reads by setting); restored at once
os.umask(_UMASK)


def atomic_write(path, write: Callable[[Path], object], *, suffix: str = "", fsync: bool = False) -> Path:
    """Call write(tmp) on a temporary path beside `path`, then rename it to `path`.

    `suffix` ends the temporary name, for writers that choose a format by extension (".npy",
    ".nii.gz"); `fsync` flushes the file to disk before the rename (checkpoints: days of work).
    The temporary is created by this process, with O_EXCL under an unpredictable name (tempfile),
    so a link planted in a shared folder is never followed; before the rename it must still be the
    file this process created (same device and inode, not a link), or nothing is renamed.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp{os.getpid()}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp's 0600 would hide results from a shared folder's group
        made = os.fstat(fd)
        os.close(fd)
        write(tmp)
        now = os.lstat(tmp)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
            raise WriteError(path, OSError(errno.EPERM, f"its temporary {tmp.name} was replaced while being "
                                                        "written (a link planted in the folder?); nothing renamed"))
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        _record(path)
    except (Exception, KeyboardInterrupt) as exc:   # KeyboardInterrupt: also Ctrl-C / SIGTERM's Interrupted
        tmp.unlink(missing_ok=True)  # a writer that failed or was interrupted (not one killed) cleans up
        if isinstance(exc, OSError):  # ENOSPC, EDQUOT, EFBIG, EACCES...: one line naming the file
            raise WriteError(path, exc) from None
        raise
    return path


def atomic_link(src, path) -> Path:
    """`path` as a hard link to `src`, made under a fresh random name beside it (os.link never
    follows a link at its destination and fails if the name exists), then renamed over `path`.
    WriteError (its .error the OSError) where the file system refuses the link."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{secrets.token_hex(6)}")
    try:
        os.link(src, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from None
    return path


# --- what one audit wrote into its folder (data/lock.results_folder keeps the list as its manifest) -------

_RECORDINGS: list[tuple[Path, set]] = []


def _record(path: Path) -> None:
    if not _RECORDINGS:
        return
    real = Path(os.path.realpath(path))
    for root, written in _RECORDINGS:
        try:
            written.add(real.relative_to(root).as_posix())
        except ValueError:
            continue


class recording:
    """Within the block, the files atomic_write writes under `folder` (relative paths), in .written:

        with recording(out) as rec:
            write_csv(frame, out / "groups_sex.csv")
        rec.written   # {"groups_sex.csv"}
    """

    def __init__(self, folder):
        self.root = Path(os.path.realpath(folder))
        self.written: set[str] = set()

    def __enter__(self):
        _RECORDINGS.append((self.root, self.written))
        return self

    def __exit__(self, *exc):
        _RECORDINGS.remove((self.root, self.written))
        return False


def written_in(folder) -> set[str] | None:
    """The files written so far under `folder` by the recording that holds it (None without one):
    report.html is built from this run's files, never from a glob that would find an earlier run's."""
    real = Path(os.path.realpath(folder))
    for root, written in reversed(_RECORDINGS):
        if root == real:
            return set(written)
    return None


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def neutralise_cell(value):
    """A text cell a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage
    return: =HYPERLINK(...), @SUM(...), +cmd|...) gets a leading apostrophe, OWASP's rule for CSV
    injection; numbers, and text that reads as a plain number or a lone "-", are kept as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and value != "-" and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def neutralised(frame):
    """A copy of the frame whose text cells, index and column names are neutralise_cell'ed (one place:
    every CSV fairkits writes goes through write_csv)."""
    import pandas as pd

    text = lambda values: pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)  # noqa: E731
    out = frame.copy()
    for column in out.columns:
        if text(out[column].dtype):
            out[column] = out[column].map(neutralise_cell)
    out.columns = [neutralise_cell(c) for c in out.columns]
    if isinstance(out.index, pd.MultiIndex):
        out.index = out.index.set_levels([lvl.map(neutralise_cell) if text(lvl.dtype) else lvl
                                          for lvl in out.index.levels])
    elif text(out.index.dtype):
        out.index = out.index.map(neutralise_cell)
    return out


def write_csv(frame, path, *, index: bool = True) -> Path:
    """A pandas frame as CSV, text cells that a spreadsheet would run neutralised (neutralise_cell)."""
    safe = neutralised(frame)
    return atomic_write(path, lambda tmp: safe.to_csv(tmp, index=index))


def write_figure(path, fig, *, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def remove_stale_temporaries(folder, pattern: str = ".*.tmp*") -> int:
    """Delete temporaries in `folder` left by writers that were killed; returns how many."""
    removed = 0
    for tmp in Path(folder).glob(pattern):
        digits = re.match(r"\d+", tmp.name.split(".tmp", 1)[1])
        if digits and process_alive(int(digits.group())):
            continue  # another live process is writing it
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (a write that was interrupted) are stale too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
