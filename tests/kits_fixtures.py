"""Tiny hand-made KiTS-layout cohorts for tests: known geometry, known intensities, known groups.

Each case is a box-shaped "body" (HU 40) in air (-1000) with a kidney block (HU 200) holding a
tumor block (HU 100) and a "bone" block (HU 1000, above the clip window), so every preprocessing step has a hand-computable answer.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.nifti import kits_affine, write_volume

PEOPLE = [("male", 45, 31.0), ("female", 52, 22.5), ("male", 66, 27.0), ("female", 75, 35.2),
          ("male", 58, 24.0), ("female", 49, 29.9), ("male", 71, 26.1), ("female", 63, 23.3)]


def make_case_arrays(shape=(12, 20, 24)):
    z, y, x = shape
    labels = np.zeros(shape, np.uint8)
    labels[3:9, 5:14, 6:16] = 1
    labels[4:7, 7:11, 8:12] = 2
    image = np.full(shape, -1000, np.int16)
    image[1:z - 1, 2:y - 2, 3:x - 3] = 40
    image[labels == 1] = 200
    image[labels == 2] = 100
    image[2:10, 12:17, 16:21] = 1000  # "bone": above the clip window
    return image, labels


def write_tiny_cohort(root, n_cases=4, shape=(12, 20, 24), spacing=(4.0, 0.9, 0.9), with_image=True,
                      metadata_extra=None):
    root = Path(root)
    entries = []
    for i in range(n_cases):
        case_id = f"case_{i:05d}"
        image, labels = make_case_arrays(shape)
        affine = kits_affine(spacing)
        write_volume(root / case_id / "segmentation.nii.gz", labels, affine, spacing=spacing)
        if with_image:
            write_volume(root / case_id / "imaging.nii.gz", image, affine, spacing=spacing)
        sex, age, bmi = PEOPLE[i % len(PEOPLE)]
        entries.append({"case_id": case_id, "gender": sex, "age_at_nephrectomy": age, "body_mass_index": bmi,
                        **(metadata_extra or {})})
    (root / "kits.json").write_text(json.dumps(entries))
    return root


def write_smoker_audit(root, n_cases: int = 40, *, max_missed: int = 1, seed: int = 0):
    """A tiny cohort (root/raw) whose current smokers (every fifth case, across sexes and ages) lose
    most of their tumor in the predictions (root/preds); the others miss 0..max_missed kidney
    slices. Returns (raw, preds, kits.json entries)."""
    shape, spacing = (12, 20, 24), (4.0, 0.9, 0.9)
    root = Path(root)
    raw = write_tiny_cohort(root / "raw", n_cases=n_cases, shape=shape, spacing=spacing)
    entries = json.loads((raw / "kits.json").read_text())
    rng = np.random.default_rng(seed)
    _, labels = make_case_arrays(shape)
    for i, entry in enumerate(entries):
        entry["smoking_history"] = "current_smoker" if i % 5 == 0 else "never_smoked"
        pred = labels.copy()
        if entry["smoking_history"] == "current_smoker":   # the failing subgroup: most of the tumor missed
            pred[pred == 2] = 1
        missed = int(rng.integers(0, max_missed + 1))
        pred[3:3 + missed][pred[3:3 + missed] == 1] = 0
        write_volume(root / "preds" / f"{entry['case_id']}.nii.gz", pred, kits_affine(spacing), spacing=spacing)
    (raw / "kits.json").write_text(json.dumps(entries))
    return raw, root / "preds", entries
