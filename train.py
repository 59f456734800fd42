"""Train a segmentation network with the study's recipe: `python train.py --config configs/X.yaml`.

    python train.py --config configs/demo.yaml                       # the embedded demo, CPU-sized
    python train.py --config configs/baseline_nnunet.yaml --set train.epochs=2 --set train.workers=0
    python train.py --resume runs/baseline_nnunet-20261122-101500    # continue from last.pt
    python train.py --config configs/resm_sex.yaml --seeds 0 1 2     # one run per seed, resumable
    torchrun --nproc_per_node=2 train.py --config configs/baseline_nnunet.yaml   # DDP
    # the same batch on a SLURM cluster: a preprocessing job and an array of one task per run
    python train.py --config configs/resm_sex.yaml --seeds 0 1 2 --slurm --slurm-opt partition=gpu time=48:00:00
    python train.py --config configs/resm_sex.yaml --seeds 0 1 2 --task 1   # run 1 of it (seed 1) alone
    python train.py --config configs/resm_sex.yaml --seeds 0 1 2 --prepare-only   # its data, nothing else
    python train.py --convert-checkpoint old/last.pt      # a checkpoint of fairkits < format 3 (trusted files only)

Reads top to bottom as phases: resolve the run -> data -> model and mitigations -> fit -> test
tables. The machinery lives in engine/ (runtime, data, trainer, scoring, run folders), the
mitigations in mitigations/; this file names none of them. Everything lands in the run folder
(never an existing one unless resuming): config.yaml, TensorBoard events, last.pt / best.pt, and
eval/ with the group tables and per_case.csv, written last (it marks the run finished).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from config import ConfigError, apply_fp32_fallback, dump_config, load_config
from data.atomic import write_text
from data.errors import report_error
from engine.builders import check_choices
from engine.fit import Env, Trainer, TrainingStopped
from engine.interrupts import Interrupted, on_interrupt
from engine.interrupts import install as install_interrupts, report as report_interrupt
from engine.logging import log_audits
from engine.rundata import load_run_data, prepare_datasets
from engine.runs import (batch_folder, create_run_dir, discover_test_failures, is_finished, new_run_dir, pick_task,
                         plan_batch, planted_bias_line, training_interrupted, write_test_tables)
from engine.slurm import submit, train_command, write_scripts
from fairness.recipe import THIS_MODEL
from engine.runtime import amp_settings, barrier, pick_device, seed_everything, setup_distributed, unwrap
from models.checkpoint import FORMAT_VERSION, convert_checkpoint, git_commit, load_checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML config (sections data, model, loss, sampler, optim, train, eval, fairness)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", type=Path, help="run folder (or checkpoint) to continue from its last.pt")
    p.add_argument("--name", help="run folder name under train.out_dir (default: config name + time)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="train once per seed (the study averages 0 1 2): runs NAME/seedS, resumable")
    p.add_argument("--sweep", type=Path, metavar="FILE",
                   help="a sweep file (configs/sweeps/): one run per entry, each its config plus overrides")
    p.add_argument("--task", type=int, metavar="I",
                   help="with --seeds / --sweep: train only run I of the batch (0-based, the order --slurm "
                        "lists), exactly as the batch would; a SLURM array task runs --task $SLURM_ARRAY_TASK_ID")
    p.add_argument("--prepare-only", action="store_true",
                   help="prepare the data of the run or batch (synthesis, preprocessing, split) and stop")
    p.add_argument("--slurm", action="store_true",
                   help="with --seeds / --sweep: write SLURM scripts into BATCH/slurm/ (a preprocessing job, "
                        "an array of one task per run, submit.sh) and print how to submit them")
    p.add_argument("--slurm-opt", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="with --slurm: an sbatch option (partition=gpu gpus=1 time=48:00:00 mem=64G cpus=8 "
                        "account=X; prep.KEY=VALUE for the preprocessing job; see engine/slurm.py)")
    p.add_argument("--submit", action="store_true", help="with --slurm: submit the scripts with sbatch")
    p.add_argument("--convert-checkpoint", type=Path, metavar="OLD_PT",
                   help="rewrite a checkpoint of an earlier fairkits as data (format 3) beside it (OLD-v3.pt, or "
                        "--out). It unpickles OLD_PT, which can run code: only for a file you trust")
    p.add_argument("--out", type=Path, metavar="NEW_PT", help="with --convert-checkpoint: where to write it")
    p.add_argument("--no-progress", action="store_true", help="no progress display (logs only)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p.parse_args(argv)


def check_modes(args) -> None:
    """The flags that only make sense together."""
    batch = bool(args.seeds or args.sweep)
    for flag, given in (("--task", args.task is not None), ("--slurm", args.slurm)):
        if given and not batch:
            raise ConfigError(f"{flag} goes with a batch: add --seeds S... (e.g. --seeds 0) or --sweep FILE")
    for flag, given in (("--slurm-opt", bool(args.slurm_opt)), ("--submit", args.submit)):
        if given and not args.slurm:
            raise ConfigError(f"{flag} goes with --slurm")
    if args.slurm and (args.task is not None or args.prepare_only or args.resume is not None):
        raise ConfigError("--slurm writes the scripts that run --prepare-only and --task; drop --task / "
                          "--prepare-only / --resume")
    if args.out is not None and args.convert_checkpoint is None:
        raise ConfigError("--out goes with --convert-checkpoint")
    if args.convert_checkpoint is not None and (args.config or args.seeds or args.sweep or args.resume or args.set):
        raise ConfigError("--convert-checkpoint converts a file and stops; give it alone (with --out)")
    if args.prepare_only and (args.resume is not None or args.task is not None):
        raise ConfigError("--prepare-only prepares the data of a --config / --seeds / --sweep command; "
                          "drop --resume / --task")


def main(argv=None) -> int:
    args = parse_args(argv)
    check_modes(args)
    if args.convert_checkpoint is not None:
        return convert(args)
    try:
        if args.slurm:
            return write_slurm(args)
        if args.prepare_only:
            return prepare_only(args)
        if args.seeds or args.sweep:
            return run_many(args)
        return train_run(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def convert(args) -> int:
    """--convert-checkpoint: an earlier version's checkpoint, unpickled once at the user's word, as data."""
    print(f"warning: unpickling {args.convert_checkpoint}: this runs whatever code the file holds; "
          "convert only checkpoints you trust", file=sys.stderr, flush=True)
    new = convert_checkpoint(args.convert_checkpoint, args.out)
    print(f"converted {args.convert_checkpoint} -> {new} (format {FORMAT_VERSION}: read as data from now on)")
    return 0


def run_many(args) -> int:
    """Each seed of --seeds, for each entry of --sweep, into train.out_dir/NAME/[ENTRY/]seedS.

    Re-issuing the same command continues the batch: a finished run is kept, an interrupted one
    resumes from its last.pt; a folder whose saved config differs is an error, never reused.
    """
    if args.resume is not None:
        raise ConfigError("--resume continues one run; re-issue the --seeds / --sweep command to continue a batch")
    config_path, batch, plan = plan_batch(args.config, args.sweep, args.seeds, args.set, args.name)
    what = f"{len(plan)} runs in {batch}"
    if args.task is not None:   # one run of the batch (a SLURM array task), otherwise exactly as below
        plan, what = [pick_task(plan, args.task)], f"task {args.task} of {len(plan)} in {batch}"
    rank, _, distributed = setup_distributed()
    done = [run.name for run in plan if is_finished(run.run_dir)]
    todo = [run for run in plan if not is_finished(run.run_dir)]
    barrier(distributed)  # every rank has seen the folders before rank 0 makes new ones
    if rank == 0:
        print(f"{what}: {len(done)} finished, {len(todo)} to train"
              + (f" (kept: {', '.join(done)})" if done else ""), flush=True)
    for i, run in enumerate(todo, 1):
        one = argparse.Namespace(**{**vars(args), "config": config_path, "set": run.sets, "name": run.name,
                                    "resume": None, "in_batch": True})
        if (run.run_dir / "last.pt").is_file():
            one.resume, one.set = run.run_dir, []
        elif run.run_dir.exists():
            raise ConfigError(f"{run.run_dir} exists without last.pt (stopped before its first checkpoint); remove it")
        if rank == 0:
            print(f"\n=== run {i}/{len(todo)}: {run.name}{' (resuming)' if one.resume else ''}", flush=True)
        train_run(one)
    return 0


def prepare_only(args) -> int:
    """--prepare-only: the data every run of the command needs, prepared once (the SLURM
    preprocessing job); the runs then find it ready."""
    if args.seeds or args.sweep:
        cfgs = [run.cfg for run in plan_batch(args.config, args.sweep, args.seeds, args.set, args.name)[2]]
    elif args.config is None:
        raise ConfigError("give --config FILE (or --seeds / --sweep) with --prepare-only")
    else:
        cfgs = [load_config(args.config, args.set)]
        check_choices(cfgs[0])
    prepare_datasets(cfgs, progress=not args.no_progress, log=print)
    return 0


def write_slurm(args) -> int:
    """--slurm: the batch's SLURM scripts (preprocessing job, training array, submit.sh); --submit
    submits them."""
    _, batch, plan = plan_batch(args.config, args.sweep, args.seeds, args.set, args.name)
    flags = [flag for flag, on in (("--no-progress", args.no_progress), ("--debug", args.debug)) if on]
    command = train_command(python=sys.executable, entry=Path(__file__), config=args.config, sweep=args.sweep,
                            seeds=args.seeds, name=args.name, sets=args.set, flags=flags)
    scripts = write_scripts(folder=batch_folder(plan, batch) / "slurm", batch=batch, runs=[r.name for r in plan],
                            command=command, workdir=Path.cwd(), options=args.slurm_opt, cfgs=[r.cfg for r in plan],
                            sweep=args.sweep is not None)
    print(scripts.describe())
    if args.submit:
        prep, array = submit(scripts)
        print(f"submitted: preprocessing job {prep}; training array {array} (tasks {scripts.array_range}), "
              f"after job {prep} succeeds; logs in {scripts.logs}")
    return 0


def resolve_run(args, is_main: bool, distributed: bool):
    """(config, run folder, checkpoint to resume or None): a new run's, or the resumed one's."""
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        run_dir = args.resume if args.resume.is_dir() else args.resume.parent
        try:
            cfg = load_config(saved=ckpt["config"], overrides=args.set)  # e.g. --set train.epochs=300
        except ConfigError as exc:
            raise ConfigError(f"{args.resume}: cannot resume: {exc}") from None
        check_choices(cfg)
        return cfg, run_dir, ckpt
    if args.config is None:
        raise ConfigError("give --config FILE (or --resume RUN)")
    cfg = load_config(args.config, args.set)
    check_choices(cfg)
    run_dir = new_run_dir(cfg, args.config, args.name) if is_main else None
    if distributed:
        holder = [str(run_dir) if is_main else None]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    return cfg, run_dir, None


def open_run_folder(run_dir: Path, cfg: dict, resumed: bool):
    """Create the folder (a new run), save the resolved config, open TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter
    if not resumed:
        create_run_dir(run_dir)
    write_text(run_dir / "config.yaml", dump_config(cfg))
    return SummaryWriter(str(run_dir))


