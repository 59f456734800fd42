"""Grouping attributes: which group a case belongs to, for any metadata field.

Attribute specs (strings, as users write them in configs and on the command line):
    "sex"                    KiTS19's `gender` field: "male" / "female"
    "age"                    `age_at_nephrectomy` in the study's bins: [0,50) [50,60) [60,70) >=70
    "bmi"                    `body_mass_index` in WHO bins: [0,25) [25,30) >=30
    "age:40,60"              a numeric field with explicit bin edges (any field name works)
    "tumor_histologic_subtype"   any other field, taken as categorical
    "sex,age" or "sex×age"   an intersection; groups are named like "female×[50,60)"

Usage:
    attr = parse_attribute("sex,age")
    attr.group_of(meta)        # "male×>=70"
    attr.order                 # the natural order of the known groups, for tables
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

FIELDS = {"sex": "gender", "age": "age_at_nephrectomy", "bmi": "body_mass_index"}
DEFAULT_EDGES = {"age": (50.0, 60.0, 70.0), "bmi": (25.0, 30.0)}
SEXES = ("male", "female")


class GroupError(ValueError):
    """A case's metadata cannot be placed in a group (missing or unusable value)."""


def normalise_sex(value) -> str:
    """'male' / 'female' from the spellings datasets use; GroupError otherwise."""
    if value is None:
        raise GroupError(f"missing {FIELDS['sex']} (sex)")
    text = str(value).strip().lower()
    aliases = {"male": "male", "m": "male", "man": "male", "female": "female", "f": "female", "woman": "female"}
    if text not in aliases:
        raise GroupError(f"unknown sex value {value!r} (expected male or female)")
    return aliases[text]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Binning:
    """Half-open bins [lo, e1) [e1, e2) ... >=e_last; values below `low` are an error."""
    edges: tuple[float, ...]
    low: float = 0.0

    def __post_init__(self):
        if not self.edges or list(self.edges) != sorted(set(self.edges)) or self.edges[0] <= self.low:
            raise ValueError(f"bin edges must be strictly increasing and above {self.low}, got {self.edges}")

    @property
    def labels(self) -> list[str]:
        bounds = (self.low,) + tuple(self.edges)
        return [f"[{_fmt(a)},{_fmt(b)})" for a, b in zip(bounds, bounds[1:])] + [f">={_fmt(self.edges[-1])}"]

    def label_of(self, value: float) -> str:
        if value < self.low:
            raise GroupError(f"value {value:g} is below the lowest bin edge {self.low:g}")
        for label, edge in zip(self.labels, self.edges):
            if value < edge:
                return label
        return self.labels[-1]


# the values a patient's metadata can hold: beyond them a number is a unit error or a typo, and binned
# silently it would put the case in a group it is not in (age 650, BMI 2.5 written as a ratio)
PLAUSIBLE = {"age_at_nephrectomy": (0.0, 120.0), "body_mass_index": (10.0, 100.0), "bmi": (10.0, 100.0)}


def numeric_value(meta: dict, field: str) -> float:
    """meta[field] as a float: a JSON number (not text: "65" and full-width digits are refused), finite,
    and within PLAUSIBLE's range for the fields it knows; GroupError saying which otherwise."""
    value = meta.get(field)
    if value is None:
        raise GroupError(f"missing {field}")
    if isinstance(value, str):
        raise GroupError(f"{field} is the text {value[:20]!r}; expected a number (write 65, not \"65\")")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GroupError(f"non-numeric {field} {str(value)[:40]!r}")
    number = float(value)
    if not math.isfinite(number):
        raise GroupError(f"non-finite {field} {value!r}")
    low, high = PLAUSIBLE.get(field, (-math.inf, math.inf))
    if not low <= number <= high:
        raise GroupError(f"{field} {number:g} is outside the plausible range {low:g}-{high:g}")
    return number


@dataclass(frozen=True)
class Attribute:
    """One grouping attribute (or an intersection of several)."""
    name: str
    field: str | None = None            # metadata key, for a single attribute
    binning: Binning | None = None      # numeric fields are binned
    parts: tuple["Attribute", ...] = ()  # an intersection's members

    def group_of(self, meta: dict) -> str:
        if self.parts:
            return "×".join(p.group_of(meta) for p in self.parts)
        if self.field == FIELDS["sex"]:
            return normalise_sex(meta.get(self.field))
        if self.binning is not None:
            return self.binning.label_of(numeric_value(meta, self.field))
        value = meta.get(self.field)
        if value is None:
            raise GroupError(f"missing {self.field}")
        return str(value)

    @property
    def order(self) -> list[str] | None:
        """Known groups in natural order (None for free categorical fields: sort what is seen)."""
        if self.parts:
            orders = [p.order for p in self.parts]
            if any(o is None for o in orders):
                return None
            combos = [""]
            for o in orders:
                combos = [f"{c}×{g}" if c else g for c in combos for g in o]
            return combos
        if self.field == FIELDS["sex"]:
            return list(SEXES)
        if self.binning is not None:
            return self.binning.labels
        return None


SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


def parse_attribute(spec: str, age_edges=None, bmi_edges=None) -> Attribute:
    """Parse an attribute spec (see the module docstring); ValueError on an unusable spec."""
    spec = str(spec).strip()
    # ',' also separates bin edges, so it means an intersection only when no edges are given.
    separators = ("×", "*", "+") + (("," ,) if ":" not in spec else ())
    for sep in separators:
        pieces = [p for p in spec.split(sep) if p.strip()]
        if len(pieces) > 1:
            parts = tuple(parse_attribute(p, age_edges, bmi_edges) for p in pieces)
            return Attribute(name="×".join(p.name for p in parts), parts=parts)
    if not spec:
        raise ValueError("empty group attribute")
    name, _, edges_text = spec.partition(":")
    name = name.strip()
    if not SAFE_NAME.match(name) or ".." in name:   # it names files (groups_<name>.csv) and page anchors
        raise ValueError(f"group attribute {name[:40]!r} is not a metadata field name (letters, digits, _ . - only)")
    field = FIELDS.get(name, name)
    if edges_text:
        try:
            edges = tuple(float(e) for e in edges_text.split(",") if e.strip())
        except ValueError:
            raise ValueError(f"bin edges in {spec!r} must be numbers, like 'age:50,60,70'") from None
        return Attribute(name=name, field=field, binning=Binning(edges))
    if name == "sex":
        return Attribute(name="sex", field=field)
    if name in DEFAULT_EDGES:
        chosen = {"age": age_edges, "bmi": bmi_edges}[name]
        return Attribute(name=name, field=field, binning=Binning(tuple(chosen or DEFAULT_EDGES[name])))
    return Attribute(name=name, field=field)
