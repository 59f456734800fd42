"""The per-case features failure discovery searches (fairness/discovery.py): what is known of each case.

Three families, each a column set of one frame indexed by case id:
    metadata   every field of the case's metadata entry (kits.json), nested fields flattened with
               dots (`comorbidities.copd`, `last_preop_egfr.value`); numbers stay numeric, the rest
               (booleans, strings, ">=90") are categories. Identifiers and the synthetic cohorts'
               records of what was planted (`synthetic_*`, `twin_of`) are never features: they
               would find the planted members by reading the answer.
    derived    what the per-case table measured of the reference and its geometry: kidney_ml,
               tumor_ml, tumor_count, slice_mm, inplane_mm, fov_mm (the scoring modes add what
               they can read).
    image      measurements of the CT where it is at hand: noise_hu (robust SD of the soft tissue
               around the kidneys), kidney_hu, tumor_hu, contrast_hu (kidney minus tumor).
    embedding  with a model (evaluate.py --ckpt): its pooled bottleneck vector per case
               (models/embedding.py), seen through outcome-blind summaries of all cases: the
               first EMBEDDING_PCS principal components of the standardised vectors
               (embedding_pc1, ...), and k-means clusters of their first CLUSTER_DIMS components
               for each k of CLUSTER_KS (embedding_k5 == 3 reads "embedding cluster 3 of 5";
               clusters numbered by size, 1 the largest).
A column with one value, or (categorical) a distinct value per case, says nothing and is dropped.

Usage:
    frame = case_features(per_case, metadata, families=("metadata", "derived"))
    image_features(image_hu, labels)     # {"noise_hu", "kidney_hu", "tumor_hu", "contrast_hu"}
    geometry_features(labels, spacing)   # {"tumor_count", "slice_mm", "inplane_mm", "fov_mm"}
    header_features(shape, spacing)      # the same without the tumor count (a header alone)
    embedding_features(vectors)           # vectors: frame indexed by case id, one column per channel
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

FAMILIES = ("metadata", "derived", "image", "embedding")
DERIVED = ("kidney_ml", "tumor_ml", "tumor_count", "slice_mm", "inplane_mm", "fov_mm")
IMAGE = ("noise_hu", "kidney_hu", "tumor_hu", "contrast_hu")
NOT_FEATURES = ("case_id", "twin_of")        # and every synthetic_* record
MAX_LEVELS = 30                               # categories of one field searched
EMBEDDING_PCS = 3                             # principal components searched as numeric features
CLUSTER_DIMS = 8                              # components the clusters are drawn in
CLUSTER_KS = (2, 3, 5, 8)                     # k-means partitions searched (each cluster a category)
CLUSTER_PREFIX = "embedding_k"


def flatten(entry: dict, prefix: str = "") -> dict:
    """{dotted.name: value} of a nested metadata entry (lists are left out)."""
    out = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif not isinstance(value, list):
            out[name] = value
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def metadata_features(metadata: dict, case_ids) -> pd.DataFrame:
    """One column per flattened metadata field: float where every value given is a number, else
    the values as strings (None stays missing)."""
    rows = {}
    for case_id in case_ids:
        entry = metadata.get(case_id) or {}
        rows[case_id] = {k: v for k, v in flatten(entry).items()
                         if k not in NOT_FEATURES and not k.split(".")[0].startswith("synthetic_")}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    columns = {}
    for name in frame.columns:
        given = [v for v in frame[name] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if given and all(_is_number(v) for v in given):
            columns[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
        else:
            columns[name] = frame[name].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                            else str(v).lower() if isinstance(v, bool) else str(v))
    return pd.DataFrame(columns, index=frame.index)


def informative(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns that can split the cases: two or more values, and (categories) not one per case."""
    keep = []
    for name in frame.columns:
        values = frame[name].dropna()
        distinct = values.nunique()
        if distinct < 2:
            continue
        if not pd.api.types.is_numeric_dtype(frame[name]) and distinct > MAX_LEVELS and distinct > 0.5 * len(values):
            continue   # an identifier or free text
        keep.append(name)
    return frame[keep]


