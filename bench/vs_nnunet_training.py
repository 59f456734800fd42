"""Bench: our trainer against nnU-Net's own, on one cohort, at the same steps and at the same wall time.

The peer comparison of issue 29, from nothing, in one command. The rows:
    ours                    configs/demo.yaml as shipped (bf16 autocast where native, channels-last),
                            the cohort without its planted bias; its last.pt scored by
                            evaluate.py --ckpt (predicted, written back and scored in the original
                            geometry)
    ours_fp32               the same with train.amp=off
    nnunet_matched_steps    nnU-Net 2.x's nnUNetTrainer recipe (SGD 0.01 Nesterov, poly, its
                            augmentation, its oversampling) on a plans configuration matched to our
                            recipe: our target spacing, patch, batch, and our network's stages
                            (features, strides, kernels read off our model): as many steps as ours
    nnunet_matched_time     the same plan, as many epochs as fit in our training wall time
    nnunet_default_time     nnU-Net's own 3d_fullres plan (what nnUNetv2_plan_and_preprocess gives
                            a CPU user), as many epochs as fit in our training wall time

The data: --cases procedural cases (kidney field of view, seed 0, no bias), --test of them for the
test split stratified by sex, the rest for training (no validation split); exported with
`preprocess.py export-nnunet --splits` (our train cases are nnU-Net's fold 0; our test cases its
imagesTs), planned with nnUNetv2_plan_and_preprocess (the default plan) and preprocessed again with
nnUNetv2_preprocess for the matched plan. nnU-Net trains in epochs of --nnunet-iterations (50)
iterations, with --nnunet-val-iterations (10: its own 50 per 250) validation iterations an epoch, one
augmentation worker (nnUNet_n_proc_DA=1, as our loader's 1), all cores for torch, fp32 (nnU-Net
autocasts on CUDA only), and no final validation. A time-budgeted row trains 2 epochs, then fixes
its epoch count (and its poly schedule's length) so that the rest fits in the budget; where those 2
epochs outlast the budget, it stops when the budget is spent (mid-epoch, at its first learning rate). nnU-Net's
predictions are those of nnUNetPredictor without mirroring (nnUNetv2_predict --disable_tta), step
0.5, Gaussian weighting; written in the input geometry and scored by `evaluate.py --pred`, the same
scorer as ours, against the same label maps.

Training wall: ours from the data being ready (train.py's "data:" line) to the end of the last epoch
(its last train/lr TensorBoard event), so the test scoring is not counted; nnU-Net's from before
on_train_start (its dataloader workers start there) to the end of the last epoch. Steps: optimiser
steps. Each row is printed with kidney / tumor / mean Dice (%) over the test cases, and each
comparison (ours − nnU-Net) as a paired Δ over the same cases with a 95% bootstrap interval (cases
resampled within sex) and the method-label swap p (fairness/paired.py).

Goals (issue 29): at equal wall time ours' mean Dice >= 1.5 x nnU-Net's (matched plan); at equal
steps a paired Δ mean whose lower bound is above 0.

Needs nnU-Net (pip install -r bench/requirements.txt); both sides run on the torch installed.
Resumable by row: a finished row (WORKDIR/rows/ROW.json) is reused, an interrupted one redone
(its folder removed first: it holds only that row's partial training). About an hour on 2 cores
with the defaults; --quick (12 cases, a few steps) checks the plumbing in about 7.

    python bench/vs_nnunet_training.py
    python bench/vs_nnunet_training.py --rows ours nnunet_matched_steps
    python bench/vs_nnunet_training.py --quick --workdir /tmp/vs_nnunet
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, RESULT_TAG, emit, loadavg, verdict

DATASET_ID = 503
CONFIGURATION = "3d_fullres"
MATCHED_PLANS = "nnUNetPlans_matched"
CALIBRATION_EPOCHS = 2          # epochs a time-budgeted nnU-Net row trains before it fixes its length
ORDER = ["male", "female"]


@dataclass(frozen=True)
class Row:
    name: str
    side: str                   # ours | nnunet
    amp: str = "bf16"           # ours: train.amp
    sets: tuple = ()            # ours: more --set overrides (a lever; --variant)
    plans: str = ""             # nnunet: plans identifier
    budget: str = ""            # nnunet: steps | time


ROWS = {r.name: r for r in [
    Row("ours", "ours", amp="bf16"),
    Row("ours_fp32", "ours", amp="off"),
    Row("nnunet_matched_steps", "nnunet", plans=MATCHED_PLANS, budget="steps"),
    Row("nnunet_matched_time", "nnunet", plans=MATCHED_PLANS, budget="time"),
    Row("nnunet_default_time", "nnunet", plans="nnUNetPlans", budget="time"),
]}
# (label, ours row, nnU-Net row): the paired comparisons printed
COMPARISONS = [("equal wall time, matched plan", "ours", "nnunet_matched_time"),
               ("equal steps, matched plan", "ours", "nnunet_matched_steps"),
               ("equal wall time, nnU-Net's default plan", "ours", "nnunet_default_time"),
               ("fp32, equal steps, matched plan", "ours_fp32", "nnunet_matched_steps")]


# --- running commands ------------------------------------------------------------------------------
def nnunet_env(work: Path) -> dict:
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_n_proc_DA="1", PYTHONUNBUFFERED="1")
    env.pop("nnUNet_compile", None)
    return env


def tool(name: str) -> str:
    """An nnU-Net console script: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"error: {name} not found: install nnU-Net with pip install -r bench/requirements.txt")
    return found


