"""Data layer of fairkits: reading KiTS-layout folders, grouping, splits, synthesis, preprocessing.

Modules (each one job):
    nifti          read/write NIfTI volumes in KiTS19's (z, y, x) convention
    errors         CaseError: the one-line, per-case error every reader raises
    labels         label schemes (KiTS19 {0,1,2}; mapping KiTS21/23's cyst label)
    kits           scan a KiTS-layout folder, read metadata and cases
    groups         grouping attributes (sex, age bins, BMI bins, intersections)
    splits         seeded, optionally stratified train/val/test splits (splits.json)
    resample       the one resampler (nnU-Net's anisotropic rule)
    preprocessing  the study's preprocessing order and the on-disk cache
    synthetic      CT-like synthetic cohorts (procedural, or around real label maps)
"""