def case_features(per_case: pd.DataFrame, metadata: dict | None, *, families=FAMILIES,
                  embeddings: pd.DataFrame | None = None) -> pd.DataFrame:
    """The features of every case of the per-case table (indexed by case id), from the families
    asked for and available (embeddings: the pooled bottleneck vectors, indexed by case id)."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown feature famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                         f"valid: {', '.join(FAMILIES)} (or auto)")
    ids = per_case["case_id"].tolist()
    parts = []
    if "metadata" in families and metadata:
        parts.append(metadata_features(metadata, ids))
    table = per_case.set_index("case_id")
    for family, names in (("derived", DERIVED), ("image", IMAGE)):
        present = [c for c in names if family in families and c in table.columns]
        if present:
            parts.append(table[present].apply(pd.to_numeric, errors="coerce").astype(float))
    if "embedding" in families and embeddings is not None and len(embeddings):
        parts.append(embedding_features(embeddings.reindex([i for i in ids if i in embeddings.index])))
    if not parts:
        return pd.DataFrame(index=ids)
    frame = pd.concat(parts, axis=1)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    return informative(frame.reindex(ids))


def header_features(shape, spacing) -> dict:
    """Slice thickness, in-plane spacing and the z field of view (mm) of a volume (z, y, x): what a
    header alone says."""
    sz, sy, sx = (float(s) for s in spacing)
    return {"slice_mm": sz, "inplane_mm": math.sqrt(sy * sx), "fov_mm": sz * int(shape[0])}


def geometry_features(labels: np.ndarray, spacing) -> dict:
    """header_features, and the tumor count (connected components of label 2, 26-connected) of a
    reference label map (z, y, x)."""
    _, count = ndimage.label(labels == 2, structure=np.ones((3, 3, 3), bool))
    return {"tumor_count": float(count), **header_features(labels.shape, spacing)}


def image_features(image_hu: np.ndarray, labels: np.ndarray) -> dict:
    """Mean HU of kidney and tumor, their contrast, and the noise: the robust SD (1.4826 MAD) of
    the HU differences between neighbouring voxels along x in the soft tissue around the kidneys
    (labels 0, within 8 voxels of the kidney, HU in [-100, 200]), divided by sqrt(2)."""
    image = np.asarray(image_hu, dtype=np.float32)
    kidney, tumor = labels == 1, labels == 2
    near = ndimage.binary_dilation(labels > 0, iterations=8) & (labels == 0) & (image > -100) & (image < 200)
    pairs = near[..., 1:] & near[..., :-1]
    diffs = (image[..., 1:] - image[..., :-1])[pairs]
    noise = float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2)) if diffs.size >= 50 else math.nan
    k = float(image[kidney].mean()) if kidney.any() else math.nan
    t = float(image[tumor].mean()) if tumor.any() else math.nan
    return {"noise_hu": noise, "kidney_hu": k, "tumor_hu": t, "contrast_hu": k - t}


def embedding_features(vectors: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Principal components and k-means clusters of per-case vectors (rows: cases). Channels are
    standardised first (a channel constant over the cases is left out); everything is computed
    from the vectors alone, never the outcomes, so both halves of discovery search the same slices."""
    from scipy.cluster.vq import kmeans2

    x = vectors.to_numpy(float)
    n = x.shape[0]
    out = pd.DataFrame(index=vectors.index)
    if n < 4:
        return out
    spread = x.std(axis=0)
    x = (x[:, spread > 1e-12] - x[:, spread > 1e-12].mean(axis=0)) / spread[spread > 1e-12]
    if x.shape[1] == 0:
        return out
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    scores = u * s                                      # the cases in principal coordinates
    for k in range(min(EMBEDDING_PCS, scores.shape[1])):
        # the sign of a component is arbitrary: fix it so the largest |score| is positive
        sign = 1.0 if scores[np.argmax(np.abs(scores[:, k])), k] >= 0 else -1.0
        out[f"embedding_pc{k + 1}"] = sign * scores[:, k]
    space = scores[:, :min(CLUSTER_DIMS, scores.shape[1])]
    for k in CLUSTER_KS:
        if k >= n:
            continue
        labels = _kmeans(space, k, seed, kmeans2)
        order = {c: i + 1 for i, c in enumerate(sorted(np.unique(labels), key=lambda c: (-(labels == c).sum(), c)))}
        out[f"{CLUSTER_PREFIX}{k}"] = [str(order[c]) for c in labels]
    return out


def _kmeans(points: np.ndarray, k: int, seed: int, kmeans2, restarts: int = 8) -> np.ndarray:
    """The labels of the lowest-inertia of `restarts` seeded k-means++ runs."""
    best, best_inertia = None, math.inf
    for r in range(restarts):
        centres, labels = kmeans2(points, k, minit="++", seed=np.random.default_rng([seed, k, r]))
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def is_cluster(feature: str) -> bool:
    return feature.startswith(CLUSTER_PREFIX) and feature[len(CLUSTER_PREFIX):].isdigit()
