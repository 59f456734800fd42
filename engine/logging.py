"""TensorBoard for a training run: per-step losses, per-group audits, validation pictures.

Usage:
    log_step(writer, step, loss=0.7, levels=levels, per_sample=per_sample, scalars={"dro_q/male": 0.5},
             cases=[0, 3], train_groups={"sex": ["male", "female", ...]})
    audits = log_audits(writer, per_case, groups_by_attr, orders, step, "val")   # {attr: Audit}
    log_slices(writer, kept, step)
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from fairness.audit import audit_groups
from fairness.adjusted import DEFAULT_COVARIATES


def log_step(writer, step: int, *, loss: float, levels, per_sample, scalars: dict, cases, train_groups) -> None:
    """train/loss, the loss per deep-supervision level, the mitigations' scalars, the loss per group."""
    writer.add_scalar("train/loss", loss, step)
    for i, value in enumerate(levels.mean(0).tolist()):
        writer.add_scalar(f"train/loss_level{i}", value, step)
    for name, value in scalars.items():
        writer.add_scalar(f"train/{name}", value, step)
    for attr, groups in train_groups.items():
        for g in sorted({groups[c] for c in cases}):
            mask = torch.tensor([groups[c] == g for c in cases], device=per_sample.device)
            writer.add_scalar(f"train/loss_{attr}/{g}", per_sample[mask].mean().item(), step)


def log_audits(writer, per_case: pd.DataFrame, groups_by_attr, orders, step: int, prefix: str, *,
               covariates=DEFAULT_COVARIATES) -> dict:
    """The group audit of each attribute (returned), and its group Dice, SD, SER and p-values in TensorBoard."""
    audits = {}
    for attr in groups_by_attr:
        audit = audit_groups(per_case, attr, order=orders.get(attr), cvar_level=0.2, covariates=covariates)
        audits[attr] = audit
        if writer is None:
            continue
        for group, row in audit.table.iterrows():
            if pd.notna(row["mean"]):
                writer.add_scalar(f"{prefix}/{attr}/dice_{group}", row["mean"], step)
        if math.isfinite(audit.summary["sd"]):
            writer.add_scalar(f"{prefix}/{attr}/SD", 100 * audit.summary["sd"], step)
        if math.isfinite(audit.summary["ser"]):
            writer.add_scalar(f"{prefix}/{attr}/SER", audit.summary["ser"], step)
        for key in ("sd_p", "ser_p", "gap_p"):   # beside the curves: is this SD beyond noise?
            if math.isfinite(audit.significance.get(key, math.nan)):
                writer.add_scalar(f"{prefix}/{attr}/{key.replace('sd', 'SD').replace('ser', 'SER')}",
                                  audit.significance[key], step)
    return audits


def log_slices(writer, kept, step: int) -> None:
    """Image | reference | prediction at the slice with the most kidney, per kept case."""
    for case_id, image, label, pred in kept:
        z = int(np.argmax((label > 0).sum(axis=(1, 2)))) if label.any() else image.shape[0] // 2
        panel = np.concatenate([(image[z] - image[z].min()) / (np.ptp(image[z]) + 1e-6), label[z] / 2.0, pred[z] / 2.0],
                               axis=1)
        writer.add_image(f"val/{case_id}", panel[None].astype(np.float32), step)