def run_timed(cmd: list, log: Path, env=None, marks: dict | None = None) -> dict:
    """Run a command, its output appended to log; {"start", "end", mark: time of the first line starting
    with it} for the line prefixes in marks; exit naming the log on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    times = {"start": time.time()}
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env or dict(os.environ, PYTHONUNBUFFERED="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            fh.write(line)
            for key, prefix in (marks or {}).items():
                if key not in times and line.startswith(prefix):
                    times[key] = time.time()
            if line.startswith(RESULT_TAG):
                times["result"] = json.loads(line[len(RESULT_TAG):])
        proc.wait()
    times["end"] = time.time()
    if proc.returncode != 0:
        sys.exit(f"error: exit {proc.returncode}: {' '.join(map(str, cmd[:4]))} ...; see {log}")
    return times


def save_row(work: Path, name: str, result: dict) -> None:
    from data.atomic import write_text
    (work / "rows").mkdir(parents=True, exist_ok=True)
    write_text(work / "rows" / f"{name}.json", json.dumps(result, indent=1) + "\n")


def load_row(work: Path, name: str) -> dict | None:
    path = work / "rows" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- our side --------------------------------------------------------------------------------------
def last_epoch_time(run: Path) -> tuple[float, int]:
    """(wall time, step) of the run's last train/lr event: the end of its last epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    last = acc.Scalars("train/lr")[-1]
    return last.wall_time, int(last.step)


