"""Per-case errors with a one-line message that names the case (or file) and the problem.

Usage:
    raise CaseError("case_00012", "label value 3 is not in the scheme {0, 1, 2}")
    str(err)  # -> "case_00012: label value 3 is not in the scheme {0, 1, 2}"

A file that cannot be written is a WriteError (a CaseError naming the path). A config that cannot
be used is a ConfigError (config.py raises it; it lives here so that what config.py imports, the
mitigations' samplers among them, can raise it too without importing config.py back).

Batch work catches CaseError per case, carries on with the others, and lists the failures at
the end (see `format_failures`). An entry script's main turns whatever reaches it into one line
on stderr and exit code 2 (`report_error`); the traceback only with --debug.
"""
from __future__ import annotations

import sys
import traceback

# what bad input raises and whose message says it all; anything else is named by its type
EXPECTED = (ValueError, KeyError, FileNotFoundError, FileExistsError)
MESSAGE_LIMIT = 400   # characters of one error line


class ConfigError(ValueError):
    """A config key, value or file that cannot be used; the message names the key."""


class CaseError(Exception):
    """A problem with one case's files or metadata; `where` is a case id or a file path."""

    def __init__(self, where: str, problem: str):
        # one line, always: messages quoting a library's error may hold line breaks
        problem = " ".join(part.strip() for part in str(problem).splitlines() if part.strip())
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def format_failures(failures: list[CaseError], what: str = "case") -> str:
    """A closing summary for batch work: one line per failed case."""
    if not failures:
        return ""
    lines = [f"{len(failures)} {what}(s) failed:"]
    lines += [f"  {f}" for f in failures]
    return "\n".join(lines)


class WriteError(CaseError):
    """A file could not be written (a full disk, a quota, a file size limit): the previous file,
    if there was one, is unchanged and the temporary is gone (data/atomic.py)."""

    def __init__(self, path, error: OSError):
        # numpy's partial writes carry no errno ("1080 requested and 468 written"): say what it means
        reason = error.strerror or f"{error}: the disk is full or a file size limit was reached"
        super().__init__(str(path), f"not written ({reason}); the previous file, if any, is unchanged")
        self.error = error


def error_line(exc: BaseException, expected: tuple = ()) -> str:
    """An exception as one line: its message (its type too where the message alone is not enough:
    not a CaseError, one of EXPECTED or of `expected`), shortened to MESSAGE_LIMIT characters."""
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and not isinstance(exc, CaseError):
        text = f"missing key {text}"
    if isinstance(exc, MemoryError):
        text = f"out of memory ({text or 'an input asks for more than this machine has'})"
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply to process"
    elif not isinstance(exc, (CaseError, *EXPECTED, *expected)):
        text = f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)"
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 1] + "…"


def report_error(exc: BaseException, *, debug: bool = False, expected: tuple = ()) -> int:
    """Print `error: ...` (one line, the traceback first with debug) and return the exit code, 2."""
    if debug:
        traceback.print_exception(exc)
    print(f"error: {error_line(exc, expected)}", file=sys.stderr, flush=True)
    return 2
