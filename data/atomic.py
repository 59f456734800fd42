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


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(frame, path, *, index: bool = True) -> Path:
    """A pandas frame as CSV."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=index))


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
