"""Where the model fails: failing subgroups nobody named, searched on half the cases, confirmed on the other.

The group audit answers "is there a gap between the groups I named?". Discovery asks which
subgroup, described by the cases' features (fairness/features.py), does worst, and whether that
holds up on cases the search never saw:

    1. split    the cases at random (seeded) into a search half and a confirmation half
    2. rules    on the search half: every condition on one feature (a numeric feature <= or > one
                of its ventiles; a categorical one == each of its values, an embedding cluster
                among them) and every conjunction of two conditions on different features
    3. rank     the rules whose slice holds at least MIN_CASES cases and MIN_SHARE of the cohort
                (and 2 cases in each half), by Welch's t of slice against the rest on the
                search half, in the failing direction (lower Dice, higher distance)
    4. select   the TOP best-ranked rules whose search-half members overlap an earlier pick's by
                less than Jaccard 0.5 (near-copies would only spend the correction)
    5. confirm  each selected rule on the confirmation half: the one-sided Welch t test of "its
                slice does worse than the rest" (the test of fairness/welch.py, which holds with
                unequal spreads), Holm over the TOP rules; `confirmed` = Holm p < ALPHA and a
                held-out gap in the failing direction
A slice found in the model's embedding is described by the readable condition that best matches
its members (`described_by`: "9 of 14 with slice_mm > 5"). The search never sees the confirmation half, so the held-out test is a real test: under no
effect a slice is confirmed in at most ALPHA of audits (docs/discovery.md gives the measured
rates). The price is power: the test sees half the cohort.

Usage:
    result = discover(per_case, features, metric=get_metric("dice"), seed=0)
    result.slices          # the slices.csv frame: rank, rule, n, mean, rest_mean, gap, p, p_holm, confirmed, ...
    result.members         # slice_members.csv: rank, case_id
    discovery_line(result) # the line under the group tables
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fairness.significance import holm

MIN_CASES = 5          # a slice holds at least this many cases of the cohort ...
MIN_SHARE = 0.05       # ... and this share of it
TOP = 5                # rules taken to confirmation
ALPHA = 0.05
QUANTILES = np.linspace(0.05, 0.95, 19)
OVERLAP = 0.5          # Jaccard above which a rule is a near-copy of an earlier pick
SLICE_COLUMNS = ("rank", "rule", "n", "mean", "rest_mean", "gap", "p", "p_holm", "confirmed",
                 "n_search", "gap_search", "n_confirm", "gap_confirm", "features", "described_by", "searched")


@dataclass(frozen=True)
class Condition:
    feature: str
    op: str                 # "<=", ">", "=="
    value: object

    def text(self) -> str:
        from fairness.features import CLUSTER_PREFIX, is_cluster

        if is_cluster(self.feature) and self.op == "==":
            return f"embedding cluster {self.value} of {self.feature[len(CLUSTER_PREFIX):]}"
        shown = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        return f"{self.feature} {'≤' if self.op == '<=' else self.op} {shown}"


@dataclass
class Discovery:
    slices: pd.DataFrame
    members: pd.DataFrame
    n_features: int
    n_candidates: int
    n_cases: int
    seed: int
    notes: list = field(default_factory=list)


def conditions(features: pd.DataFrame) -> tuple[list[Condition], np.ndarray]:
    """Every one-feature condition; (conditions, their masks over the cases). Thresholds are the
    deciles of a feature over all cases: feature values are not outcomes, so the confirmation
    half's outcomes stay unseen, and both halves search the same rules."""
    return _conditions(features)


def _conditions(features: pd.DataFrame) -> tuple[list[Condition], np.ndarray]:
    conds, masks = [], []
    for name in features.columns:
        column = features[name]
        if not pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=object)
            for value in column.dropna().unique():
                conds.append(Condition(name, "==", value))
                masks.append(values == value)
        else:
            values = column.to_numpy(float)
            known = values[~np.isnan(values)]
            if known.size < 2:
                continue
            for cut in np.unique(np.quantile(known, QUANTILES, method="lower")):
                for op, mask in (("<=", values <= cut), (">", values > cut)):
                    conds.append(Condition(name, op, float(cut)))
                    masks.append(mask)   # NaN compares False: a case without the feature is in the rest
    return conds, np.array(masks, dtype=bool).reshape(len(conds), len(features.index))


