"""evaluate.py's modes, one function each: run_audit (--pred, --nnunet-summary), run_checkpoints
(--ckpt), run_compare (--compare), group_dice (--group-dice). Each takes the parsed options and
returns the exit status; bad input raises (evaluate.py turns it into one line).

    python evaluate.py --compare runs/baseline runs/resm_sex --group sex   # run_compare, from the shell

From a notebook, call what these call: audit.predictions.score_predictions and the statistics of
fairness/ take plain keyword arguments.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from audit.checkpoints import ckpt_out_dir, evaluate_checkpoint
from audit.compare import compare_metric, compare_out_dir, load_methods, metric_suffix, write_comparison
from audit.predictions import audit_metadata, score_predictions, summary_cases
from audit.results import (FINISHED, discover_failures, discovery_families, save_per_case, write_page,
                           write_reports, write_seed_tables)
from data.errors import CaseError, format_failures
from data.lock import refuse_finished, results_folder
from engine.interrupts import on_interrupt


def run_audit(args) -> int:
    """--pred (label maps scored here) or --nnunet-summary (nnU-Net's scores as they are)."""
    if args.out is not None:   # before the scoring; asked again under the folder's lock
        refuse_finished(args.out, overwrite=args.overwrite, marker=FINISHED)
    if args.nnunet_summary is not None:
        per_case, attributes, failures, notes = summary_cases(args)
        source, title = args.nnunet_summary, f"nnU-Net's scores in {args.nnunet_summary}"
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        if not args.pred.is_dir():
            raise CaseError(str(args.pred), "prediction folder not found")
        per_case, attributes, failures = score_predictions(
            args.pred, args.gt, metadata_path=args.meta, cases=args.cases, label_scheme=args.label_scheme,
            group_specs=args.group, progress=not args.no_progress, metrics=args.metric or ["dice"],
            tolerance_mm=args.surface_tolerance,
            with_image_features=args.discover and "image" in discovery_families(args))
        source, title = args.pred, f"predictions in {args.pred}"
    if per_case.empty:
        print(format_failures(failures), file=sys.stderr)
        raise CaseError(str(source), "no case could be scored")
    # the bootstrap draws by row: one order (by case id) makes the same cases the same audit, whatever
    # order --cases or a summary listed them in
    per_case = per_case.sort_values("case_id", kind="stable", ignore_index=True)
    out = args.out
    with results_folder(out, overwrite=args.overwrite, marker=FINISHED) if out is not None else nullcontext():
        write_reports(per_case, attributes, out, args, title=title, metrics=args.metric or ["dice"])
        if args.discover:
            discover_failures(per_case, audit_metadata(args), out, args, metrics=args.metric or ["dice"])
        what = ([("predictions", str(args.pred)), ("references", str(args.gt))] if args.pred is not None
                else [("nnU-Net summary", str(args.nnunet_summary))])
        write_page(out, per_case, args, title=title, audited=what + [("metadata", str(args.meta or "-"))])
        if out is not None:
            save_per_case(per_case, out)
    print(f"\nscored {len(per_case)} case(s), {len(failures)} failed" + (f"; tables in {out}" if out else ""))
    if failures:
        print(format_failures(failures), file=sys.stderr)
        return 1
    return 0


def run_checkpoints(args) -> int:
    from torch.utils.tensorboard import SummaryWriter

    paths = [Path(p) for p in args.ckpt]
    for path in paths:
        if not path.is_file():
            raise CaseError(str(path), "checkpoint not found")
    all_reports, all_cases, failed = [], [], 0
    for i, path in enumerate(paths):
        out_dir = ckpt_out_dir(path, args, i, len(paths))
        on_interrupt(lambda exc, path=path, out_dir=out_dir:
                     f"while evaluating {path}; the predictions written to {out_dir / 'predictions'} are kept: "
                     "the same command continues from them")
        with results_folder(out_dir, overwrite=args.overwrite, marker=FINISHED):
            per_case, attributes, failures, metrics, metadata, embeddings, config = evaluate_checkpoint(path, args,
                                                                                                        out_dir)
            if per_case.empty:
                print(format_failures(failures), file=sys.stderr)
                raise CaseError(str(path), "no case could be scored")
            writer = SummaryWriter(str(out_dir))
            title = f"{path.parent.name}/{path.name}, {len(per_case)} cases"
            all_reports.append(write_reports(per_case, attributes, out_dir, args, title=title, writer=writer,
                                             metrics=metrics))
            all_cases.append(per_case)
            writer.close()
            if args.discover:
                discover_failures(per_case, metadata, out_dir, args, metrics=metrics, embeddings=embeddings)
            write_page(out_dir, per_case, args, title=title, settings=config,
                       audited=[("model", str(path)), ("cases", str(args.data or "the run's test split"))])
            save_per_case(per_case, out_dir)
        print(f"\n{path}: scored {len(per_case)} case(s), {len(failures)} failed; results in {out_dir}")
        if failures:
            print(format_failures(failures), file=sys.stderr)
            failed += 1
    if len(paths) > 1:
        agg_dir = args.out if args.out is not None else \
            Path(os.path.commonpath([p.parent.resolve() for p in paths])) / f"eval-{paths[0].stem}-seeds"
        with results_folder(agg_dir, overwrite=args.overwrite, marker="checkpoints.txt"):
            write_seed_tables(all_reports, paths, agg_dir, all_cases)
        print(f"\nseed aggregate in {agg_dir}")
    return 1 if failed else 0


def run_compare(args) -> int:
    from fairness.report import compare_display, compare_table

    metric, suffix = compare_metric(args), metric_suffix(args)
    methods, frames, orders = load_methods(args)
    table = compare_table(methods)
    shown = compare_display(table)
    out = compare_out_dir(args)
    with results_folder(out, overwrite=args.overwrite, marker=f"compare{suffix}.csv"):
        write_comparison(table, shown, frames, orders, methods, metric, suffix, out, args)
        write_page(out, None, args, title=f"{len(methods)} methods compared ({metric.label})",
                   audited=[("methods", ", ".join(methods)), ("baseline", str(args.baseline or "-"))],
                   gallery_absent="a comparison draws no cases: each method's own audit folder has its report")
    print(f"\ntables and figures in {out}")
    return 0


def group_dice(args) -> int:
    from fairness import fairness_summary
    groups = {}
    for item in args.group_dice:
        name, sep, value = item.rpartition("=")  # group names may hold "=", like ">=70"
        try:
            dice = float(value)
        except ValueError:
            sep = ""
        if not sep or not name or not math.isfinite(dice if sep else 0.0):
            raise CaseError(item, "expected GROUP=DICE with a finite Dice, e.g. male=84.2")
        if name in groups:
            raise CaseError(item, f"group {name} is given twice ({name}={groups[name]:g} and {item})")
        groups[name] = dice
    s = fairness_summary(groups, overall=args.overall)
    unit = "%" if s["scale"] == "percent" else ""
    print(f"groups {len(groups)}: SD {s['sd']:.2f}{unit}   SER {s['ser']:.2f}   "
          f"worst {s['worst_group']} {s['worst']:g}   gap {s['gap']:.2f}"
          + (f"   ES-Dice {s['es_dice']:.2f}" if args.overall is not None else ""))
    return 0
