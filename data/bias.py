"""Known-bias cohorts (SPEC §4): the bias specification, its validation, and what each case gets.

A bias file is YAML: grouping attribute -> group -> mechanisms. Attributes are those of
data/groups.py (`sex`, `age`, `bmi`, `age:40,60`, any metadata field, intersections such as
`sex,age` with groups named like `female×>=70`); each case's group comes from its metadata.

    # a bias file (the presets are in configs/bias/)
    sex:
      female: {noise: 2.5, hidden: {fraction: 0.3, noise: 3, slice_mm: 20}}
    age:
      ">=70": {slice_mm: 20}
      "[0,50)": {tumor_scale: 0.4, share: 0.15}
    "sex,age":
      "female×>=70": {contrast: 0.5}

An empty file (or `{}`) is the null cohort. Mechanisms (exact definitions: docs/bias_cohorts.md, "Known-bias
cohorts"; what the generators do with them: data/synthetic.py):

    noise        number > 0     image noise std x factor
    slice_mm     number > 0     z spacing (and slice-profile FWHM) of the acquired volume, mm
    contrast     number >= 0    enhancement of kidney parenchyma and tumor above 40 HU x factor
    blur         number > 0     extra Gaussian point spread, FWHM in mm (noise std kept)
    tumor_scale  number > 0     tumor volume x factor
    label_noise  integer 1-10   written reference outlines moved in-plane by under k voxels
    share        0 <= s <= 1    the group's share of the cohort (one attribute per file)
    hidden       mapping        {fraction: (0, 1], and any of noise / slice_mm / contrast / blur /
                                tumor_scale}: those effects for exactly round(fraction x group
                                size) of the group's cases, chosen by seed (one hidden group per
                                file): a hidden acquisition, or a hidden case mix

When several entries apply to one case (a woman over 70 under `sex` and `age` entries), factors
(noise, contrast, tumor_scale) multiply, blur FWHMs add in quadrature, and slice_mm and
label_noise take the largest value. Counts are rounded half up: a hidden subgroup of a group of
n cases has floor(fraction * n + 0.5) members; shares use the largest-remainder rule so the
counts sum to the cohort size (with one group set: floor(share * N + 0.5)).

Usage:
    spec = load_bias("configs/bias/low_dose_female.yaml")   # BiasSpecError names file and key
    kept, failures = spec.select_fixed(metas, seed=0)      # from-labels: cases `share` keeps
    ids = spec.select_stream(candidates, n_cases)           # procedural: first cases filling quotas
    effects, failures = spec.resolve(metas, seed=0)         # {case_id: CaseEffect}
    effects["case_00003"].record    # kits.json's `synthetic_bias`, e.g. {"noise": 2.5}
    effects["case_00003"].acts      # changes the case's files (it gets a counterfactual twin)
"""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data.errors import CaseError
from data.groups import Attribute, GroupError, parse_attribute
from data.untrusted import read_yaml

FACTORS = ("noise", "contrast", "tumor_scale")      # multiply when combined
HIDDEN_EFFECTS = ("noise", "slice_mm", "contrast", "blur", "tumor_scale")   # what a hidden subgroup may get
MECHANISMS = ("noise", "slice_mm", "contrast", "blur", "tumor_scale", "label_noise", "share", "hidden")
# (lowest, lowest allowed itself, highest) per numeric mechanism
RANGES = {"noise": (0.0, False, 50.0), "slice_mm": (0.0, False, 50.0), "contrast": (0.0, True, 10.0),
          "blur": (0.0, False, 50.0), "tumor_scale": (0.0, False, 20.0), "share": (0.0, True, 1.0)}


class BiasSpecError(CaseError, ValueError):
    """A bias file that cannot be used: one line naming the file and the key."""