def _welch(masks: np.ndarray, y: np.ndarray, sign: float) -> np.ndarray:
    """Welch's t of slice against rest for each row of masks (..., n) over y (n,);
    t > 0 when the slice does worse (sign: +1 higher is better, -1 lower is better)."""
    m = masks.astype(float)
    n1 = m.sum(-1)
    n0 = y.size - n1
    s1, q1 = m @ y, m @ (y * y)
    s0, q0 = y.sum() - s1, (y * y).sum() - q1
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1, mean0 = s1 / n1, s0 / n0
        v1 = np.maximum(q1 - n1 * mean1 ** 2, 0) / (n1 - 1)
        v0 = np.maximum(q0 - n0 * mean0 ** 2, 0) / (n0 - 1)
        se2 = v1 / n1 + v0 / n0
        t = sign * (mean0 - mean1) / np.sqrt(se2)
    return np.where(se2 > 0, t, np.where(sign * (mean0 - mean1) > 0, np.inf, 0.0))


def _rank_rules(cond_masks: np.ndarray, y: np.ndarray, search: np.ndarray, confirm: np.ndarray,
                min_size: int, sign: float):
    """Every rule of one or two conditions that is large enough (min_size cases of the cohort, 2
    in each half and 2 left out of it in each), with its ranking statistic on the search half; as
    (statistic, i, j), j = -1 for a single condition.

    The statistic is the slice's gap to the rest over its standard error with one spread for all
    (the half's SD): a slice's own spread, estimated from a few cases, would rank small slices
    that are tight by chance above the real failure. Pairs are counted and summed for all (i, j)
    at once: counts = A A^T, sums = (A y) A^T over the half's masks A."""
    c = cond_masks.astype(np.float32)
    a = c[:, search]
    ys = y[search]
    n_a, n_b = a.shape[1], int(confirm.sum())
    full, count_a = _pair_counts(cond_masks), a @ a.T            # diagonals: the single conditions
    count_b = full - count_a                                      # the halves partition the cases
    sums = (a * ys.astype(np.float32)) @ a.T
    ok = (full >= min_size) & (count_a >= 2) & (count_b >= 2) & (count_a <= n_a - 2) & (count_b <= n_b - 2)
    i, j = np.nonzero(np.triu(ok))                               # each pair once, singles on the diagonal
    n1, s1 = count_a[i, j].astype(float), sums[i, j].astype(float)
    gap = sign * ((ys.sum() - s1) / (n_a - n1) - s1 / n1)
    score = gap / (ys.std(ddof=1) * np.sqrt(1 / n1 + 1 / (n_a - n1)))
    return score, i, np.where(i == j, -1, j)


_COUNTS: dict = {}


def _pair_counts(cond_masks: np.ndarray) -> np.ndarray:
    """Cases in both conditions of every pair (C @ C^T), computed once for the two halves' searches."""
    key = (id(cond_masks), cond_masks.shape)
    if key not in _COUNTS:
        _COUNTS.clear()
        c = cond_masks.astype(np.float32)
        _COUNTS[key] = (cond_masks, c @ c.T)      # the array held too, so its id is not reused meanwhile
    return _COUNTS[key][1]


