"""Run folders: a new run's folder, the "run finished" marker, and the plan of a --seeds/--sweep batch.

A run folder holds config.yaml, TensorBoard events, last.pt / best.pt and eval/. A run is
finished exactly when eval/per_case.csv exists: it is written last, atomically, after every
other test table, so a run killed while writing its tables is resumed by its batch, not skipped.

Usage:
    run_dir = new_run_dir(cfg, config_path, name)     # checked now, created later by create_run_dir
    write_test_tables(run_dir / "eval", per_case, audits, log=print)
    is_finished(run_dir)
    plan = plan_batch(args.config, args.sweep, args.seeds, args.set, args.name)
    run = pick_task(plan, 3)          # --task 3: the batch's fourth run (a SLURM array task)

The plan's order is the order runs are trained in and the task numbers of `--task` and of the
SLURM array (engine/slurm.py): each sweep entry in the file's order, each seed in --seeds order.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from config import ConfigError, load_config, load_sweep, yaml_load
from data.atomic import write_csv
from engine.builders import check_choices

FINISHED = Path("eval") / "per_case.csv"


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED).is_file()


def new_run_dir(cfg: dict, config_path, name) -> Path:
    """The new run's folder, checked now (it must not exist and must be creatable) and made later,
    once data and model are ready, so a run that fails to start leaves no empty folder behind."""
    name = name or cfg["train"]["name"] or f"{Path(config_path).stem if config_path else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg["train"]["out_dir"]) / name
    if run_dir.exists():
        raise ConfigError(f"run folder {run_dir} exists; choose another --name or --resume it")
    ancestor = run_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = ("Not a directory" if not ancestor.is_dir()
               else "Permission denied" if not os.access(ancestor, os.W_OK | os.X_OK) else None)
    if problem:
        raise ConfigError(f"cannot create the run folder {run_dir} ({problem}); check train.out_dir")
    return run_dir


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"run folder {run_dir} appeared while this run was starting; choose another --name") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir} ({exc.strerror or exc}); "
                          "check train.out_dir") from None


def planted_bias_line(cache) -> str:
    """One sentence on the bias planted in a synthetic cohort (its cache's synthesis record); ''
    when nothing was planted."""
    from data.bias import describe_bias
    from data.synthetic import read_synthesis

    record = read_synthesis(cache)
    if not record or not record.get("bias"):
        return ""
    attrs = " and ".join(record["bias"])
    return (f"planted in this cohort ({record.get('bias_file')}): {describe_bias(record['bias'])}; "
            f"compare the {attrs} table above with it (a model that trained on the affected cases may have "
            "learned part of it away; counterfactual twins, data.synthesize_twins, measure it case by case)")


def training_interrupted(trainer, run_dir: Path, exc, *, in_batch: bool = False) -> str:
    """What an interrupted run kept and how to continue; on SIGTERM (the job is about to be
    killed) the state of the last finished epoch is written first, if last.pt is older."""
    wrote = trainer.save_boundary(run_dir) if exc.name == "SIGTERM" else None
    epochs = trainer.tc["epochs"]
    line = (f"at epoch {trainer.current_epoch}" if trainer.saved_epoch != epochs
            else f"after training (epoch {epochs} of {epochs}), before the test tables were written")
    if wrote is not None:
        line += f"; wrote {Path(run_dir) / 'last.pt'}, the state at the end of epoch {wrote}"
    if trainer.saved_epoch is None:
        return (line + f"; no checkpoint yet (train.checkpoint_every {trainer.tc['checkpoint_every']}): "
                f"remove {run_dir} and start again")
    how = "the same command (the batch continues)" if in_batch else f"python train.py --resume {run_dir}"
    return (line + f"; last complete checkpoint {Path(run_dir) / 'last.pt'} (epoch {trainer.saved_epoch}); "
            f"continue with: {how}")


def write_test_tables(eval_dir: Path, per_case, audits: dict, *, log=print, page=None) -> None:
    """The group tables and their summaries, then (page: a callable taking (eval_dir, per_case,
    {attribute: significance lines})) the report page, then per_case.csv (the "finished" marker),
    each atomically."""
    import pandas as pd

    from fairness.audit import format_audit
    from fairness.significance import holm_family

    eval_dir.mkdir(exist_ok=True)
    holm_family([a.significance for a in audits.values() if a.significance])   # one family per screen
    lines = {}
    for attr, audit in audits.items():
        write_csv(audit.table, eval_dir / f"groups_{attr}.csv")
        figures = {k: v for k, v in {**audit.summary, **(audit.significance or {})}.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        write_csv(pd.DataFrame({"value": figures}).rename_axis("figure"), eval_dir / f"summary_{attr}.csv")
        text = format_audit(audit)
        lines[attr] = text.splitlines()[len(audit.table) + 1:]      # below the table: SD, SER, ..., the tests
        log(f"\ntest split, grouped by {attr}:\n{text}")
    if page is not None:
        page(eval_dir, per_case, lines)
    write_csv(per_case, eval_dir / "per_case.csv", index=False)


def discover_test_failures(cfg: dict, table, per_case, eval_dir: Path, *, log=print, embed=None) -> None:
    """eval.discover: failing subgroups of the test split (fairness/discovery.py), with the raw
    folder's metadata (data.metadata, else data.raw's kits.json) or, without it, the case table's
    sex, age and BMI, and (embed: a callable giving the model's pooled bottleneck vectors, called
    when the embedding family is searched) the model's own view; slices.csv, slice_members.csv
    and embeddings.csv in eval/."""
    from data.cache import table_metadata
    from data.kits import METADATA_NAME, load_metadata
    from fairness.discovery import feature_families, run_discovery

    data = cfg["data"]
    path = Path(data["metadata"]) if data["metadata"] else (Path(data["raw"]) / METADATA_NAME if data["raw"] else None)
    if path is not None and path.is_file():
        metadata = load_metadata(path)
    else:
        metadata = table_metadata(table)
    eval_dir.mkdir(exist_ok=True)
    families = feature_families(cfg["eval"]["discover_features"])
    embeddings = embed() if embed is not None and "embedding" in families else None
    run_discovery(per_case, metadata, families=families, seed=cfg["train"]["seed"], out_dir=eval_dir,
                  region=cfg["eval"]["discover_region"], embeddings=embeddings, log=log)


@dataclass(frozen=True)
class PlannedRun:
    name: str            # NAME/[ENTRY/]seedS
    sets: list           # the --set overrides of this run
    run_dir: Path
    cfg: dict


def plan_batch(config, sweep, seeds, sets, name) -> tuple[Path, str, list[PlannedRun]]:
    """(config path, batch name, runs) of a --seeds / --sweep command; every config validated."""
    if sweep is not None:
        loaded = load_sweep(sweep)
        config_path, entries = loaded.config, loaded.runs
        if config is not None and Path(config).resolve() != config_path:
            raise ConfigError(f"{sweep} names its own config ({config_path}); drop --config")
        batch = name or Path(sweep).stem
    else:
        if config is None:
            raise ConfigError("give --config FILE with --seeds")
        config_path, entries = config, {"": []}
        batch = name or Path(config).stem
    plan = []
    for entry, entry_sets in entries.items():
        for seed in seeds or [None]:
            run_sets = list(entry_sets) + list(sets) + ([f"train.seed={seed}"] if seed is not None else [])
            cfg = load_config(config_path, run_sets)
            check_choices(cfg)
            run_name = "/".join(part for part in (batch, entry, f"seed{seed}" if seed is not None else "") if part)
            plan.append(PlannedRun(run_name, run_sets, Path(cfg["train"]["out_dir"]) / run_name, cfg))
    for run in plan:
        saved = run.run_dir / "config.yaml"
        if saved.is_file() and load_config(saved=yaml_load(saved)) != run.cfg:
            raise ConfigError(f"{run.run_dir} holds a run with another config; choose another --name")
    return config_path, batch, plan


def batch_folder(plan: list[PlannedRun], batch: str) -> Path:
    """train.out_dir/NAME, the folder the batch's runs fill (its first run's train.out_dir)."""
    return Path(plan[0].cfg["train"]["out_dir"]) / batch


def pick_task(plan: list[PlannedRun], task: int) -> PlannedRun:
    """Run number `task` of the batch (0-based); out of range is a one-line error."""
    if not 0 <= task < len(plan):
        raise ConfigError(f"--task {task} is out of range: this batch has {len(plan)} run(s), tasks "
                          f"0-{len(plan) - 1}")
    return plan[task]