def test_tables(trainer: Trainer, run_dir: Path, writer, log) -> None:
    """The test split's per-case Dice and the study's group tables; per_case.csv last."""
    data = trainer.data
    # best.pt is chosen on the validation cases; with no validation split those are the test
    # cases, and testing the weights picked on them would flatter the result: use the last.
    if data.has_validation_split and (run_dir / "best.pt").is_file():
        unwrap(trainer.model).load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        log("evaluating best.pt (chosen on the validation split) on the test split")
    else:
        log("evaluating the final weights on the test split (no validation split: best.pt was "
            "chosen on the test cases, so it is not used for the test tables)")
    last = trainer.last_validation
    if not data.has_validation_split and last and last[0] == trainer.step and last[1] == list(data.test_ids):
        per_case = last[2]   # the final validation pass scored these very cases with these weights
    else:
        per_case, _ = trainer.score(data.test_ids)
    audits = log_audits(writer, per_case, data.groups_by_attr, data.orders, trainer.step, "test",
                        covariates=trainer.cfg["eval"]["adjust_for"])
    if trainer.cfg["eval"]["discover"]:
        discover_test_failures(trainer.cfg, data.table, per_case, run_dir / "eval", log=log,
                               embed=lambda: trainer.embed(per_case["case_id"].tolist()))
    write_test_tables(run_dir / "eval", per_case, audits, log=log,
                      page=(lambda folder, table, lines: test_page(trainer, run_dir, folder, table, lines, log))
                      if trainer.cfg["eval"]["report"] else None)
    log(f"\n{THIS_MODEL}")
    planted = planted_bias_line(data.cache)
    if planted:
        log(f"\n{planted}")
    page = run_dir / "eval" / "report.html"
    log(f"\nrun folder: {run_dir} (" + (f"the audit as a page: {page}; " if page.is_file() else "")
        + f"TensorBoard: tensorboard --logdir {run_dir})")