def _ranked(t: np.ndarray, enough: int):
    """Indices of t from the largest down, ties in index order (a stable sort of -t), the first
    `enough` of them picked with a partition (the full sort of every pair's score took most of a
    search), then the rest if they are needed."""
    if t.size <= enough:
        yield from np.argsort(-t, kind="stable")
        return
    cut = np.partition(t, t.size - enough)[t.size - enough]
    head = np.flatnonzero(t >= cut)                            # every index tied with the cut included
    head = head[np.argsort(-t[head], kind="stable")]
    yield from head
    rest = np.flatnonzero(t < cut)
    yield from rest[np.argsort(-t[rest], kind="stable")]


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(search, confirm) boolean masks: a seeded random half each (the search half the larger by one)."""
    order = np.random.default_rng(seed).permutation(n)
    search = np.zeros(n, bool)
    search[order[: (n + 1) // 2]] = True
    return search, ~search


def discover(per_case: pd.DataFrame, features: pd.DataFrame, *, metric=None, column: str | None = None,
             seed: int = 0, top: int = TOP, alpha: float = ALPHA) -> Discovery:
    """Search, select and confirm failing slices (module docstring). `features` is indexed by the
    per-case table's case ids; `column` the per-case value (default: the metric's mean column)."""
    from fairness.metrics import get_metric

    metric = metric or get_metric("dice")
    column = column or metric.columns()[2]
    table = per_case[["case_id", column]].dropna()
    y = table[column].to_numpy(float)
    ids = table["case_id"].to_numpy()
    feats = features.reindex(ids)
    n = len(y)
    sign = 1.0 if metric.higher_is_better else -1.0
    min_size = max(MIN_CASES, math.ceil(MIN_SHARE * n))
    result = Discovery(pd.DataFrame(columns=SLICE_COLUMNS), pd.DataFrame(columns=["rank", "case_id"]),
                       n_features=feats.shape[1], n_candidates=0, n_cases=n, seed=seed)
    if n < 4 * MIN_CASES or feats.shape[1] == 0:
        result.notes.append(f"not searched: {n} scored cases and {feats.shape[1]} features "
                            f"(needs {4 * MIN_CASES} cases and a feature)")
        return result
    conds, cond_masks = conditions(feats)
    first, second = split_halves(n, seed)
    rows, masks = [], []
    for search, confirm in ((first, second), (second, first)):     # cross-fitting: each half searches once
        found, candidates = _search_half(conds, cond_masks, y, search, confirm, min_size, sign, top, metric)
        result.n_candidates += candidates
        for row, mask in found:
            rows.append(row), masks.append(mask)
    if not rows:
        return result
    for row, mask in zip(rows, masks):
        row["described_by"] = describe_slice(mask, row["features"], conds, cond_masks)
    frame = pd.DataFrame(rows)
    frame["searched"] = column          # the per-case value the slices fail on (kidney, tumor, mean, ...)
    frame["p_holm"] = holm(frame["p"].tolist())       # over every rule either half took to confirmation
    frame["confirmed"] = (frame["p_holm"] < alpha) & (frame["gap_confirm"] > 0)
    order = frame.sort_values(["p_holm", "p", "gap_confirm"], ascending=[True, True, False], kind="stable").index
    frame = frame.loc[order].reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    result.slices = frame[list(SLICE_COLUMNS)]
    result.members = pd.DataFrame([{"rank": rank, "case_id": c} for rank, k in enumerate(order, 1)
                                   for c in ids[masks[k]]], columns=["rank", "case_id"])
    return result


def _search_half(conds, masks, y, search, confirm, min_size, sign, top, metric) -> tuple[list, int]:
    """The `top` rules the search half ranks first (near-copies skipped), each with its held-out
    test on the confirmation half: ([(row, mask over all cases)], candidates ranked)."""
    if not conds:
        return [], 0
    t, first, second = _rank_rules(masks, y, search, confirm, min_size, sign)
    found, picked = [], []
    for k in _ranked(t, 4096):
        rule = [conds[first[k]]] + ([conds[second[k]]] if second[k] >= 0 else [])
        mask = masks[first[k]] & (masks[second[k]] if second[k] >= 0 else True)
        in_search = mask & search
        if any((in_search & p).sum() / max((in_search | p).sum(), 1) >= OVERLAP for p in picked):
            continue
        picked.append(in_search)
        found.append((_slice_row(rule, mask, y, search, confirm, sign, metric), mask))
        if len(found) == top:
            break
    return found, int(t.size)


def _slice_row(rule, mask, y, search, confirm, sign, metric) -> dict:
    """One selected rule: its slice over the whole cohort, and its one-sided held-out test."""
    held = mask[confirm]
    t = _welch(held[None, :], y[confirm], sign)
    # Hsu's conservative degrees of freedom, min(n1, n0) - 1: Satterthwaite's are estimated from the
    # same small slice and run liberal in the tail a Holm correction reads (1.5 % at p < 0.01)
    dof = min(int(held.sum()), int((~held).sum())) - 1
    p = float(scipy_stats.t.sf(t[0], dof)) if dof >= 1 else 1.0
    shown = metric.shown
    mean, rest = float(y[mask].mean()), float(y[~mask].mean())

    def gap(part):
        return sign * shown(float(y[part & ~mask].mean()) - float(y[part & mask].mean()))

    return {"rule": " and ".join(c.text() for c in rule), "n": int(mask.sum()),
            "mean": shown(mean), "rest_mean": shown(rest), "gap": sign * shown(rest - mean), "p": p,
            "n_search": int((mask & search).sum()), "gap_search": gap(search),
            "n_confirm": int(held.sum()), "gap_confirm": gap(confirm),
            "features": ",".join(dict.fromkeys(c.feature for c in rule))}


def describe_slice(mask: np.ndarray, features: str, conds, cond_masks: np.ndarray) -> str:
    """For a slice of the model's embedding: the condition on a feature a person can read (not the
    embedding, nor one the rule already names) that best matches its members (Jaccard), as "9 of
    14 with slice_mm > 5" (the members it holds, of the slice's); "" for a rule already in
    readable features, or when no condition shares half of the slice's cases."""
    if not any(f.startswith("embedding_") for f in features.split(",")):
        return ""
    named = set(features.split(","))      # a condition of the rule itself describes nothing new
    readable = [k for k, c in enumerate(conds) if not c.feature.startswith("embedding_") and c.feature not in named]
    if not readable or not mask.any():
        return ""
    rows = cond_masks[readable]
    inter = (rows & mask).sum(1)
    jaccard = inter / np.maximum((rows | mask).sum(1), 1)
    best = int(np.argmax(jaccard))
    if 2 * inter[best] < mask.sum():
        return ""
    return f"{int(inter[best])} of {int(mask.sum())} with {conds[readable[best]].text()}"