# ---------------------------------------------------------------------------------------------
# What one case gets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseEffect:
    """The combined effect on one case; defaults mean "nothing"."""
    noise: float = 1.0
    slice_mm: float | None = None
    contrast: float = 1.0
    blur: float = 0.0              # FWHM, mm
    tumor_scale: float = 1.0
    label_noise: int = 0
    share: float | None = None     # the case's group had its share set (cohort-level, no twin)
    hidden: dict | None = None     # {"group", "fraction", "member"} when its group has a hidden subgroup

    @property
    def applied(self) -> dict:
        """The mechanisms that change this case's files, with their values."""
        out = {k: getattr(self, k) for k in FACTORS if getattr(self, k) != 1.0}
        if self.slice_mm is not None:
            out["slice_mm"] = self.slice_mm
        if self.blur > 0:
            out["blur"] = self.blur
        if self.label_noise > 0:
            out["label_noise"] = self.label_noise
        return {k: out[k] for k in MECHANISMS if k in out}

    @property
    def acts(self) -> bool:
        return bool(self.applied)

    @property
    def record(self) -> dict:
        """kits.json's `synthetic_bias`: the applied mechanisms, plus share / hidden membership."""
        out = self.applied
        if self.share is not None:
            out["share"] = self.share
        if self.hidden is not None:
            out["hidden"] = dict(self.hidden)
        return out

    def combine(self, mech: dict) -> "CaseEffect":
        """This effect with one entry's acquisition / case-mix mechanisms added (combination rules)."""
        c = {}
        for k, v in mech.items():
            if k in FACTORS:   # (9 digits: 2 x 0.5 is exactly "no effect")
                c[k] = round(getattr(self, k) * v, 9)
            elif k == "blur":
                c[k] = math.hypot(self.blur, v)
            elif k == "slice_mm":
                c[k] = v if self.slice_mm is None else max(self.slice_mm, v)
            elif k == "label_noise":
                c[k] = max(self.label_noise, v)
        return replace(self, **c)


NO_EFFECT = CaseEffect()


# ---------------------------------------------------------------------------------------------
# The specification
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    attribute: Attribute
    attr_key: str                 # as written in the file
    group: str
    mechanisms: dict              # noise / slice_mm / contrast / blur / tumor_scale / label_noise
    share: float | None = None
    hidden: dict | None = None    # {"fraction": f, and acquisition mechanisms}

    @property
    def name(self) -> str:
        return f"{self.attr_key}={self.group}"

    def group_of(self, meta: dict) -> str:
        return self.attribute.group_of(meta)


