"""Data layer of fairkits: reading KiTS-layout folders, grouping, splits, synthesis, preprocessing.

Modules (each one job):
    nifti          read/write NIfTI volumes in KiTS19's (z, y, x) convention
    errors         CaseError: the one-line, per-case error every reader raises; ConfigError
    untrusted      the one home of inputs someone else wrote: ids, paths, JSON/YAML, voxel limits
    arguments      argparse types for numbers, grids and amounts
    labels         label schemes (KiTS19 {0,1,2}; mapping KiTS21/23's cyst label)
    kits           scan a KiTS-layout folder, read metadata and cases
    atomic         the one way a result file is written (temporary name, rename)
    lock           one process at a time prepares a cache (CACHE/.prepare.lock, stale locks taken over)
    progress       progress displays: a tqdm bar on a terminal, plain lines in a log file
    groups         grouping attributes (sex, age bins, BMI bins, intersections)
    group_index    a run's group index: attribute, ordered groups, case -> position (in checkpoints)
    splits         seeded, optionally stratified train/val/test splits (splits.json)
    resample       the one resampler (nnU-Net's anisotropic rule)
    preprocess_settings  PreprocessSettings: every value of the preprocessing, checked
    preprocessing  the study's preprocessing order, writing the on-disk cache
    cache          reading the cache: cases, case table, settings, group columns
    verify         checking a cache file by file (`preprocess.py verify`), repairing damaged cases
    bias           known-bias cohorts: the bias file, its validation, what each case gets
    synthetic      CT-like synthetic cohorts on disk (procedural, or around real label maps), biased or not
    procedural     a procedural case's plan (demographics, kidneys, tumors) and its label map
    label_edits    bias mechanisms on label maps: thicker slices, scaled tumors, label noise
    synthetic_ct/  the CT model: fields (smooth random fields), anatomy (the layout), painters (one
                   per organ), acquisition (noise, blur, bias field: render_ct)
    prepare        a run's data made ready: synthesise, preprocess, split, each once
    patches        the training dataset: pos/neg crops, each batch item with its group
    augment        the study's augmentations in torch
    writeback      predictions back in the original geometry
    nnunet         nnU-Net v2's formats: the raw dataset export, splits_final.json, summary.json

Not here: samplers (uniform, RESM, stratified: mitigations/samplers.py), networks (models/),
and anything that measures a model (fairness/).
"""