def discovery_line(result: Discovery, metric=None) -> str:
    """The confirmed slices, one line each, or the "none confirmed" line with what was searched."""
    from fairness.metrics import get_metric

    metric = metric or get_metric("dice")
    unit = f" {metric.unit}" if metric.unit == "mm" else " points"
    searched = (f"searched {result.n_features} features, {result.n_candidates} candidate rules, each half of the "
                f"{result.n_cases} cases searching and the other confirming")
    confirmed = result.slices[result.slices["confirmed"].astype(bool)] if len(result.slices) else result.slices
    if confirmed.empty:
        return f"discovery: no failing subgroup confirmed ({searched}; Holm over {len(result.slices)} rules)" + \
            "".join(f"; {note}" for note in result.notes)
    lines = [f"discovery: {len(confirmed)} failing subgroup(s) confirmed on held-out cases ({searched}; Holm "
             f"over {len(result.slices)} rules):"]
    shown, overlapping = [], 0
    for row in confirmed.itertuples():
        members = set(result.members.loc[result.members["rank"] == row.rank, "case_id"])
        if any(len(members & s) / max(len(members | s), 1) >= OVERLAP for s in shown):
            overlapping += 1   # the other half found nearly the same cases: in slices.csv, not repeated here
            continue
        shown.append(members)
        described = f", {row.described_by}" if isinstance(row.described_by, str) and row.described_by else ""
        lines.append(f"  {row.rule}: {row.n} cases{described}, {metric.label} {row.mean:.1f} vs {row.rest_mean:.1f} "
                     f"for the rest (gap {row.gap:.1f}{unit}; held out: {row.n_confirm} cases, gap "
                     f"{row.gap_confirm:.1f}, p {row.p:.2g}, Holm {row.p_holm:.2g})")
    if overlapping:
        lines.append(f"  (and {overlapping} confirmed slice(s) sharing most of their cases with one above: slices.csv)")
    return "\n".join(lines)


def save_discovery(result: Discovery, out_dir, embeddings: pd.DataFrame | None = None) -> None:
    """slices.csv (every rule taken to confirmation, ranked), slice_members.csv (rank, case_id) and,
    where the model's vectors were searched, embeddings.csv (case_id, e0, e1, ...)."""
    from pathlib import Path

    from data.atomic import write_csv

    out_dir = Path(out_dir)
    if embeddings is not None:
        write_csv(embeddings.rename_axis("case_id"), out_dir / "embeddings.csv")
    write_csv(result.slices, out_dir / "slices.csv", index=False)
    write_csv(result.members, out_dir / "slice_members.csv", index=False)


def feature_families(text: str | None) -> tuple[str, ...]:
    """--features / eval.discover_features: 'auto' (every family available) or a comma list."""
    from fairness.features import FAMILIES

    if text in (None, "", "auto"):
        return FAMILIES
    families = tuple(f.strip() for f in str(text).split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"features {text!r}: unknown famil{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(unknown) or '(none given)'}; valid: auto, {', '.join(FAMILIES)}")
    return families


REGIONS = ("kidney", "tumor", "mean")      # the per-case values discovery can search (metric.columns())


def run_discovery(per_case: pd.DataFrame, metadata: dict | None, *, families=None, metric=None, seed: int = 0,
                  out_dir=None, region: str = "mean", embeddings: pd.DataFrame | None = None,
                  log=print) -> Discovery:
    """The discovery of an audit: features of every scored case (embeddings: the model's pooled
    bottleneck vectors, indexed by case id, where a model was run), search and confirmation on one
    region's per-case value, its line printed, and (with out_dir) slices.csv and slice_members.csv."""
    from fairness.features import case_features
    from fairness.metrics import get_metric

    metric = metric or get_metric("dice")
    if region not in REGIONS:
        raise ValueError(f"discovery region {region!r}; valid: {', '.join(REGIONS)}")
    families = families or feature_families(None)
    features = case_features(per_case, metadata, families=families, embeddings=embeddings)
    result = discover(per_case, features, metric=metric, column=metric.columns()[REGIONS.index(region)], seed=seed)
    log("\n" + ("" if region == "mean" else f"({region} {metric.label}) ") + discovery_line(result, metric))
    if out_dir is not None:
        save_discovery(result, out_dir, embeddings if "embedding" in families else None)
    return result