@dataclass(frozen=True)
class BiasSpec:
    entries: tuple[Entry, ...] = ()
    source: str = "<none>"
    normalised: dict = field(default_factory=dict)   # canonical form (records, hashes)

    @property
    def is_empty(self) -> bool:
        return not self.entries

    @property
    def sha256(self) -> str:
        text = json.dumps(self.normalised, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def share_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.share is not None]

    # -- share --------------------------------------------------------------------------------
    def _bucket(self, meta: dict) -> str:
        """The share bucket of a case: its group if that group's share is set, else "other"."""
        entries = self.share_entries
        group = entries[0].group_of(meta)
        return group if any(e.group == group for e in entries) else "other"

    def quotas(self, n: int) -> dict[str, int]:
        """Cases per share bucket for a cohort of n (largest remainder; half up for one group)."""
        entries = self.share_entries
        shares = {e.group: e.share for e in entries}
        rest = 1.0 - sum(shares.values())
        if rest > 1e-9:
            shares["other"] = rest
        exact = {g: round(s * n, 9) for g, s in shares.items()}   # 9 digits: no float noise at .5
        counts = {g: int(math.floor(x)) for g, x in exact.items()}
        left = n - sum(counts.values())
        # the largest remainders get the units left (ties: the order of the file, "other" last)
        for g in sorted(exact, key=lambda g: -(exact[g] - counts[g]))[:max(left, 0)]:
            counts[g] += 1
        counts.setdefault("other", 0)
        return counts

    def select_stream(self, candidates, n: int, *, max_tries: int | None = None) -> list[str]:
        """Procedural `share`: walk (case_id, meta) candidates in order, keeping a case while its
        bucket's quota for a cohort of n is not full; the n kept ids (all of them without share)."""
        if not self.share_entries:
            out = []
            for cid, _ in candidates:
                if len(out) == n:
                    break
                out.append(cid)
            return out
        quota = self.quotas(n)
        have = dict.fromkeys(quota, 0)
        kept: list[str] = []
        max_tries = max_tries if max_tries is not None else 2000 * max(n, 1) + 10000
        for tries, (cid, meta) in enumerate(candidates):
            if len(kept) == n:
                break
            if tries >= max_tries:
                short = {g: quota[g] - have[g] for g in quota if have[g] < quota[g]}
                raise BiasSpecError(self.source, f"share: could not fill {short} after {max_tries} "
                                    "drawn cases; the group is too rare for this share")
            b = self._bucket(meta)
            if have[b] < quota[b]:
                have[b] += 1
                kept.append(cid)
        return kept

    def select_fixed(self, metas: dict[str, dict], seed: int) -> tuple[list[str], list[CaseError]]:
        """From-labels `share`: the largest sub-cohort of these cases whose bucket counts are the
        quotas of its size; within a bucket the kept cases are chosen by seed. Sorted ids."""
        if not self.share_entries:
            return sorted(metas), []
        buckets, failures = self._groups_or_fail(metas, self._bucket)
        avail = {}
        for cid, b in buckets.items():
            avail.setdefault(b, []).append(cid)
        for n in range(len(buckets), -1, -1):
            quota = self.quotas(n)
            if all(q <= len(avail.get(b, [])) for b, q in quota.items()):
                break
        kept = []
        for b, q in quota.items():
            ids = sorted(avail.get(b, []))
            rng = np.random.default_rng([seed, 0x5348, zlib.crc32(f"share:{b}".encode())])
            kept += [ids[i] for i in sorted(rng.choice(len(ids), size=q, replace=False))] if q else []
        return sorted(kept), failures

    # -- per case -------------------------------------------------------------------------------
    def _groups_or_fail(self, metas, fn):
        out, failures = {}, []
        for cid in sorted(metas):
            try:
                out[cid] = fn(metas[cid])
            except GroupError as exc:
                failures.append(CaseError(cid, f"cannot place the case in a bias group of {self.source}: {exc}"))
        return out, failures

    def resolve(self, metas: dict[str, dict], seed: int) -> tuple[dict[str, CaseEffect], list[CaseError]]:
        """{case_id: CaseEffect} for the cases of one cohort (hidden members chosen among them).

        A case whose metadata lacks a field some entry needs is a failure (and gets no effect)."""
        if self.is_empty:
            return {cid: NO_EFFECT for cid in metas}, []
        groups, failures = self._groups_or_fail(
            metas, lambda m: tuple(e.group_of(m) for e in self.entries))
        effects = {cid: NO_EFFECT for cid in groups}
        for k, entry in enumerate(self.entries):
            members = sorted(cid for cid, g in groups.items() if g[k] == entry.group)
            hidden = set()
            if entry.hidden is not None:
                count = int(math.floor(round(entry.hidden["fraction"] * len(members), 9) + 0.5))
                rng = np.random.default_rng([seed, 0x4844, zlib.crc32(f"hidden:{entry.name}".encode())])
                hidden = {members[i] for i in rng.permutation(len(members))[:count]}
            for cid in members:
                eff = effects[cid].combine(entry.mechanisms)
                if entry.share is not None:
                    eff = replace(eff, share=entry.share)
                if entry.hidden is not None:
                    member = cid in hidden
                    if member:
                        eff = eff.combine({k2: v for k2, v in entry.hidden.items() if k2 != "fraction"})
                    eff = replace(eff, hidden={"group": entry.name, "fraction": entry.hidden["fraction"],
                                               "member": member})
                effects[cid] = eff
        return effects, failures


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------
def _number(value, key: str, where: str, mech: str) -> float:
    lo, lo_ok, hi = RANGES[mech]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BiasSpecError(where, f"{key}: must be a number, got {value!r}")
    if value < lo or (value == lo and not lo_ok) or value > hi:
        low = f">= {lo:g}" if lo_ok else f"> {lo:g}"
        raise BiasSpecError(where, f"{key}: must be {low} and <= {hi:g}, got {value!r}")
    return float(value)


def _mechanisms(items: dict, key: str, where: str, allowed) -> dict:
    out = {}
    for mech, value in items.items():
        k = f"{key}.{mech}"
        if mech not in allowed:
            what = "unknown mechanism" if mech not in MECHANISMS else "mechanism not allowed here"
            raise BiasSpecError(where, f"{k}: {what} {mech!r}; valid: {', '.join(allowed)}")
        if mech == "label_noise":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
                raise BiasSpecError(where, f"{k}: must be a whole number of voxels from 1 to 10, got {value!r}")
            out[mech] = int(value)
        else:
            out[mech] = _number(value, k, where, mech)
    return out


