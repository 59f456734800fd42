"""Warm-up schedules of the mitigations, as a function of training progress (0 at the first step,
1 after the last), so they mean the same at any budget and resume exactly.

Why: at a short budget a mitigation that acts from the first step can stop the segmenter from
learning at all (the fair-meta classifier's loss dominates an untrained segmenter's; DRO's
within-group tail of an untrained model is its background-only patches). Warming up gives the
segmenter the plain loss first. A warm-up of 0 is the study's behaviour: the mitigation at full
strength from the first step.

Usage:
    ramp(progress=0.05, warmup=0.1)      # 0.5: halfway up a linear ramp over the first 10 %
    ramp(progress=0.05, warmup=0.0)      # 1.0: no warm-up (the study)
    started(progress=0.05, warmup=0.1)   # False: still on the plain loss
"""
from __future__ import annotations


def check_warmup(name: str, warmup) -> float:
    """The warm-up as a float in [0, 1), or a ValueError naming the config key."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0.0 <= warmup < 1.0:
        raise ValueError(f"{name} is a fraction of training in [0, 1), got {warmup!r}")
    return float(warmup)


def ramp(progress: float, warmup: float) -> float:
    """Linear from 0 at progress 0 to 1 at progress `warmup`, then 1 (1 throughout for warmup 0)."""
    if warmup <= 0.0:
        return 1.0
    return min(1.0, max(0.0, progress) / warmup)


def started(progress: float, warmup: float) -> bool:
    """Whether a mitigation switched on after a warm-up on the plain loss acts at this progress."""
    return progress >= warmup