def train_ours(row: Row, args) -> dict:
    run = args.workdir / "runs" / row.name
    if run.exists():
        print(f"   {run} is an interrupted row: removed, trained again")
        shutil.rmtree(run)
    sets = [f"data.raw={args.workdir / 'raw'}", f"data.cache={args.workdir / 'cache'}",
            f"data.synthesize_cases={args.cases}", f"data.test={args.test}", "data.synthesize_bias=null",
            f"train.out_dir={args.workdir / 'runs'}", f"train.seed={args.seed}", f"train.amp=\"{row.amp}\""]
    if args.epochs is not None:
        sets += [f"train.epochs={args.epochs}", f"eval.every={args.epochs}"]
    sets += list(row.sets)
    cmd = [sys.executable, "train.py", "--config", "configs/demo.yaml", "--name", row.name, "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    log = args.workdir / "logs" / f"{row.name}.log"
    times = run_timed(cmd, log, marks={"data": "data: "})
    trained, steps = last_epoch_time(run)
    # train.py's own test tables score in the preprocessed grid; the peer is scored in the original one
    scores = args.workdir / "scores" / row.name
    t0 = time.time()
    run_timed([sys.executable, "evaluate.py", "--ckpt", run / "last.pt", "--group", "sex", "--out", scores,
               "--overwrite", "--no-report", "--no-progress"], log)
    return {"steps": steps, "train_s": trained - times["data"], "setup_s": times["data"] - times["start"],
            "score_s": time.time() - t0, "per_case": str(scores / "per_case.csv")}


# --- nnU-Net's side --------------------------------------------------------------------------------
def matched_configuration(default: dict) -> dict:
    """nnU-Net's 3d_fullres configuration with our recipe's spacing, patch, batch and network stages."""
    from config import load_config
    from models import build_model
    cfg = load_config(REPO / "configs" / "demo.yaml", [])
    ours = build_model(cfg["model"], patch_size=cfg["train"]["patch_size"])
    enc = ours.encoder
    conf = json.loads(json.dumps(default))
    conf.update(data_identifier=f"{MATCHED_PLANS}_{CONFIGURATION}", batch_size=int(cfg["train"]["batch_size"]),
                patch_size=list(cfg["train"]["patch_size"]), spacing=list(cfg["data"]["preprocess"]["target_spacing"]))
    arch = conf["architecture"]["arch_kwargs"]
    arch.update(n_stages=len(enc.features), features_per_stage=list(enc.features),
                strides=[list(s) for s in enc.strides],
                kernel_sizes=[[k] * 3 if isinstance(k, int) else list(k) for k in enc.kernel_sizes],
                n_conv_per_stage=list(enc.n_convs), n_conv_per_stage_decoder=[len(b) for b in ours.decoder.blocks])
    return conf


def prepare_nnunet(args) -> Path:
    """Export, plan and preprocess (default and matched plans) once; the preprocessed dataset folder."""
    work, env = args.workdir, nnunet_env(args.workdir)
    done = work / "rows" / "_nnunet_prepared.json"
    if done.is_file():
        return Path(json.loads(done.read_text())["folder"])
    log = work / "logs" / "nnunet_prepare.log"
    start = time.time()
    run_timed([sys.executable, "preprocess.py", "export-nnunet", "--raw", work / "raw", "--out", work / "nnUNet_raw",
               "--id", DATASET_ID, "--splits", work / "cache" / "splits.json", "--preprocessed",
               work / "nnUNet_preprocessed", "--overwrite", "--no-progress"], log)
    run_timed([tool("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", CONFIGURATION, "-np", "2"], log, env)
    folder = next((work / "nnUNet_preprocessed").glob(f"Dataset{DATASET_ID}_*"))
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    matched = dict(plans, plans_name=MATCHED_PLANS,
                   configurations={CONFIGURATION: matched_configuration(plans["configurations"][CONFIGURATION])})
    from data.atomic import write_text
    write_text(folder / f"{MATCHED_PLANS}.json", json.dumps(matched, indent=1))
    run_timed([tool("nnUNetv2_preprocess"), "-d", DATASET_ID, "-plans_name", MATCHED_PLANS, "-c", CONFIGURATION,
               "-np", "2"], log, env)
    write_text(done, json.dumps({"folder": str(folder), "prepare_s": time.time() - start}) + "\n")
    return folder


def train_nnunet(row: Row, args, budget_s: float, steps: int) -> dict:
    prepare_nnunet(args)
    results = args.workdir / "nnunet" / row.name
    if results.exists():
        print(f"   {results} is an interrupted row: removed, trained again")
        shutil.rmtree(results)
    env = dict(nnunet_env(args.workdir), nnUNet_results=str(results))
    cmd = [sys.executable, __file__, "_nnunet-train", "--dataset", DATASET_ID, "--plans", row.plans,
           "--iterations", args.nnunet_iterations, "--val-iterations", args.nnunet_val_iterations,
           "--threads", args.threads]
    cmd += ["--budget-s", f"{budget_s:.1f}"] if row.budget == "time" else ["--epochs", max(1, round(steps / args.nnunet_iterations))]
    log = args.workdir / "logs" / f"{row.name}.log"
    trained = run_timed(cmd, log, env)["result"]
    model = next(results.glob(f"Dataset{DATASET_ID}_*/*__{row.plans}__{CONFIGURATION}"))
    preds = args.workdir / "predictions" / row.name
    t0 = time.time()
    run_timed([sys.executable, __file__, "_nnunet-predict", "--model", model, "--images",
               next((args.workdir / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*")) / "imagesTs", "--out", preds,
               "--threads", args.threads], log, env)
    scores = args.workdir / "scores" / row.name
    test = json.loads((args.workdir / "cache" / "splits.json").read_text())["test"]
    run_timed([sys.executable, "evaluate.py", "--pred", preds, "--gt", args.workdir / "raw", "--group", "sex",
               "--cases", ",".join(test),
               "--out", scores, "--overwrite", "--no-report", "--no-progress"], log)
    return {**trained, "score_s": time.time() - t0, "setup_s": json.loads(
        (args.workdir / "rows" / "_nnunet_prepared.json").read_text())["prepare_s"],
        "per_case": str(scores / "per_case.csv")}


def budget_trainer_class():
    """nnUNetTrainer with a settable length and a wall-time budget (imports nnU-Net: the child only)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetTrainer(nnUNetTrainer):
        budget_s: float | None = None

        steps_done = 0

        def out_of_budget(self) -> bool:
            # before its length is fixed, a budget is a hard stop: a plan whose epoch outlasts the
            # budget trains what fits in it, not CALIBRATION_EPOCHS whole epochs
            return (self.budget_s is not None and self.current_epoch < CALIBRATION_EPOCHS
                    and time.time() - self.wall_start >= self.budget_s)

        def run_training(self):
            # nnU-Net's loop, through its own hooks, with a length that a time budget fixes after
            # CALIBRATION_EPOCHS (its loop reads num_epochs once, so it cannot be changed mid-run)
            self.wall_start = time.time()
            self.on_train_start()
            loop_start = time.time()
            while self.current_epoch < self.num_epochs:
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.steps_done += 1
                    if self.out_of_budget():
                        break
                self.on_train_epoch_end(outputs)
                if self.out_of_budget():
                    self.print_to_log_file(f"time budget {self.budget_s:.0f} s spent after {self.steps_done} "
                                           "iterations, before its length was fixed: stopped", also_print_to_console=True)
                    break
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                if self.budget_s is not None and self.current_epoch == CALIBRATION_EPOCHS:
                    per_epoch = (time.time() - loop_start) / self.current_epoch
                    left = self.budget_s - (time.time() - self.wall_start)
                    self.num_epochs = self.current_epoch + max(0, round(left / per_epoch))
                    self.lr_scheduler.max_steps = self.num_epochs
                    self.print_to_log_file(f"time budget {self.budget_s:.0f} s: {per_epoch:.1f} s an epoch, "
                                           f"{self.num_epochs} epochs in all", also_print_to_console=True)
            self.wall_end = time.time()
            self.on_train_end()

    return BudgetTrainer


def nnunet_train_child(a) -> int:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    torch.set_num_threads(a.threads)
    folder = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(a.dataset)
    plans = dict(load_json(folder / f"{a.plans}.json"), continue_training=False)   # as nnUNetv2_train passes it
    trainer = budget_trainer_class()(plans, CONFIGURATION, 0, load_json(folder / "dataset.json"),
                                     device=torch.device("cpu"))
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = a.iterations, a.val_iterations
    trainer.num_epochs = a.epochs if a.epochs else 1000     # a budget fixes it after CALIBRATION_EPOCHS
    trainer.budget_s = a.budget_s
    trainer.save_every = 10 ** 9
    trainer.run_training()
    emit({"steps": trainer.steps_done, "epochs": trainer.num_epochs,
          "train_s": trainer.wall_end - trainer.wall_start, "torch": torch.__version__})
    return 0


def nnunet_predict_child(a) -> int:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(a.threads)
    plans, dataset = PlansManager(load_json(a.model / "plans.json")), load_json(a.model / "dataset.json")
    conf = plans.get_configuration(CONFIGURATION)
    # the checkpoint this bench's own nnU-Net child just wrote in its workdir, never a file from elsewhere;
    # nnU-Net pickles its logger's numpy values into it, so a weights-only load refuses it
    checkpoint = torch.load(a.model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # the network is nnUNetTrainer's (BudgetTrainer changes the length only), built as nnUNetv2_predict does
    net = nnUNetTrainer.build_network_architecture(plans, conf, determine_num_input_channels(plans, conf, dataset),
                                                   plans.get_label_manager(dataset).num_segmentation_heads,
                                                   enable_deep_supervision=False)
    net.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, plans, conf, [checkpoint["network_weights"]], dataset, "nnUNetTrainer",
                                    checkpoint.get("inference_allowed_mirroring_axes"))
    a.out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(a.images), str(a.out), save_probabilities=False, overwrite=True)
    return 0


# --- the table -------------------------------------------------------------------------------------
def comparisons(results: dict) -> list[tuple[str, str, str]]:
    """COMPARISONS, and each --variant against nnU-Net at equal steps."""
    variants = [(f"{name}, equal steps, matched plan", name, "nnunet_matched_steps")
                for name in results if name not in ROWS]
    return [c for c in COMPARISONS + variants if c[1] in results and c[2] in results]


def table(results: dict) -> tuple[str, dict]:
    """The markdown table of rows and of paired comparisons, and the goal figures."""
    from fairness.paired import paired_delta

    lines = ["| row | steps | s / step | data setup (s) | training (s) | predict + score (s) | kidney | tumor | mean |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    import pandas as pd
    frames = {name: pd.read_csv(res["per_case"]) for name, res in results.items()}   # each read once
    means = {}
    for name, res in results.items():
        f = frames[name]
        means[name] = {c: 100 * float(f[c].mean()) for c in ("kidney", "tumor", "mean")}
        lines.append(f"| {name} | {res['steps']} | {res['train_s'] / res['steps']:.3f} | {res['setup_s']:.0f} | "
                     f"{res['train_s']:.0f} | {res['score_s']:.0f} | "
                     + " | ".join(f"{means[name][c]:.1f}" for c in ("kidney", "tumor", "mean")) + " |")
    lines += ["", "| paired over the test cases | Δ kidney | Δ tumor | Δ mean | p (mean) |", "| --- | --- | --- | --- | --- |"]
    goals = {}
    for label, ours, peer in comparisons(results):
        cells, p = [], math.nan
        for metric in ("kidney", "tumor", "mean"):
            d = paired_delta([frames[peer]], [frames[ours]], "sex", metric=metric, order=ORDER)
            cells.append(f"{d['delta_mean']:+.1f} [{d['delta_mean_lo']:+.1f}, {d['delta_mean_hi']:+.1f}]")
            if metric == "mean":
                p, goals[(ours, peer)] = d["p_mean"], d
        lines.append(f"| {ours} − {peer} ({label}) | " + " | ".join(cells) + f" | {p:.3g} |")
    return "\n".join(lines), {"means": means, "paired": goals}


def verdicts(figs: dict) -> list[str]:
    out = []
    m, paired = figs["means"], figs["paired"]
    if "ours" in m and "nnunet_matched_time" in m:
        ratio = m["ours"]["mean"] / max(m["nnunet_matched_time"]["mean"], 1e-9)
        out.append(f"equal wall time: ours / nnU-Net mean Dice = {ratio:.2f} (goal >= 1.5): {verdict(ratio >= 1.5)}")
    if ("ours", "nnunet_matched_steps") in paired:
        d = paired[("ours", "nnunet_matched_steps")]
        out.append(f"equal steps: Δ mean {d['delta_mean']:+.1f} [{d['delta_mean_lo']:+.1f}, {d['delta_mean_hi']:+.1f}] "
                   f"(goal: lower bound > 0): {verdict(d['delta_mean_lo'] > 0)}")
    return out


# --- main ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="child")
    t = sub.add_parser("_nnunet-train", help=argparse.SUPPRESS)
    t.add_argument("--dataset", type=int, required=True)
    t.add_argument("--plans", required=True)
    t.add_argument("--iterations", type=int, required=True)
    t.add_argument("--val-iterations", type=int, required=True)
    t.add_argument("--epochs", type=int)
    t.add_argument("--budget-s", type=float)
    t.add_argument("--threads", type=int, required=True)
    pr = sub.add_parser("_nnunet-predict", help=argparse.SUPPRESS)
    pr.add_argument("--model", type=Path, required=True)
    pr.add_argument("--images", type=Path, required=True)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--threads", type=int, required=True)
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "vs_nnunet")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="one more row of ours, our recipe with these --set overrides (a lever), compared with "
                        "nnU-Net at equal steps: --variant os33 sampler.pos_ratio=0.5 (repeatable)")
    p.add_argument("--cases", type=int, default=72, help="procedural cases (default 72: the demo's)")
    p.add_argument("--test", type=int, default=40, help="test cases (default 40: the demo's)")
    p.add_argument("--epochs", type=int, help="our epochs (default: the demo's 150, 16 steps each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nnunet-iterations", type=int, default=50, help="nnU-Net's iterations an epoch (default 50)")
    p.add_argument("--nnunet-val-iterations", type=int, default=10,
                   help="nnU-Net's validation iterations an epoch (default 10: its 50 per 250)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="12 cases (4 test), 4 epochs, nnU-Net epochs of 8 iterations")
    args = p.parse_args(argv)
    for name, *sets in args.variant:
        if name in ROWS or not sets or not all("=" in s for s in sets):
            p.error(f"--variant {name}: a new row name, then KEY=VALUE overrides (rows: {', '.join(ROWS)})")
    if args.quick:
        args.cases, args.test, args.epochs = 12, 4, args.epochs or 4
        args.nnunet_iterations, args.nnunet_val_iterations = 8, 2
    if args.child is None and args.test >= args.cases:
        p.error(f"--test {args.test} leaves no training cases of --cases {args.cases}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child == "_nnunet-train":
        return nnunet_train_child(args)
    if args.child == "_nnunet-predict":
        return nnunet_predict_child(args)
    args.workdir = args.workdir.resolve()
    print(f"workdir {args.workdir}; load {loadavg()} (timings want a quiet machine)", flush=True)
    results, done = {}, {}
    # ours first: the nnU-Net rows take their steps and their time budget from it
    rows = dict(ROWS, **{name: Row(name, "ours", sets=tuple(sets)) for name, *sets in args.variant})
    wanted = [*args.rows, *[name for name, *_ in args.variant]]
    for name in ["ours", *[r for r in wanted if r != "ours"]]:
        row, result = rows[name], load_row(args.workdir, name)
        if result is not None and tuple(result.get("sets", ())) != row.sets:
            sys.exit(f"error: row {name} was trained with {result.get('sets')}; name this variant otherwise")
        if result is None and name not in wanted:
            sys.exit(f"error: row {name} is needed by the others and not done: add it to --rows")
        if result is None:
            print(f"== {name}: training (log {args.workdir / 'logs' / (name + '.log')})", flush=True)
            result = (dict(train_ours(row, args), sets=list(row.sets)) if row.side == "ours"
                      else train_nnunet(row, args, done["ours"]["train_s"], done["ours"]["steps"]))
            save_row(args.workdir, name, result)
        print(f"   {name}: {result['steps']} steps, training {result['train_s']:.0f} s "
              f"({result['train_s'] / result['steps']:.3f} s a step), setup {result['setup_s']:.0f} s, "
              f"prediction + scoring {result['score_s']:.0f} s", flush=True)
        done[name] = result
        if name in wanted:
            results[name] = result
    text, figs = table(results)
    import torch
    header = (f"{args.cases} procedural cases ({args.test} test, stratified by sex), seed {args.seed}, torch "
              f"{torch.__version__}, {args.threads} threads; Dice in %, Δ = ours − nnU-Net in Dice points, 95% "
              f"paired bootstrap intervals")
    report = "\n".join([header, "", text, "", *verdicts(figs)])
    from data.atomic import write_text
    write_text(args.workdir / "table.md", report + "\n")
    print("\n" + report + f"\n\ntable -> {args.workdir / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
