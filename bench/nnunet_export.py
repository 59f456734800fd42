"""Does nnU-Net v2 accept our export, and does it score predictions the way our audit reads them?

On a small procedural cohort (kidney field of view) this runs, each step a command as a user types it:
    1. preprocess.py synthesize / run / split   the cohort, its cache and a split (--test, --val)
    2. preprocess.py export-nnunet --splits     the nnU-Net raw dataset, twice: the second run must
                                                leave every file alone (idempotence)
    3. nnU-Net's verify_dataset_integrity       its output printed as it is; PASS when it raises nothing
    4. nnUNetv2_plan_and_preprocess -c 3d_fullres (skip with --skip-plan): nnU-Net plans and
       preprocesses the dataset, and copies our splits_final.json into its preprocessed folder
    5. predictions as nnUNetv2_predict writes them (SimpleITK, the input's geometry; some cases with
       errors made on purpose), nnU-Net's compute_metrics_on_folder with the regions of our
       dataset.json, then evaluate.py --pred on the files and --nnunet-summary on nnU-Net's
       summary.json: PASS when both give the same per-case table and group tables, and when the
       summary.json evaluate.py writes is nnU-Net's (file names apart)

Needs nnunetv2 (bench/requirements.txt). About 2 minutes on 2 cores, 40 s with --skip-plan (most of
it nnU-Net's worker pools starting). Writes into --workdir (default bench/out/nnunet_export), removed
first unless --keep.

    python bench/nnunet_export.py
    python bench/nnunet_export.py --cases 10 --test 3 --val 0 --skip-plan
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd

from _common import REPO, verdict

DATASET_ID = 501


def run(cmd: list, env=None) -> str:
    """A command of the workflow; its output echoed; exit on failure."""
    print(f"$ {' '.join(map(str, cmd))}", flush=True)
    done = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    print(done.stdout.rstrip())
    if done.returncode != 0:
        sys.exit(f"error: exit {done.returncode}: {' '.join(map(str, cmd))}")
    return done.stdout


def make_predictions(dataset: Path, out: Path) -> list[str]:
    """nnUNetv2_predict's way of writing (SimpleITKIO.write_seg with the input image's properties):
    the reference, with every second case's tumor called kidney and every third case missing a slice."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    rw = SimpleITKIO()
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for k, label in enumerate(sorted([*(dataset / "labelsTr").iterdir(), *(dataset / "labelsTs").iterdir()])):
        case_id = label.name[:-len(".nii.gz")]
        image = dataset / f"images{label.parent.name[-2:]}" / f"{case_id}_0000.nii.gz"
        _, props = rw.read_images([str(image)])
        seg = rw.read_seg(str(label))[0][0].astype(np.uint8)
        if k % 2:
            seg[seg == 2] = 1
        if k % 3 == 2:
            z = int(np.flatnonzero(seg.any(axis=(0, 1))).mean())   # SimpleITK's array is (x, y, z)
            seg[:, :, z] = 0
        rw.write_seg(seg, str(out / f"{case_id}.nii.gz"), props)
        cases.append(case_id)
    # nnUNetv2_predict leaves these beside the predictions too
    shutil.copyfile(dataset / "dataset.json", out / "dataset.json")
    for name in ("plans.json", "predict_from_raw_data_args.json"):
        (out / name).write_text("{}")
    return cases


