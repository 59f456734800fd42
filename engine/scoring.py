"""One scoring path for a case: predict, write back, score. Training and evaluate.py both use it.

Each cached case is predicted with the sliding window (models/inference.py) in the preprocessed
geometry. With its original label map (a KiTS-layout raw folder) the prediction is written back
to the original geometry (data/writeback.py), saved as NIfTI, and scored there, as KiTS19 does;
without one (training's validation and test tables), it is scored in the preprocessed geometry
against the cached labels. A network that routes by group (dMoE) sees each case through its own
group's router, looked up in the run's group index.

Usage:
    scorer = CaseScorer(net, cache, options, index=group_index)
    row = scorer.score("case_00003")                                   # preprocessed geometry
    row = scorer.score("case_00003", record=rec, scheme=scheme, pred_dir=Path("preds"))   # original
    rows, kept = scorer.score_many(case_ids, keep=2)   # kept: pictures for TensorBoard; scorer.failures
    CaseScorer(net, cache, options, metrics=("dice", "nsd"), tolerance_mm=2.0)   # + surface columns

Surface metrics (fairness/metrics.py) use the geometry the case is scored in: the original
spacing after write-back, the preprocessed (target) spacing otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.cache import load_preprocessed
from data.errors import CaseError
from data.nifti import read_volume
from data.untrusted import case_path
from data.writeback import to_original_geometry, write_prediction
from fairness.features import geometry_features
from fairness.metrics import case_scores
from fairness.surface import DEFAULT_TOLERANCE_MM
from mitigations.dmoe import WithGroup
from models.embedding import case_embedding
from models.inference import MIRROR_AXES, predict_case


@dataclass(frozen=True)
class WindowOptions:
    """The sliding window's settings (eval section of a config, or evaluate.py's flags)."""
    patch_size: tuple
    overlap: float = 0.5
    mirror: bool = False
    mirror_axes: tuple = MIRROR_AXES
    tile_batch: int = 2
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None


class CaseScorer:
    def __init__(self, net, cache, options: WindowOptions, *, index=None, anisotropy_threshold: float = 3.0,
                 metrics=("dice",), tolerance_mm: float = DEFAULT_TOLERANCE_MM):
        self.net, self.cache, self.options, self.index = net, Path(cache), options, index
        self.anisotropy_threshold = anisotropy_threshold
        self.metrics, self.tolerance_mm = tuple(metrics), tolerance_mm
        self.reused = 0     # predictions found already written (an interrupted evaluation)
        self.failures: list[CaseError] = []   # cases score_many could not read

    def network_for(self, case_id: str):
        """The network as x -> y for this case: through its group's router when it routes by group."""
        if not getattr(self.net, "routes_by_group", False):
            return self.net
        if self.index is None:
            raise CaseError(case_id, "the network routes by group (dMoE) but the run has no group index")
        return WithGroup(self.net, self.index.position(case_id))

    def predict(self, case_id: str, image) -> torch.Tensor:
        o = self.options
        return predict_case(self.network_for(case_id), image, patch_size=o.patch_size, overlap=o.overlap,
                            mirror=o.mirror, mirror_axes=o.mirror_axes, tile_batch=o.tile_batch, device=o.device, amp_dtype=o.amp_dtype)

    def embed(self, case_id: str) -> np.ndarray:
        """The case's pooled bottleneck vector (models/embedding.py), routed by its group like its prediction."""
        image, _, _ = load_preprocessed(self.cache, case_id)
        group = None
        if getattr(self.net, "routes_by_group", False):
            if self.index is None:
                raise CaseError(case_id, "the network routes by group (dMoE) but the run has no group index")
            group = self.index.position(case_id)
        o = self.options
        return case_embedding(self.net, image, patch_size=o.patch_size, group=group, tile_batch=o.tile_batch,
                              device=o.device, amp_dtype=o.amp_dtype)

    def score(self, case_id: str, *, record=None, scheme=None, pred_dir: Path | None = None, picture=None) -> dict:
        """{"case_id", "kidney", "tumor", "mean", the voxel counts (fairness.case_dice.COUNTS), "geometry"}
        and, in the original geometry, "reference_file" and "prediction_file"; `picture` (a list) gets the arrays."""
        image, cached_seg, props = load_preprocessed(self.cache, case_id)  # memory-mapped: read only if used
        if record is None:
            pred = self.predict(case_id, image).argmax(0).to(torch.uint8).numpy()
            if picture is not None:
                picture.append((case_id, np.asarray(image), np.asarray(cached_seg), pred))
            return {"case_id": case_id, **self._scores(pred, np.asarray(cached_seg), props["spacing"]),
                    "geometry": "preprocessed"}
        ref = read_volume(record.label_path, where=case_id)
        ref_labels = scheme.apply(ref.array, where=case_id)
        if tuple(ref_labels.shape) != tuple(props["original_shape"]):
            raise CaseError(case_id, f"label map {ref_labels.shape} is not the shape the cache recorded "
                            f"{tuple(props['original_shape'])}: cache and raw folder disagree")
        pred_file = case_path(pred_dir, case_id, ".nii.gz")
        if pred_file.is_file():  # written atomically: a file that exists is complete
            labels = read_volume(pred_file, where=case_id, shape=ref_labels.shape).array.astype(np.uint8)
            self.reused += 1
        else:
            labels = to_original_geometry(self.predict(case_id, image), props,
                                          anisotropy_threshold=self.anisotropy_threshold)
            write_prediction(pred_file, labels, props, reference=ref)
        return {"case_id": case_id, **self._scores(labels, ref_labels, ref.spacing), "geometry": "original",
                **geometry_features(ref_labels, ref.spacing),
                "reference_file": str(record.label_path.resolve()), "prediction_file": str(pred_file.resolve())}

    def _scores(self, pred, ref, spacing) -> dict:
        return case_scores(pred, ref, spacing=spacing, metrics=self.metrics, tolerance_mm=self.tolerance_mm)

    def score_many(self, case_ids, *, keep: int = 0):
        """Rows of every case in the preprocessed geometry, and pictures of the first `keep`. A case
        that cannot be read (a damaged cache file) is left out and its CaseError kept in
        `self.failures`: one bad file must not cost a run its validation."""
        rows, kept = [], []
        self.failures = []
        for case_id in case_ids:
            try:
                rows.append(self.score(case_id, picture=kept if len(kept) < keep else None))
            except CaseError as exc:
                self.failures.append(exc)
        return rows, kept