def test_page(trainer: Trainer, run_dir: Path, folder: Path, per_case, lines: dict, log) -> None:
    """eval/report.html: the test tables as one page (fairness/html_report.py)."""
    import shlex

    from fairness.html_report import ReportContext, config_digest, write_html_report

    from data.atomic import write_figure
    from fairness.figures import group_boxplot
    import matplotlib.pyplot as plt

    for attr in lines:      # the box plots the page shows (evaluate.py writes them with its tables)
        fig = group_boxplot(per_case, attr, order=trainer.data.orders.get(attr),
                            title=f"{run_dir.name}: Dice per case by {attr}")
        write_figure(folder / f"box_{attr}.png", fig)
        plt.close(fig)
    cfg = trainer.cfg
    context = ReportContext(
        title=f"{run_dir.name}: test split, {len(per_case)} cases", command="python train.py " + shlex.join(sys.argv[1:]),
        audited=[("run", str(run_dir)), ("cases", f"the test split of {cfg['data']['raw']}"),
                 ("steps trained", str(trainer.step))],
        commit=git_commit(), config_digest=config_digest(cfg), seeds=str(cfg["train"]["seed"]),
        n_boot="-", n_perm=cfg["eval"].get("n_perm", "-"), lines=lines,
        gallery_absent="no gallery: the test tables score in the preprocessed geometry without writing predictions; "
                       f"python evaluate.py --ckpt {run_dir / 'last.pt'} writes them and its report draws the cases")
    log(f"report: {write_html_report(folder, context, per_case)}")