def compare_audits(work: Path, raw: Path, dataset: Path, args) -> dict:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    preds, refs = work / "predictions", work / "references"
    cases = make_predictions(dataset, preds)
    refs.mkdir(exist_ok=True)
    for label in [*(dataset / "labelsTr").iterdir(), *(dataset / "labelsTs").iterdir()]:
        if not (refs / label.name).exists():
            (refs / label.name).hardlink_to(label)
    spec = json.loads((dataset / "dataset.json").read_text())
    regions = LabelManager(spec["labels"], regions_class_order=spec["regions_class_order"]).foreground_regions
    print(f"nnU-Net's regions from our dataset.json: {regions}")
    compute_metrics_on_folder(str(refs), str(preds), str(work / "nnunet_summary.json"), SimpleITKIO(), ".nii.gz",
                              regions, num_processes=1)
    common = ["--group", "sex", "age", "--n-boot", str(args.n_boot), "--overwrite", "--no-progress"]
    run([sys.executable, "evaluate.py", "--pred", preds, "--gt", raw, "--cases", ",".join(cases),
         "--out", work / "audit_files", *common])
    run([sys.executable, "evaluate.py", "--nnunet-summary", work / "nnunet_summary.json", "--meta", raw / "kits.json",
         "--out", work / "audit_nnunet_summary", *common])
    figures = {}
    files, summary = (pd.read_csv(work / d / "per_case.csv") for d in ("audit_files", "audit_nnunet_summary"))
    figures["per_case_equal"] = bool(files.equals(summary))
    figures["group_tables_equal"] = all(
        pd.read_csv(work / "audit_files" / f).equals(pd.read_csv(work / "audit_nnunet_summary" / f))
        for f in ("groups_sex.csv", "summary_sex.csv", "groups_age.csv", "summary_age.csv"))
    ours, theirs = (json.loads((work / p).read_text()) for p in ("audit_files/summary.json", "nnunet_summary.json"))
    for s in (ours, theirs):
        for case in s["metric_per_case"]:
            case.pop("reference_file"), case.pop("prediction_file")
    figures["our_summary_is_nnunets"] = json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    shown = files.set_index("case_id")[["kidney", "tumor", "mean"]]
    print(f"per-case Dice, evaluate.py --pred:\n{shown.round(4).to_string()}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "nnunet_export")
    parser.add_argument("--keep", action="store_true", help="keep an existing workdir (synthesis is then reused)")
    parser.add_argument("--cases", type=int, default=8, help="procedural cases (8)")
    parser.add_argument("--test", type=int, default=2, help="test cases of the split (2)")
    parser.add_argument("--val", type=int, default=1, help="validation cases of the split (1; 0 = nnU-Net's fold all)")
    parser.add_argument("--skip-plan", action="store_true", help="no nnUNetv2_plan_and_preprocess")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the audits (200)")
    args = parser.parse_args()
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except ImportError:
        sys.exit("error: nnunetv2 is not installed: pip install -r bench/requirements.txt (in a venv)")
    work = args.workdir
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    raw, cache, nn_raw = work / "raw", work / "cache", work / "nnUNet_raw"
    py = sys.executable
    if not (raw / "kits.json").is_file():
        run([py, "preprocess.py", "synthesize", "--out", raw, "--cases", args.cases, "--fov", "kidneys", "--no-progress"])
    run([py, "preprocess.py", "run", "--raw", raw, "--out", cache, "--no-progress"])
    run([py, "preprocess.py", "split", "--cache", cache, "--test", args.test, "--val", args.val, "--overwrite"])
    export = [py, "preprocess.py", "export-nnunet", "--raw", raw, "--out", nn_raw, "--id", DATASET_ID,
              "--splits", cache / "splits.json", "--no-progress"]
    run(export)
    second = run(export)
    figures = {"rerun_keeps_everything": "case files kept" in second and " written" not in second}
    dataset = next(nn_raw.glob(f"Dataset{DATASET_ID:03d}_*"))
    print(f"\n{dataset / 'splits_final.json'}:\n{(dataset / 'splits_final.json').read_text()}")

    print(f"verify_dataset_integrity({dataset}):")
    captured = io.StringIO()
    try:
        with redirect_stdout(captured):
            verify_dataset_integrity(str(dataset), num_processes=2)
        figures["verify_dataset_integrity"] = True
    except (AssertionError, RuntimeError, FileNotFoundError) as exc:
        figures["verify_dataset_integrity"] = False
        captured.write(f"{type(exc).__name__}: {exc}\n")
    print(captured.getvalue().rstrip())

    if not args.skip_plan:
        env = {**os.environ, "nnUNet_raw": str(nn_raw), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
               "nnUNet_results": str(work / "nnUNet_results"), "OMP_NUM_THREADS": "1"}
        tool = Path(py).parent / "nnUNetv2_plan_and_preprocess"
        out = run([tool, "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1", "--verify_dataset_integrity"], env=env)
        copied = work / "nnUNet_preprocessed" / dataset.name / "splits_final.json"
        figures["plan_and_preprocess_copies_split"] = copied.is_file() and \
            json.loads(copied.read_text()) == json.loads((dataset / "splits_final.json").read_text())
        figures["plan_and_preprocess_verified"] = "verify_dataset_integrity Done" in out

    figures.update(compare_audits(work, raw, dataset, args))
    print("\n" + "\n".join(f"{verdict(ok)}  {name}" for name, ok in figures.items()))
    (work / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if all(figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
