"""Make sure a run's data exists: synthesise (if asked), preprocess, split — each step only once.

Used by train.py so that `python train.py --config configs/demo.yaml` works on a fresh machine.
Every step is the same code as `preprocess.py`, and each is skipped when its output is there:
    1. data.raw missing and data.synthesize_cases > 0  -> procedural cohort into data.raw, with
       the bias of data.synthesize_bias (a YAML file, data/bias.py) and, if data.synthesize_twins,
       its counterfactual twins in data.raw + "_twins" (a cohort of its own: never trained on)
    2. cases missing from data.cache                    -> preprocess them (resumable)
    3. no data.cache/splits.json                        -> seeded split (data.test / data.val / data.stratify)

A synthesised raw folder records its bias spec (RAW/synthesis.json); an existing one made with
another spec than the config's is refused rather than reused, and so is a cache made from
another synthesis (the cache keeps a copy of RAW/synthesis.json).

All three steps run under the cache's lock, CACHE/.prepare.lock (data/lock.py): many processes
starting on one cache together (the tasks of a SLURM array, `train.py --task`) prepare it once;
the others wait for it, and a lock left by a killed process is taken over.

Usage:
    cache_dir, split = prepare_data(cfg["data"])
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from data.atomic import atomic_write
from data.bias import load_bias
from data.errors import CaseError, format_failures
from data.lock import FolderLock
from data.preprocessing import PreprocessSettings, run_preprocessing, summary_line
from data.cache import groups_from_table, load_case_table
from data.splits import load_split, make_split, save_split
from data.synthetic import PENDING_FILE, SYNTHESIS_FILE, read_synthesis, twins_dir, write_procedural_cohort
from data.untrusted import read_json

SPLIT_FILE = "splits.json"


def _bias_sha(record: dict | None) -> str | None:
    """The spec hash of a synthesis record; None for no record or the null (empty) spec."""
    return record["bias_sha256"] if record and record.get("bias") else None


def synthesise_if_missing(data_cfg: dict, *, progress: bool = True, log=print) -> None:
    """Step 1, and the check that an existing synthetic raw folder has the config's bias."""
    raw = Path(data_cfg["raw"])
    bias_path = data_cfg.get("synthesize_bias")
    spec = load_bias(bias_path) if bias_path else None
    unfinished = (raw / PENDING_FILE).is_file()     # a synthesis cut short: done again, whole
    if not raw.exists() or unfinished:
        twins = bool(data_cfg.get("synthesize_twins")) and spec is not None
        log(("finishing an interrupted synthesis: " if unfinished else "synthesising ")
            + f"{data_cfg['synthesize_cases']} procedural cases into {raw}"
            + (f" with the bias of {bias_path}" if spec is not None else "")
            + (f" (twins in {twins_dir(raw)})" if twins else ""))
        shape = tuple(data_cfg["synthesize_shape"]) if data_cfg["synthesize_shape"] else None
        write_procedural_cohort(raw, n_cases=data_cfg["synthesize_cases"], seed=data_cfg["synthesize_seed"],
                                shape=shape, progress=progress, bias=spec, twins=twins,
                                fov=data_cfg["synthesize_fov"])
        return
    _check_fov(raw, data_cfg["synthesize_fov"])
    have = read_synthesis(raw)
    want = spec.sha256 if spec is not None and not spec.is_empty else None
    if _bias_sha(have) != want:
        made = f"with the bias of {have.get('bias_file')}" if _bias_sha(have) else "without a bias"
        raise CaseError(str(raw), f"was synthesised {made}, but data.synthesize_bias is {bias_path or 'null'}; "
                        "delete the folder (and data.cache) or set another data.raw")


def _check_fov(raw: Path, fov: str) -> None:
    """An existing procedural folder must have the config's field of view (kits.json records it)."""
    path = raw / "kits.json"
    if not path.is_file():
        return
    try:
        entries = read_json(path)
    except CaseError:
        return   # preprocessing reports an unreadable kits.json with its own error
    have = {e.get("synthetic_fov", "abdomen") for e in entries if isinstance(e, dict) and "twin_of" not in e} \
        if isinstance(entries, list) else set()
    if have and have != {fov}:
        raise CaseError(str(raw), f"was synthesised with field of view {', '.join(sorted(have))}, but "
                        f"data.synthesize_fov is {fov}; delete the folder (and data.cache) or set another data.raw")


def _check_cache_source(raw: Path, cache: Path) -> None:
    """A cache made from one synthesis is not topped up from another (stale cases would mix)."""
    have = read_synthesis(cache)
    want = read_synthesis(raw)
    if not (cache / "cases.csv").is_file() or _bias_sha(have) == _bias_sha(want):
        return
    raise CaseError(str(cache), f"was preprocessed from a raw folder with another bias spec than {raw} has "
                    "now; delete the cache or set another data.cache")


def _record_cache_source(raw: Path, cache: Path) -> None:
    """The cache keeps a copy of the raw folder's synthesis record (none when the raw has none)."""
    record = read_synthesis(raw)
    if record is None:
        (cache / SYNTHESIS_FILE).unlink(missing_ok=True)
    elif read_synthesis(cache) != record:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(cache / SYNTHESIS_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"))


def prepare_data(data_cfg: dict, *, progress: bool = True, log=print) -> tuple[Path, dict]:
    """Steps 1-3 under the cache's lock (data/lock.py): of many processes starting together on one
    cache (the tasks of a SLURM array), one prepares and the others wait, then find it done."""
    cache = Path(data_cfg["cache"])
    if not data_cfg["raw"] and not (cache / "cases.csv").is_file():
        raise CaseError(str(cache), "no preprocessed cache here and data.raw is not set")
    if not data_cfg["raw"] and not os.access(cache, os.W_OK):
        return _prepare(data_cfg, progress=progress, log=log)   # a read-only cache: nothing to prepare
    with FolderLock(cache, log=log):
        return _prepare(data_cfg, progress=progress, log=log)


def _prepare(data_cfg: dict, *, progress: bool, log) -> tuple[Path, dict]:
    cache = Path(data_cfg["cache"])
    raw = Path(data_cfg["raw"]) if data_cfg["raw"] else None
    settings = PreprocessSettings.from_dict(data_cfg["preprocess"])
    if raw is not None and data_cfg["synthesize_cases"] > 0:
        synthesise_if_missing(data_cfg, progress=progress, log=log)
    if raw is not None:
        _check_cache_source(raw, cache)
        result = run_preprocessing(raw, cache, settings, workers=data_cfg["preprocess_workers"],
                                   metadata_path=data_cfg["metadata"], progress=progress)
        _record_cache_source(raw, cache)
        if result.done or result.failures:
            log(summary_line(result, cache))
        if result.failures:
            log(format_failures(result.failures))
    table = load_case_table(cache)
    split_path = cache / SPLIT_FILE
    if not split_path.is_file():
        stratify = groups_from_table(table, data_cfg["stratify"], settings) if data_cfg["stratify"] else None
        split = make_split(table.index.tolist(), seed=data_cfg["split_seed"], test=data_cfg["test"],
                           val=data_cfg["val"], stratify=stratify, stratify_name=data_cfg["stratify"])
        save_split(split_path, split)
        log(f"wrote {split_path}: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])}")
    return cache, load_split(split_path, known_cases=table.index.tolist())
