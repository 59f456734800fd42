"""Progress of a loop over cases: a tqdm bar on a terminal, plain periodic lines anywhere else.

A SLURM log (any file or pipe) is not a terminal: tqdm's carriage-return redraws would fill it
with noise, so there a loop prints one plain line each time it passes another tenth of its
work, or when `every_s` seconds (60) have gone by since the last line, whichever comes first:

    preprocess: 3/10 cases (30 %), 0:12 elapsed, ~0:28 left (case_00002)
    preprocess: 10/10 cases (100 %) in 0:40

This module is the one place that decides; every progress display in fairkits (synthesis,
preprocessing, evaluation) goes through `track`. The decision looks at the stream the
display writes to (stderr, like tqdm's): a terminal gets the bar.

Usage:
    for case in track(cases, desc="evaluate", enabled=not args.no_progress):
        ...
    bar = track(total=len(todo), desc="preprocess")
    bar.update(1); bar.set_postfix_str(case_id); bar.close()
"""
from __future__ import annotations

import sys
import time


def track(iterable=None, *, total: int | None = None, desc: str, unit: str = "case", enabled: bool = True,
             stream=None, every_s: float = 60.0):
    """A tqdm bar when `stream` (default stderr) is a terminal, else a PlainProgress; a silent one
    when not enabled. Both iterate over `iterable` and have update / set_postfix_str / close."""
    stream = stream if stream is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and _is_terminal(stream):
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, stream=stream, every_s=every_s,
                         enabled=enabled)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    """1:02:03 or 2:03."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """Whole lines, each ending in a newline, never a carriage return."""

    def __init__(self, iterable=None, *, total: int | None, desc: str, unit: str, stream, every_s: float,
                 enabled: bool = True, clock=time.monotonic):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream, self.every_s, self.enabled, self.clock = stream, every_s, enabled, clock
        self.n, self.postfix = 0, ""
        self.start = self.last_line = clock()
        self.last_tenth, self.printed_n, self.closed = 0, 0, False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = str(text)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        tenth = 10 * self.n // self.total if self.total else 0
        if tenth > self.last_tenth or now - self.last_line >= self.every_s:
            self._line(now)
            self.last_tenth = tenth

    def close(self) -> None:
        if not self.closed and self.n != self.printed_n:
            self._line(self.clock(), final=True)
        self.closed = True

    def _line(self, now: float, final: bool = False) -> None:
        self.last_line, self.printed_n = now, self.n
        if not self.enabled or (self.total == 0):
            return
        elapsed = now - self.start
        unit = self.unit if self.n == 1 and not self.total else f"{self.unit}s"
        count = f"{self.n}/{self.total} {unit} ({100 * self.n // self.total} %)" if self.total else f"{self.n} {unit}"
        if final or (self.total and self.n >= self.total):
            timing = f" in {_clock(elapsed)}"
        elif self.total and self.n:
            timing = f", {_clock(elapsed)} elapsed, ~{_clock(elapsed * (self.total - self.n) / self.n)} left"
        else:
            timing = f", {_clock(elapsed)} elapsed"
        postfix = f" ({self.postfix})" if self.postfix and not (self.total and self.n >= self.total) else ""
        print(f"{self.desc}: {count}{timing}{postfix}", file=self.stream, flush=True)
