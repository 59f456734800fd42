"""A run's data: the cache made ready, its split, the group columns and the run's group index.

Usage:
    data = load_run_data(cfg, progress=True, log=print, is_main=True, distributed=False)
    data.train_ids, data.val_ids, data.test_ids
    data.index.position("case_00007")        # the run's group index (fairness.attribute)
    data.groups_by_attr["age"]["case_00007"]  # the reported attributes (data.groups)
    prepare_datasets([run.cfg for run in plan], progress=True, log=print)   # train.py --prepare-only
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data.cache import groups_from_table, load_cache_settings, load_case_table
from data.group_index import GroupIndex
from data.groups import parse_attribute
from data.prepare import prepare_data
from engine.runtime import barrier


@dataclass
class RunData:
    cache: Path
    split: dict
    table: pd.DataFrame
    settings: object                 # the cache's PreprocessSettings
    groups_by_attr: dict             # {attribute: {case_id: group}} for every reported attribute
    orders: dict                     # {attribute: natural group order or None}
    index: GroupIndex                # the run's group index (fairness.attribute)
    train_ids: list
    val_ids: list                    # the validation split, or the test split when there is none
    test_ids: list

    @property
    def has_validation_split(self) -> bool:
        return bool(self.split["val"])

    def patch_note(self, patch) -> str:
        """A note when the patch is larger than every training case along some axis (zero padding)."""
        shapes = self.table.loc[self.train_ids, "resampled_shape"]
        largest = [max(int(str(s).split("x")[a]) for s in shapes) for a in range(3)]
        if not any(p > m for p, m in zip(patch, largest)):
            return ""
        return (f"note: patch {tuple(patch)} is larger than every training case (largest "
                f"{'x'.join(map(str, largest))} per axis): cases are zero-padded")


def load_run_data(cfg: dict, *, progress: bool, log, is_main: bool = True, distributed: bool = False,
                  index_groups=None) -> RunData:
    """Prepare (rank 0 first under DDP) and read the run's data; `index_groups` fixes the group
    order (a resumed run's checkpoint)."""
    if is_main:
        cache, split = prepare_data(cfg["data"], progress=progress, log=log)
    barrier(distributed)
    if not is_main:
        cache, split = prepare_data(cfg["data"], progress=False, log=lambda *a: None)
    table = load_case_table(cache)
    settings = load_cache_settings(cache)
    attrs = cfg["data"]["groups"]
    groups_by_attr = {attr: groups_from_table(table, attr, settings) for attr in attrs}
    orders = {attr: parse_attribute(attr, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges).order
              for attr in attrs}
    index = GroupIndex.from_table(table, settings, cfg["fairness"]["attribute"], groups=index_groups)
    val_ids = split["val"] or split["test"]
    if cfg["eval"]["max_cases"]:
        val_ids = val_ids[:cfg["eval"]["max_cases"]]
    return RunData(cache=cache, split=split, table=table, settings=settings, groups_by_attr=groups_by_attr,
                   orders=orders, index=index, train_ids=split["train"], val_ids=val_ids, test_ids=split["test"])


def prepare_datasets(cfgs: list[dict], *, progress: bool, log) -> None:
    """Prepare the data of every distinct data section among `cfgs` (a batch's runs), each once:
    what the runs would do first, done ahead (the SLURM preprocessing job)."""
    seen = set()
    for cfg in cfgs:
        key = json.dumps(cfg["data"], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        cache, split = prepare_data(cfg["data"], progress=progress, log=log)
        log(f"data ready in {cache}: {len(split['train'])} train, {len(split['val'])} validation, "
            f"{len(split['test'])} test cases")