def train_run(args) -> int:
    rank, world, distributed = setup_distributed()
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)

    # --- the run: its config, folder, and the checkpoint it continues ------------------------------
    cfg, run_dir, resume_ckpt = resolve_run(args, is_main, distributed)
    device = pick_device(cfg["train"]["device"], rank, distributed)
    amp_dtype, use_scaler = amp_settings(cfg["train"]["amp"], device)
    if device.type == "cpu" and cfg["train"]["amp"] == "bf16" and amp_dtype is None:
        cfg, applied = apply_fp32_fallback(cfg)
        log("recipe: train.amp=bf16, but this CPU has no native bf16 (AVX512-BF16 / AMX): training in fp32 "
            "(emulated bf16 would be slower)" + (f", with the config's fp32 fallback: {', '.join(applied)}" if applied
                                                 else ""))
    tc = cfg["train"]
    seed_everything(tc["seed"])
    on_interrupt(lambda exc: "while preparing the data; the cases synthesised and preprocessed so far are "
                             "kept: the same command continues")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = tc["cudnn_benchmark"]

    # --- data ------------------------------------------------------------------------------------
    index_groups = (resume_ckpt or {}).get("group_index", {}).get("groups")
    data = load_run_data(cfg, progress=not args.no_progress, log=log, is_main=is_main, distributed=distributed,
                         index_groups=index_groups)
    log(f"data: {len(data.train_ids)} train, {len(data.val_ids)} validation, {len(data.test_ids)} test "
        f"cases from {data.cache}")
    note = data.patch_note(tc["patch_size"])
    if note:
        log(note)

    # --- model and mitigations -------------------------------------------------------------------
    env = Env(device=device, amp_dtype=amp_dtype, use_scaler=use_scaler, rank=rank, world=world,
              distributed=distributed)
    trainer = Trainer(cfg, data, env, log=log)
    if resume_ckpt is not None:
        trainer.resume(resume_ckpt)
        log(f"resumed {run_dir} at epoch {trainer.epoch} (step {trainer.step})")
    trainer.wrap()
    writer = open_run_folder(run_dir, cfg, resumed=resume_ckpt is not None) if is_main else None
    in_batch = getattr(args, "in_batch", False)
    on_interrupt(lambda exc: training_interrupted(trainer, run_dir, exc, in_batch=in_batch))

    # --- fit ---------------------------------------------------------------------------------------
    trainer.fit(run_dir, writer)
    trainer.close()

    # --- the test split: per-case Dice and the study's group tables --------------------------------
    if is_main:
        test_tables(trainer, run_dir, writer, log)
        writer.close()
    barrier(distributed)
    return 0


if __name__ == "__main__":
    install_interrupts()
    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(report_interrupt(exc, debug="--debug" in sys.argv))
    except Exception as exc:   # bad input of any kind: one line (Ctrl-C and SIGTERM are not Exceptions)
        sys.exit(report_error(exc, debug="--debug" in sys.argv, expected=(TrainingStopped,)))