def _hidden(value, key: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise BiasSpecError(where, f"{key}: must be a mapping like {{fraction: 0.3, noise: 3}}, got {value!r}")
    value = dict(value)
    if "fraction" not in value:
        raise BiasSpecError(where, f"{key}.fraction: missing (the share of the group's cases that get the effect)")
    f = value.pop("fraction")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
        raise BiasSpecError(where, f"{key}.fraction: must be a number in (0, 1], got {f!r}")
    mech = _mechanisms(value, key, where, HIDDEN_EFFECTS)
    if not mech:
        raise BiasSpecError(where, f"{key}: give at least one of {', '.join(HIDDEN_EFFECTS)} besides fraction")
    return {"fraction": float(f), **mech}


def parse_bias(data, source: str = "<bias>") -> BiasSpec:
    """Validate a bias mapping (see the module docstring); BiasSpecError naming source and key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BiasSpecError(source, "a bias file must be a mapping: attribute -> group -> mechanisms")
    entries, normalised = [], {}
    for attr_key, groups in data.items():
        attr_key = str(attr_key)
        try:
            attribute = parse_attribute(attr_key)
        except ValueError as exc:
            raise BiasSpecError(source, f"{attr_key}: not a grouping attribute ({exc})") from None
        if not isinstance(groups, dict) or not groups:
            raise BiasSpecError(source, f"{attr_key}: must map groups to mechanisms, like female: {{noise: 2}}")
        order = attribute.order
        for group, mech in groups.items():
            group, key = str(group), f"{attr_key}.{group}"
            if order is not None and group not in order:
                raise BiasSpecError(source, f"{key}: unknown group {group!r} of {attr_key}; valid: {', '.join(order)}")
            if not isinstance(mech, dict) or not mech:
                raise BiasSpecError(source, f"{key}: must be a mapping of mechanisms, like {{noise: 2}}")
            mech = dict(mech)
            hidden = _hidden(mech.pop("hidden"), f"{key}.hidden", source) if "hidden" in mech else None
            share = _number(mech.pop("share"), f"{key}.share", source, "share") if "share" in mech else None
            per_case = _mechanisms(mech, key, source, MECHANISMS)
            entries.append(Entry(attribute, attr_key, group, per_case, share, hidden))
            norm = dict(per_case)
            if share is not None:
                norm["share"] = share
            if hidden is not None:
                norm["hidden"] = hidden
            normalised.setdefault(attr_key, {})[group] = norm
    _check_cohort_level(entries, source)
    return BiasSpec(tuple(entries), source, normalised)


def _check_cohort_level(entries: list[Entry], source: str) -> None:
    """share: one attribute, shares adding up to at most 1 (exactly 1 when every group is set);
    hidden: one entry per file (a case is in at most one hidden subgroup)."""
    hidden = [e.name for e in entries if e.hidden is not None]
    if len(hidden) > 1:
        raise BiasSpecError(source, f"hidden: set for one group per file, got {', '.join(hidden)}")
    shared = [e for e in entries if e.share is not None]
    if not shared:
        return
    attrs = sorted({e.attr_key for e in shared})
    if len(attrs) > 1:
        raise BiasSpecError(source, f"share: set for groups of one attribute only, got {', '.join(attrs)}")
    total = sum(e.share for e in shared)
    order = shared[0].attribute.order
    every = order is not None and {e.group for e in shared} == set(order)
    if total > 1.0 + 1e-9 or (every and abs(total - 1.0) > 1e-9):
        raise BiasSpecError(source, f"{attrs[0]}: the shares add up to {total:g}; they must add up to "
                            + ("1 when every group is set" if every else "at most 1"))


_WORDS = {"noise": "image noise x{:g}", "slice_mm": "{:g} mm slices", "contrast": "enhancement x{:g}",
          "blur": "blur {:g} mm FWHM", "tumor_scale": "tumor volume x{:g}",
          "label_noise": "reference outlines jittered (under {:g} voxels)", "share": "{:.0%} of the cohort"}


def describe_bias(normalised: dict) -> str:
    """A spec's canonical form (BiasSpec.normalised, a synthesis record's `bias`) in words, e.g.
    'sex female: image noise x5'; '' for the null cohort."""
    parts = []
    for attr, groups in normalised.items():
        for group, mechs in groups.items():
            words = [_WORDS[k].format(v) for k, v in mechs.items() if k != "hidden"]
            if "hidden" in mechs:
                hidden = dict(mechs["hidden"])
                fraction = hidden.pop("fraction")
                words.append(f"a hidden {fraction:.0%} of them with " + ", ".join(_WORDS[k].format(v) for k, v in hidden.items()))
            parts.append(f"{attr} {group}: " + ", ".join(words))
    return "; ".join(parts)


def load_bias(path) -> BiasSpec:
    """Read and validate a bias YAML file (None: the null cohort without a file)."""
    if path is None:
        return BiasSpec()
    path = Path(path)
    if not path.exists():
        raise BiasSpecError(str(path), "cannot read the bias file (not found)")
    try:
        data = read_yaml(path)
    except CaseError as exc:
        raise BiasSpecError(str(path), exc.problem) from None
    return parse_bias(data, str(path))
