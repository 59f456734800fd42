"""Command-line values, range-checked where they are parsed: argparse types for the entry scripts.

A value out of range is refused by argparse in one line (`error: argument --cases: ...`) before
any work starts, rather than deep inside it as a traceback.

Usage:
    parser.add_argument("--cases", type=whole(minimum=1))
    parser.add_argument("--n-perm", type=whole(minimum=100))
    parser.add_argument("--shape", type=grid(minimum=4))          # z,y,x (or zxyxx), voxels bounded
    parser.add_argument("--clip", type=numbers(2))                 # finite numbers
    parser.add_argument("--overlap", type=number(low=0, high=1, open_high=True))
    parser.add_argument("--test", type=amount)                     # a count >= 1 or a fraction in [0, 1)
"""
from __future__ import annotations

import argparse
import math

from data.untrusted import max_voxels

MAX_AXIS = 4096   # voxels along one axis of a synthetic grid (KiTS19's largest is 1059)


def whole(*, minimum: int | None = None, maximum: int | None = None):
    """A whole number within [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def number(*, low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False):
    """A finite number within [low, high] (or with an open end: (low, ...  ..., high))."""
    def parse(text: str) -> float:
        value = _finite(text)
        if low is not None and (value < low or (open_low and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'above' if open_low else 'at least'} {low:g}, got {text!r}")
        if high is not None and (value > high or (open_high and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'below' if open_high else 'at most'} {high:g}, got {text!r}")
        return value
    return parse


def numbers(n: int | None = None, *, positive: bool = False):
    """Comma-separated finite numbers (n of them, when given; each > 0 with positive)."""
    def parse(text: str) -> tuple[float, ...]:
        values = tuple(_finite(v) for v in text.replace("x", ",").split(",") if v.strip())
        if n is not None and len(values) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
        if positive and any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
        return values
    return parse


def grid(*, minimum: int = 1):
    """z,y,x voxel counts: each in [minimum, MAX_AXIS], their product within the voxel limit."""
    axis = whole(minimum=minimum, maximum=MAX_AXIS)

    def parse(text: str) -> tuple[int, int, int]:
        parts = [p for p in text.replace("x", ",").split(",")]
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected z,y,x, got {text!r}")
        values = tuple(axis(p) for p in parts)
        if math.prod(values) > max_voxels():
            raise argparse.ArgumentTypeError(f"{text} is {math.prod(values):,} voxels, above the limit of "
                                             f"{max_voxels():,} ($FAIRKITS_MAX_VOXELS)")
        return values
    return parse


def amount(text: str) -> float:
    """A count of cases (a whole number >= 1) or a fraction in [0, 1)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    if value >= 1:
        if value != int(value):
            raise argparse.ArgumentTypeError(f"a count is a whole number (a fraction is below 1), got {text!r}")
        return int(value)
    return value
