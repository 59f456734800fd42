"""Make data and turn it into a training cache: `python preprocess.py {synthesize,run,split,verify,export-nnunet} ...`.

    # the embedded demo cohort: procedural CT-like cases, no files needed
    python preprocess.py synthesize --out raw/demo --cases 12 --seed 0
    # CT-like intensities around the real KiTS19 label maps (real shapes, geometry, metadata)
    python preprocess.py synthesize --from-labels ../shared/kits19 --out raw/k19 --only case_00002,case_00010
    # a known-bias cohort (SPEC §4): a bias file, and each biased case's twin in raw/low_dose_twins/
    python preprocess.py synthesize --out raw/low_dose --cases 24 --bias configs/bias/low_dose_female.yaml --twins
    # the study's preprocessing into a cache (and a seeded splits.json, unless one exists)
    python preprocess.py run --raw raw/demo --out cache/demo --workers 2
    # a new split, e.g. stratified by sex with a validation fraction
    python preprocess.py split --cache cache/demo --seed 1 --test 50 --val 0.1 --stratify sex --overwrite
    # check every cached file (properties, array shapes, dtypes, checksums, the case table, splits);
    # --repair preprocesses the damaged cases again from the raw folder the cache records
    python preprocess.py verify --cache cache/demo --repair
    # the cohort as an nnU-Net v2 raw dataset (hard links), our split as nnU-Net's fold 0
    python preprocess.py export-nnunet --raw raw/demo --out nnUNet_raw --id 501 --splits cache/demo/splits.json

`export-nnunet` writes NNUNET_RAW/DatasetNNN_Name/ (imagesTr, labelsTr, with a split imagesTs and
labelsTs for the test cases, dataset.json with KiTS19's regions, splits_final.json): files are
hard-linked to the raw ones (copied where that fails, or with --copy), label maps the label scheme
changes are written mapped; a re-run leaves what is already right alone and finishes the rest
(data/nnunet.py says how our split maps onto nnU-Net's folds).

`--bias FILE` (both generators) applies a bias file (data/bias.py, configs/bias/): each case's
effect is recorded in kits.json as `synthetic_bias`, and OUT/synthesis.json records the spec, so
a later run into OUT with another spec is refused. `--twins` also writes every case that has an
effect without it (same anatomy, same random draws, same case id) into the sibling folder
OUT_twins/, a KiTS-layout cohort of its own (`evaluate.py --ckpt X --data OUT_twins`): twins are
never part of OUT, so no split can train on them. A bad bias file is a one-line error naming
the file and the key (exit status 2).

Settings default to the study's values (SPEC §1); `--config FILE` reads them from the
`data.preprocess` section of a YAML config, and the flags below override single values.
Errors about data are one line naming the case; `--debug` shows tracebacks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.arguments import amount, grid, numbers, whole
from data.errors import CaseError, format_failures, report_error
from data.untrusted import case_list
from engine.interrupts import Interrupted, on_interrupt
from engine.interrupts import install as install_interrupts, report as report_interrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    syn = sub.add_parser("synthesize", help="write a synthetic KiTS-layout cohort (imaging, segmentation, kits.json)")
    syn.add_argument("--out", required=True, type=Path, help="folder to write the cohort into")
    syn.add_argument("--from-labels", type=Path, help="synthesise CT around the label maps of this KiTS folder")
    syn.add_argument("--only", type=case_list, help="with --from-labels: comma-separated case ids")
    syn.add_argument("--metadata", type=Path, help="with --from-labels: metadata JSON (default DIR/kits.json)")
    syn.add_argument("--cases", type=whole(minimum=1), help="procedural: number of cases")
    syn.add_argument("--shape", type=grid(minimum=4), help="procedural: grid z,y,x (default: the generator's demo size)")
    syn.add_argument("--fov", choices=["abdomen", "kidneys"], default=None,
                     help="procedural: field of view written, the whole abdomen (default) or a box "
                          "around the kidneys and tumors with a 25 mm margin")
    syn.add_argument("--seed", type=whole(minimum=0), default=0, help="random seed (default 0)")
    syn.add_argument("--bias", type=Path, metavar="FILE",
                     help="bias specification (YAML, e.g. configs/bias/low_dose_female.yaml): group-conditioned "
                          "noise, slice_mm, contrast, blur, tumor_scale, label_noise, share, hidden")
    syn.add_argument("--label-scheme", help="with --from-labels: how the label values map onto ours, like "
                     "`run --label-scheme`: kits19 (default), kits23-cyst-kidney, kits23-cyst-background, "
                     "or a map like 0:0,1:1,2:2,3:1; the written label maps hold the mapped values")
    syn.add_argument("--twins", action="store_true",
                     help="with --bias: also write each biased case without its effect into OUT_twins/")
    syn.add_argument("--no-progress", action="store_true")

    run = sub.add_parser("run", help="preprocess a KiTS-layout folder into a training cache")
    run.add_argument("--raw", required=True, type=Path, help="KiTS-layout folder with imaging and segmentation")
    run.add_argument("--out", required=True, type=Path, help="cache folder")
    run.add_argument("--metadata", type=Path, help="metadata JSON (default RAW/kits.json)")
    run.add_argument("--cases", type=case_list, help="only these comma-separated case ids")
    run.add_argument("--workers", type=whole(minimum=1, maximum=256), default=1, help="parallel worker processes (default 1)")
    run.add_argument("--overwrite", action="store_true", help="redo every case if the cache has other settings")
    run.add_argument("--config", type=Path, help="YAML config whose data.preprocess section gives the settings")
    run.add_argument("--spacing", type=numbers(3, positive=True), help="target spacing z,y,x in mm (default 3.22,1.62,1.62)")
    run.add_argument("--clip", type=numbers(2), help="HU window low,high (default -79,304)")
    run.add_argument("--norm", type=numbers(2), help="normalisation mean,std (default 101,76.9)")
    run.add_argument("--label-scheme", help="kits19 (default), kits23-cyst-kidney, kits23-cyst-background, "
                     "or a map like 0:0,1:1,2:2,3:1")
    run.add_argument("--split-seed", type=whole(minimum=0), default=0, help="seed of the splits.json written when none exists")
    run.add_argument("--no-progress", action="store_true")

    ver = sub.add_parser("verify", help="check every file of a training cache (exit 1 on a problem)")
    ver.add_argument("--cache", required=True, type=Path, help="preprocessed cache folder")
    ver.add_argument("--repair", action="store_true",
                     help="preprocess the damaged cases again from the raw folder the cache records")
    ver.add_argument("--raw", type=Path, help="with --repair: the raw folder (default: CACHE/source.json's)")
    ver.add_argument("--workers", type=whole(minimum=1, maximum=256), default=1, help="with --repair: parallel worker processes")
    ver.add_argument("--no-progress", action="store_true")

    spl = sub.add_parser("split", help="write CACHE/splits.json: seeded train/val/test split")
    spl.add_argument("--cache", required=True, type=Path, help="preprocessed cache folder (with cases.csv)")
    spl.add_argument("--seed", type=whole(minimum=0), default=0)
    spl.add_argument("--test", type=amount, default=None,
                     help="test cases: a count, or a fraction < 1 (default 50/210, the study's 50 of 210)")
    spl.add_argument("--val", type=amount, default=0.0, help="validation: a count or a fraction of train")
    spl.add_argument("--stratify", help="grouping attribute to stratify by (sex, age, sex,age, ...)")
    spl.add_argument("--overwrite", action="store_true", help="replace an existing splits.json")

    nn = sub.add_parser("export-nnunet", help="write a KiTS-layout folder as an nnU-Net v2 raw dataset")
    nn.add_argument("--raw", required=True, type=Path, help="KiTS-layout folder with imaging and segmentation")
    nn.add_argument("--out", required=True, type=Path, help="nnU-Net's raw folder ($nnUNet_raw)")
    nn.add_argument("--id", required=True, type=whole(minimum=1, maximum=999), help="dataset id, 1..999: DatasetNNN_Name")
    nn.add_argument("--name", default="KiTS19Fair", help="dataset name (default KiTS19Fair)")
    nn.add_argument("--metadata", type=Path, help="metadata JSON (default RAW/kits.json)")
    nn.add_argument("--cases", type=case_list, help="only these comma-separated case ids (no --splits)")
    nn.add_argument("--splits", type=Path, metavar="SPLITS_JSON",
                    help="our split (e.g. CACHE/splits.json): train+val to imagesTr, test to imagesTs, and "
                         "splits_final.json with fold 0 = our train / val")
    nn.add_argument("--preprocessed", type=Path, metavar="DIR",
                    help="nnU-Net's preprocessed folder ($nnUNet_preprocessed): also write the split there")
    nn.add_argument("--label-scheme", default="kits19", help="kits19 (default), kits23-cyst-kidney, "
                    "kits23-cyst-background, or a map like 0:0,1:1,2:2,3:1; changed label maps are written mapped")
    nn.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    nn.add_argument("--overwrite", action="store_true",
                    help="replace files with other content and remove case files this export would not write")
    nn.add_argument("--no-progress", action="store_true")
    return parser


def cmd_synthesize(args) -> int:
    from data import synthetic
    from data.bias import load_bias
    if args.twins and args.bias is None:
        raise SystemExit("error: --twins needs --bias FILE (twins are the cases without their bias)")
    bias = load_bias(args.bias) if args.bias is not None else None
    if args.label_scheme is not None:
        from data.labels import LabelScheme
        try:
            LabelScheme.parse(args.label_scheme)
        except ValueError as exc:
            raise SystemExit(f"error: --label-scheme: {exc}") from None
    if args.from_labels is not None:
        if args.cases is not None or args.shape is not None or args.fov is not None:
            raise SystemExit("error: --cases/--shape/--fov are for the procedural generator, not --from-labels")
        written, failures = synthetic.write_cohort_from_labels(
            args.from_labels, args.out, only=args.only, seed=args.seed, metadata_path=args.metadata,
            progress=not args.no_progress, bias=bias, twins=args.twins, label_scheme=args.label_scheme)
    else:
        if args.label_scheme is not None:
            raise SystemExit("error: --label-scheme goes with --from-labels (procedural cases are written in ours)")
        if args.cases is None:
            raise SystemExit("error: give --cases N (procedural) or --from-labels DIR")
        if args.only or args.metadata:
            raise SystemExit("error: --only/--metadata go with --from-labels")
        written = synthetic.write_procedural_cohort(args.out, n_cases=args.cases, seed=args.seed,
                                                    shape=args.shape, progress=not args.no_progress,
                                                    bias=bias, twins=args.twins, fov=args.fov or "abdomen")
        failures = []
    print(f"synthesised {len(written)} case(s) -> {args.out}")
    if bias is not None:
        print(f"bias {args.bias}: per-case effects in {args.out / 'kits.json'} (synthetic_bias)"
              + (f"; twins in {synthetic.twins_dir(args.out)}" if args.twins else ""))
    if failures:
        print(format_failures(failures), file=sys.stderr)
        return 1
    return 0


def settings_from_args(args):
    from data.preprocessing import PreprocessSettings
    values = {}
    if args.config is not None:
        from data.untrusted import read_yaml
        config = read_yaml(args.config) or {}
        data = (config.get("data") or {}) if isinstance(config, dict) else None
        section = (data.get("preprocess") or {}) if isinstance(data, dict) else None
        if not isinstance(section, dict):
            raise CaseError(str(args.config), "a config is a mapping of sections whose data.preprocess section "
                                              "maps preprocessing settings to values")
        values.update(section)
    for flag, key in (("spacing", "target_spacing"), ("clip", "clip"), ("label_scheme", "label_scheme")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    if args.norm is not None:
        values["mean"], values["std"] = args.norm
    try:
        return PreprocessSettings.from_dict(values)
    except ValueError as exc:
        raise CaseError(str(args.config or "settings"), str(exc)) from None


def cmd_run(args) -> int:
    from data.preprocessing import run_preprocessing, summary_line
    from data.splits import make_split, save_split
    from data.lock import FolderLock
    settings = settings_from_args(args)
    with FolderLock(args.out):   # not while train.py (a SLURM task) prepares the same cache
        result = run_preprocessing(args.raw, args.out, settings, workers=args.workers, metadata_path=args.metadata,
                                   cases=args.cases, overwrite=args.overwrite, progress=not args.no_progress)
        split_path = args.out / "splits.json"
        if result.rows and not split_path.exists():
            save_split(split_path, make_split([r["case_id"] for r in result.rows], seed=args.split_seed))
            print(f"wrote {split_path} (seed {args.split_seed}); `preprocess.py split` makes others")
    print(summary_line(result, args.out))
    if result.failures:
        print(format_failures(result.failures), file=sys.stderr)
        return 1
    return 0


def cmd_split(args) -> int:
    from data.cache import groups_from_table, load_cache_settings, load_case_table
    from data.splits import STUDY_TEST_FRACTION, make_split, save_split
    table = load_case_table(args.cache)
    stratify = None
    if args.stratify:
        stratify = groups_from_table(table, args.stratify, load_cache_settings(args.cache))
    try:
        split = make_split(table.index.tolist(), seed=args.seed,
                           test=STUDY_TEST_FRACTION if args.test is None else args.test, val=args.val,
                           stratify=stratify, stratify_name=args.stratify)
        save_split(args.cache / "splits.json", split, overwrite=args.overwrite)
    except FileExistsError:
        raise CaseError(str(args.cache / "splits.json"), "exists; pass --overwrite to replace it") from None
    except ValueError as exc:
        raise CaseError(str(args.cache / "splits.json"), str(exc)) from None
    counts = ", ".join(f"{k} {len(split[k])}" for k in ("train", "val", "test"))
    print(f"wrote {args.cache / 'splits.json'}: {counts} (seed {args.seed})")
    return 0


def cmd_verify(args) -> int:
    from data.verify import format_report, repair_cache, verify_cache
    report = verify_cache(args.cache)
    print(format_report(report))
    if args.repair and not report.ok:
        from data.lock import FolderLock
        print(f"repairing: preprocessing {len(report.damaged_cases)} case(s) again", flush=True)
        with FolderLock(args.cache):
            report = repair_cache(args.cache, raw=args.raw, workers=args.workers, progress=not args.no_progress)
        print(format_report(report))
    return 0 if report.ok else 1


def cmd_export_nnunet(args) -> int:
    import os

    from data.nnunet import SPLITS_FILE, export_raw_dataset
    result = export_raw_dataset(args.raw, args.out, dataset_id=args.id, name=args.name, metadata_path=args.metadata,
                                cases=args.cases, split_path=args.splits, label_scheme=args.label_scheme,
                                preprocessed=args.preprocessed, overwrite=args.overwrite, copy=args.copy,
                                progress=not args.no_progress)
    done = ", ".join(f"{k} {v}" for k, v in sorted(result.actions.items())) or "none"
    print(f"{result.dataset_dir}: imagesTr {len(result.train_ids)} case(s), imagesTs {len(result.test_ids)}; "
          f"case files {done}" + "".join(f"; {path.relative_to(args.out) if path.is_relative_to(args.out) else path} "
                                         f"{action}" for path, action in result.json_files.items()))
    for note in result.notes:
        print(f"note: {note}")
    if result.failures:
        print(format_failures(result.failures), file=sys.stderr)
        return 1
    folder = result.dataset_dir.name
    target = Path(os.environ.get("nnUNet_preprocessed", "$nnUNet_preprocessed")) / folder / SPLITS_FILE
    print(f"next: nnUNet_raw={args.out} nnUNetv2_plan_and_preprocess -d {args.id} --verify_dataset_integrity")
    if result.splits_files and args.preprocessed is None:
        print(f"      (nnU-Net 2.8 copies the split into its preprocessed folder while planning; if yours does not: "
              f"cp {result.splits_files[0]} {target})")
    print(f"      nnUNetv2_train {args.id} 3d_fullres 0"
          + ("" if result.splits_files else f"   (no --splits: nnU-Net makes its own 5-fold split of the "
                                            f"{len(result.train_ids)} cases)"))
    return 0


KEPT_ON_INTERRUPT = {
    "synthesize": "the cases written completely so far are kept: the same command continues",
    "run": "the cases preprocessed so far are kept: the same command continues",
    "split": "splits.json is as it was",
    "verify": "the cases repaired so far are kept: the same command continues",
    "export-nnunet": "the files placed so far are kept: the same command continues",
}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"synthesize": cmd_synthesize, "run": cmd_run, "split": cmd_split, "verify": cmd_verify,
                "export-nnunet": cmd_export_nnunet}
    on_interrupt(lambda exc: f"during {args.command}; {KEPT_ON_INTERRUPT[args.command]}")
    try:
        return commands[args.command](args)
    except Exception as exc:   # bad input of any kind: one line (Ctrl-C and SIGTERM are not Exceptions)
        return report_error(exc, debug=args.debug)


if __name__ == "__main__":
    install_interrupts()
    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(report_interrupt(exc, debug="--debug" in sys.argv))
