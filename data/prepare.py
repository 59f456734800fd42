"""Make sure a run's data exists: synthesise (if asked), preprocess, split — each step only once.

Used by train.py so that `python train.py --config configs/demo.yaml` works on a fresh machine.
Every step is the same code as `preprocess.py`, and each is skipped when its output is there:
    1. data.raw missing and data.synthesize_cases > 0  -> procedural cohort into data.raw
    2. cases missing from data.cache                    -> preprocess them (resumable)
    3. no data.cache/splits.json                        -> seeded split (data.test / data.val / data.stratify)

Usage:
    cache_dir, split = prepare_data(cfg["data"])
"""
from __future__ import annotations

from pathlib import Path

from data.errors import CaseError, format_failures
from data.preprocessing import PreprocessSettings, run_preprocessing, summary_line
from data.cache import groups_from_table, load_case_table
from data.splits import load_split, make_split, save_split

SPLIT_FILE = "splits.json"


def prepare_data(data_cfg: dict, *, progress: bool = True, log=print) -> tuple[Path, dict]:
    cache = Path(data_cfg["cache"])
    raw = Path(data_cfg["raw"]) if data_cfg["raw"] else None
    settings = PreprocessSettings.from_dict(data_cfg["preprocess"])
    if raw is not None and not raw.exists() and data_cfg["synthesize_cases"] > 0:
        from data.synthetic import write_procedural_cohort
        log(f"synthesising {data_cfg['synthesize_cases']} procedural cases into {raw}")
        shape = tuple(data_cfg["synthesize_shape"]) if data_cfg["synthesize_shape"] else None
        write_procedural_cohort(raw, n_cases=data_cfg["synthesize_cases"], seed=data_cfg["synthesize_seed"],
                                shape=shape, progress=progress)
    if raw is not None:
        result = run_preprocessing(raw, cache, settings, workers=data_cfg["preprocess_workers"],
                                   metadata_path=data_cfg["metadata"], progress=progress)
        if result.done or result.failures:
            log(summary_line(result, cache))
        if result.failures:
            log(format_failures(result.failures))
    elif not (cache / "cases.csv").is_file():
        raise CaseError(str(cache), "no preprocessed cache here and data.raw is not set")
    table = load_case_table(cache)
    split_path = cache / SPLIT_FILE
    if not split_path.is_file():
        stratify = groups_from_table(table, data_cfg["stratify"], settings) if data_cfg["stratify"] else None
        split = make_split(table.index.tolist(), seed=data_cfg["split_seed"], test=data_cfg["test"],
                           val=data_cfg["val"], stratify=stratify, stratify_name=data_cfg["stratify"])
        save_split(split_path, split)
        log(f"wrote {split_path}: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])}")
    return cache, load_split(split_path, known_cases=table.index.tolist())
