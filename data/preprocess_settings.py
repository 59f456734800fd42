"""The preprocessing's settings (PreprocessSettings): every value of data/preprocessing.py's order,
with the study's defaults, checked on construction.

Its own module so that the cache reader (data/cache.py, which returns the settings a cache was
made with) and the preprocessing (which writes caches) both import it without importing each other.

Usage:
    settings = PreprocessSettings(target_spacing=(6.44, 3.24, 3.24))
    PreprocessSettings.from_dict(saved)      # ValueError naming an unknown or ill-typed setting
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from data.labels import LabelScheme
from data.untrusted import short


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"preprocessing setting {name} is a finite number, got {short(value)}")
    return float(value)


def _numbers(name: str, value) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"preprocessing setting {name} is a list of numbers, got {short(value)}")
    return tuple(_number(name, v) for v in value)


@dataclass
class PreprocessSettings:
    """Every value of the preprocessing, with the study's defaults."""
    target_spacing: tuple[float, float, float] = (3.22, 1.62, 1.62)  # mm, (z, y, x)
    clip: tuple[float, float] = (-79.0, 304.0)                        # HU
    mean: float = 101.0
    std: float = 76.9
    anisotropy_threshold: float = 3.0
    image_order: int = 3          # cubic in-plane (and along z when isotropic)
    image_order_z: int = 0        # nearest along the separate axis
    label_order: int = 1          # per-class linear, then >= 0.5
    label_order_z: int = 0
    body_threshold_hu: float = -500.0
    samples_per_class: int = 10000
    min_class_coverage: float = 0.01   # but at least this fraction of each class's voxels
    label_scheme: str = "kits19"
    age_edges: tuple[float, ...] = (50.0, 60.0, 70.0)
    bmi_edges: tuple[float, ...] = (25.0, 30.0)
    seed: int = 0                 # for the class-location sample

    def __post_init__(self):
        for name in ("target_spacing", "clip", "age_edges", "bmi_edges"):
            setattr(self, name, _numbers(name, getattr(self, name)))
        for name in ("mean", "std", "anisotropy_threshold", "body_threshold_hu", "min_class_coverage"):
            setattr(self, name, _number(name, getattr(self, name)))
        for name in ("image_order", "image_order_z", "label_order", "label_order_z", "samples_per_class", "seed"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"preprocessing setting {name} is a whole number, got {short(getattr(self, name))}")
        if not isinstance(self.label_scheme, str):
            raise ValueError(f"preprocessing setting label_scheme is a name, got {short(self.label_scheme)}")
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"target_spacing must be three positive numbers (z, y, x), got {self.target_spacing}")
        if len(self.clip) != 2 or self.clip[0] >= self.clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {self.clip}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        for name in ("image_order", "image_order_z", "label_order", "label_order_z"):
            if getattr(self, name) not in (0, 1, 3):
                raise ValueError(f"{name} must be 0, 1 or 3, got {getattr(self, name)}")
        if self.label_order == 3:
            raise ValueError("label_order 3 is not allowed: labels are never resampled with cubic")
        LabelScheme.parse(self.label_scheme)

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessSettings":
        if not isinstance(values, dict):
            raise ValueError(f"preprocessing settings are a mapping of name to value, got {short(values)}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown preprocessing setting(s) {unknown}; valid: {sorted(valid)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
