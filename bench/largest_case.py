"""Bench: the largest KiTS19 case through `evaluate.py --ckpt`, peak memory and time per phase.

KiTS19's largest case, case_00151, is 1059 x 512 x 512 voxels (0.5 x 0.81 x 0.81 mm); as float32
the raw image is 1059 * 512 * 512 * 4 B = 1.11 GB. The target: the whole evaluation of that case
peaks at no more than 3x that (3.33 GB resident). The bench makes what it needs once, in --workdir
(kept; reused by the next run):

    1. the case: `preprocess.py synthesize --from-labels KITS --only CASE` (a CT synthesised around
       the real label map, in its original geometry);
    2. a checkpoint: `train.py` on 4 small procedural cases for 1 epoch (a step or two) with the
       study's recipe (configs/baseline_nnunet.yaml: target spacing 3.22 x 1.62 x 1.62 mm, patch
       80 x 160 x 160), narrowed to --features (default 8 -> 64): the weights do not matter for
       memory, the width does (its activations are part of the prediction's peak);

then measures, each in a fresh process:

    e2e      `evaluate.py --ckpt RUN/last.pt --data WORK/raw` exactly as a user runs it (the
             command itself, run with runpy as __main__ in the measured process): preprocessing of
             the case into the evaluation's cache, reading the cache, reading the reference, the
             sliding-window prediction (models/inference.py), the write-back to the original
             geometry (data/writeback.py), writing the NIfTI, Dice (fairness/case_dice.py), and the
             tables. Each phase is a wrapper around the library function evaluate.py calls
             (nothing in the library is changed); at the start of each phase the process's
             peak-RSS mark is reset (/proc/self/clear_refs, "5"), so the VmHWM read at its end is
             that phase's own peak. The overall peak is the largest of all readings (taken before
             every reset); the parent also samples the child's VmRSS every 20 ms as a cross-check.
    surface  fairness/surface.py kits_case_surface (NSD at 2 mm, HD95, ASSD) on the case, for
             predictions of realistic quality: the reference shifted by one voxel in-plane, the
             reference eroded by one voxel, and the e2e run's own prediction (from a 1-epoch
             model: false positives all over the body, the worst case of the box); seconds, CPU
             seconds, peak RSS, and the box the distances are computed in.
    window   (--window, or --window-only without the case or a checkpoint) the sliding window
             alone (models/inference.py predict_case) on an input of the case's preprocessed shape
             with an untrained network of --features, on --device: the prediction's memory at the
             study's width (32 -> 320), which a 1-epoch CPU checkpoint at that width would take
             long to make; with --device cuda also the GPU memory peak.

It prints a table per phase (seconds, CPU seconds, RSS at its start, its peak, the peak over the
raw float32 size), where the peak is, PASS/FAIL against the 3x target, and the surface costs.

Usage (from the repo root). On 2 cores shared with another job, one thread is the fastest (the
write-back and resampling run many small parallel regions, which a busy second core stalls):
e2e 85 s with --threads 1, 200 s with 2; the surface step ~4 minutes (its worst case); the
case's synthesis (80 s) and the checkpoint (100 s) once.
    python bench/largest_case.py --threads 1                  # case_00151, workdir bench/out/largest_case
    python bench/largest_case.py --threads 1 --skip-surface --json bench/out/largest_case.json
    python bench/largest_case.py --window-only --window-shape 164 205 255 --features 32 320 --device cuda
Needs the KiTS19 label maps at $KITS19_DIR or ../shared/kits19.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import (BUSY_WARN_CORES, RESULT_TAG, emit, machine_busy_seconds, thread_env, verdict,  # noqa: E402
                     write_json)

MEMORY_TARGET = 3.0
GIB = 1024 ** 3
STUDY_CONFIG = "configs/baseline_nnunet.yaml"
DEFAULT_CASE = "case_00151"   # KiTS19's largest: 1059 x 512 x 512


# ----------------------------------------------------------------------------------------------
# memory readings (Linux /proc)

def status_bytes(field: str, pid: str | int = "self") -> int:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class PhaseMeter:
    """Per-phase seconds, CPU seconds and peak RSS of this process.

    Each phase starts by resetting the kernel's peak-RSS mark to the current RSS (writing 5 to
    /proc/self/clear_refs), so VmHWM at its end is the phase's own peak; the mark is read before
    every reset, so the overall peak is the largest reading. Nested phases are counted in the
    outer one only.
    """

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.order: list[str] = []
        self.overall = status_bytes("VmHWM")
        self.depth = 0
        self.can_reset = self._reset()

    def _reset(self) -> bool:
        self.overall = max(self.overall, status_bytes("VmHWM"))
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def peak(self) -> int:
        return max(self.overall, status_bytes("VmHWM"))

    def wrap(self, name: str, fn):
        def wrapper(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            start_rss = status_bytes("VmRSS")
            self._reset()
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                peak = status_bytes("VmHWM")
                self.overall = max(self.overall, peak)
                row = self.rows.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0, "calls": 0,
                                                  "rss_start": start_rss, "peak_rss": 0})
                if name not in self.order:
                    self.order.append(name)
                row["seconds"] += seconds
                row["cpu_seconds"] += cpu
                row["calls"] += 1
                row["peak_rss"] = max(row["peak_rss"], peak)
                row["rss_end"] = status_bytes("VmRSS")
                self.depth -= 1
        return wrapper


# ----------------------------------------------------------------------------------------------
# children

def child_e2e(args) -> None:
    """evaluate.py --ckpt ... --data WORK/raw, its phases timed through wrappers."""
    import runpy

    import torch
    torch.set_num_threads(args.threads)
    import data.preprocessing
    import engine.scoring
    import fairness.report
    import models.checkpoint

    meter = PhaseMeter()
    rss_imports = status_bytes("VmRSS")
    for module, name, label in (
            (data.preprocessing, "run_preprocessing", "cache: preprocess the case"),
            (models.checkpoint, "load_checkpoint", "load the model"),
            (models.checkpoint, "model_from_checkpoint", "load the model"),
            (engine.scoring, "load_preprocessed", "open the cached case"),
            (engine.scoring, "read_volume", "read the reference labels"),
            (engine.scoring, "predict_case", "predict (sliding window)"),
            (engine.scoring, "to_original_geometry", "write-back to the original geometry"),
            (engine.scoring, "write_prediction", "write the NIfTI"),
            (engine.scoring, "kits_case_dice", "score: Dice"),
            (fairness.report, "group_report", "tables (bootstrap CIs, tests)")):
        setattr(module, name, meter.wrap(label, getattr(module, name)))
    out = Path(args.workdir) / "eval"
    shutil.rmtree(out, ignore_errors=True)   # a fresh evaluation: nothing reused from an earlier run
    argv = ["--ckpt", str(args.ckpt), "--data", str(Path(args.workdir) / "raw"), "--out", str(out),
            "--group", "sex", "--no-progress", "--device", args.device]
    # the command itself (its __main__ block), in this process, so the wrappers see its calls
    sys.argv = ["evaluate.py", *argv]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        runpy.run_path(str(REPO / "evaluate.py"), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if code != 0:
        raise SystemExit(f"error: evaluate.py {' '.join(argv)} exited {code}")
    peak = meter.peak()
    rows = [dict(meter.rows[name], phase=name) for name in meter.order]
    emit({"step": "e2e", "seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "rss_imports": rss_imports,
          "phases": rows, "clear_refs": meter.can_reset, "argv": argv, "threads": args.threads,
          "per_case": (out / "per_case.csv").read_text()})


def child_surface(args) -> None:
    """kits_case_surface on the case for predictions of realistic quality."""
    import numpy as np
    from scipy import ndimage
    import torch
    torch.set_num_threads(args.threads)
    from data.nifti import read_volume
    from fairness.surface import _box, kits_case_surface

    meter = PhaseMeter()
    ref_vol = read_volume(Path(args.workdir) / "raw" / args.case / "segmentation.nii.gz")
    ref, spacing = np.asarray(ref_vol.array, dtype=np.uint8), ref_vol.spacing
    cross = ndimage.generate_binary_structure(3, 1)

    def shifted():
        pred = np.zeros_like(ref)
        pred[:, :, 1:] = ref[:, :, :-1]
        return pred

    def eroded():
        pred = ndimage.binary_erosion(ref > 0, structure=cross).astype(np.uint8)
        pred[ndimage.binary_erosion(ref == 2, structure=cross)] = 2
        return pred

    def model():
        path = Path(args.workdir) / "eval" / "predictions" / f"{args.case}.nii.gz"
        if not path.is_file():
            return None
        return np.asarray(read_volume(path).array, dtype=np.uint8)

    results = []
    for name, make in (("reference shifted 1 voxel in x", shifted), ("reference eroded 1 voxel", eroded),
                       ("the model's prediction (e2e run)", model)):
        pred = make()
        if pred is None:
            continue
        boxes = {}
        for cls, pm, rm in (("kidney", pred > 0, ref > 0), ("tumor", pred == 2, ref == 2)):
            box = _box(pm, rm)
            boxes[cls] = None if box is None else [s.stop - s.start for s in box]
            del pm, rm
        before = status_bytes("VmRSS")
        timed = meter.wrap(name, kits_case_surface)
        values = timed(pred=pred, ref=ref, spacing=spacing)
        row = dict(meter.rows[name], variant=name, rss_before=before, boxes=boxes,
                   voxels={"kidney": int(np.count_nonzero(pred)), "tumor": int(np.count_nonzero(pred == 2))},
                   values=values)
        results.append(row)
        del pred
    emit({"step": "surface", "variants": results, "spacing": list(spacing), "shape": list(ref.shape),
          "reference_voxels": {"kidney": int(np.count_nonzero(ref)), "tumor": int(np.count_nonzero(ref == 2))}})


def child_window(args) -> None:
    """The sliding window alone, on an input of the case's preprocessed shape, with an untrained
    network of --features: the prediction phase's memory at any width, on the CPU or a GPU, without
    the case or a checkpoint (its values do not change what is allocated)."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    from config import load_config
    from engine.runtime import amp_settings
    from models import build_model
    from models.inference import predict_case

    cfg = load_config(REPO / STUDY_CONFIG, [f"model.base_features={args.features[0]}",
                                            f"model.max_features={args.features[1]}"]
                      + ([f"train.patch_size=[{','.join(map(str, args.patch))}]"] if args.patch else []))
    patch = tuple(cfg["train"]["patch_size"])
    device = torch.device(args.device)
    model = build_model(cfg["model"], patch_size=patch, in_channels=1, num_classes=3)
    model.deep_supervision = False
    model.to(device).eval()
    amp_dtype, _ = amp_settings("auto", device)
    image = np.random.default_rng(0).standard_normal(tuple(args.window_shape), dtype=np.float32)
    meter = PhaseMeter()
    rss_ready = status_bytes("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = meter.wrap("predict", predict_case)
    probs = timed(model, image, patch_size=patch, overlap=cfg["eval"]["overlap"], mirror=cfg["eval"]["mirror"],
                  tile_batch=cfg["eval"]["tile_batch"], device=device, amp_dtype=amp_dtype)
    row = meter.rows["predict"]
    emit({"step": "window", "shape": list(args.window_shape), "patch": list(patch), "features": list(args.features),
          "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
          "amp": str(amp_dtype), "tile_batch": cfg["eval"]["tile_batch"], "rss_ready": rss_ready,
          "seconds": row["seconds"], "cpu_seconds": row["cpu_seconds"], "peak_rss": row["peak_rss"],
          "probs_bytes": probs.numel() * probs.element_size(),
          "cuda_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None})


# ----------------------------------------------------------------------------------------------
# parent

def kits_dir() -> Path:
    env = os.environ.get("KITS19_DIR")
    path = Path(env) if env else (REPO / ".." / "shared" / "kits19").resolve()
    if not (path / "kits.json").is_file():
        raise SystemExit(f"error: KiTS19 label maps not found at {path} (set KITS19_DIR)")
    return path


def run_logged(cmd: list[str], env: dict, log: Path, what: str) -> float:
    """Run a preparation step (not measured), its output into `log`; seconds."""
    print(f"{what} ... (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, env=env, cwd=str(REPO), stdout=fh, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"error: {what} failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def ensure_case(args, env) -> None:
    raw = args.workdir / "raw"
    if (raw / args.case / "imaging.nii.gz").is_file() and (raw / args.case / "segmentation.nii.gz").is_file():
        print(f"case: reusing {raw / args.case}")
        return
    seconds = run_logged([sys.executable, "preprocess.py", "synthesize", "--from-labels", str(args.kits),
                          "--only", args.case, "--out", str(raw), "--no-progress"], env,
                         args.workdir / "synthesize.log", f"synthesising a CT around {args.case}'s label map")
    print(f"   {seconds:.0f} s (not part of the figures)")


def train_overrides(args) -> list[str]:
    work = args.workdir
    sets = {"data.raw": work / "train_raw", "data.cache": work / "train_cache", "train.out_dir": work / "runs",
            "data.synthesize_cases": 4, "data.synthesize_shape": "[32,96,96]", "data.test": 1,
            "train.epochs": 1, "train.batch_size": 2, "train.workers": 0, "eval.every": 1,
            "train.checkpoint_every": 1, "model.base_features": args.features[0],
            "model.max_features": args.features[1]}
    if args.patch:
        sets["train.patch_size"] = "[" + ",".join(map(str, args.patch)) + "]"
    return [f"{k}={v}" for k, v in sets.items()]


def ensure_checkpoint(args, env) -> None:
    """A checkpoint of a 1-epoch run with the study's recipe at --features; reused when it fits."""
    name = f"tiny_f{args.features[0]}-{args.features[1]}" + (f"_p{'x'.join(map(str, args.patch))}" if args.patch else "")
    args.ckpt = args.workdir / "runs" / name / "last.pt"
    if args.ckpt.is_file():
        print(f"checkpoint: reusing {args.ckpt}")
        return
    shutil.rmtree(args.workdir / "runs" / name, ignore_errors=True)
    cmd = [sys.executable, "train.py", "--config", STUDY_CONFIG, "--name", name, "--no-progress"]
    for s in train_overrides(args):
        cmd += ["--set", s]
    seconds = run_logged(cmd, env, args.workdir / f"train_{name}.log",
                         f"training a 1-epoch checkpoint ({STUDY_CONFIG}, features {args.features[0]} -> "
                         f"{args.features[1]})")
    print(f"   {seconds:.0f} s (not part of the figures)")


def run_measured(args, step: str, env) -> dict:
    """One child; the parent samples its VmRSS every 20 ms and collects its rusage (wait4)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--workdir", str(args.workdir),
           "--case", args.case, "--threads", str(args.threads), "--device", args.device,
           "--features", *map(str, args.features)]
    if args.patch:
        cmd += ["--patch", *map(str, args.patch)]
    if args.window_shape:
        cmd += ["--window-shape", *map(str, args.window_shape)]
    if getattr(args, "ckpt", None):
        cmd += ["--ckpt", str(args.ckpt)]
    log = args.workdir / f"{step}.out"
    busy0, wall0 = machine_busy_seconds(), time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=fh, stderr=subprocess.STDOUT)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    samples.append((time.perf_counter() - wall0, status_bytes("VmRSS", proc.pid)))
                except (OSError, RuntimeError):
                    pass
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    wall = time.perf_counter() - wall0
    child_cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, machine_busy_seconds() - busy0 - child_cpu) / max(wall, 1e-9)
    result = None
    for line in log.read_text().splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if proc.returncode != 0 or result is None:
        print(log.read_text()[-4000:])
        raise SystemExit(f"error: step {step} failed (exit {proc.returncode}); its output is in {log}")
    result["sampled_peak_rss"] = max((r for _, r in samples), default=0)
    result["sampled_peak_at_s"] = max(samples, key=lambda s: s[1])[0] if samples else None
    result["ru_maxrss"] = usage.ru_maxrss * 1024
    result["wall_with_startup"] = wall
    result["other_processes_cores"] = others
    return result


def gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def print_e2e(r: dict, raw_f32: int) -> dict:
    phases = r["phases"]
    header = f"{'phase':<40} {'seconds':>8} {'CPU s':>7} {'RSS at start':>13} {'peak RSS':>9} {'peak / raw f32':>15}"
    print(header)
    print("-" * len(header))
    accounted = 0.0
    for p in phases:
        accounted += p["seconds"]
        print(f"{p['phase']:<40} {p['seconds']:>8.1f} {p['cpu_seconds']:>7.1f} {gib(p['rss_start']):>13} "
              f"{gib(p['peak_rss']):>9} {p['peak_rss'] / raw_f32:>14.2f}x")
    print(f"{'other (figures, files, split, arguments)':<40} {r['seconds'] - accounted:>8.1f}")
    print(f"{'evaluate.py, total':<40} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} "
          f"{gib(r['rss_imports']):>13} {gib(r['peak_rss']):>9} {r['peak_rss'] / raw_f32:>14.2f}x")
    worst = max(phases, key=lambda p: p["peak_rss"])
    print(f"(RSS at start: resident when the phase began, i.e. what earlier phases left; 'total' row: RSS after "
          f"imports. Peak RSS sampled by the parent every 20 ms: {gib(r['sampled_peak_rss'])} GiB; the child's "
          f"ru_maxrss {gib(r['ru_maxrss'])} GiB (reset with the per-phase marks"
          f"{'' if r['clear_refs'] else ' - clear_refs unavailable: per-phase peaks are cumulative'}). "
          f"Other processes used {r['other_processes_cores']:.2f} cores meanwhile.)")
    return worst


def print_surface(r: dict) -> None:
    print(f"kits_case_surface (NSD at 2 mm, HD95, ASSD) on {'x'.join(map(str, r['shape']))}, spacing "
          f"{', '.join(f'{s:.4g}' for s in r['spacing'])} mm; reference kidney {r['reference_voxels']['kidney']} "
          f"voxels, tumor {r['reference_voxels']['tumor']}")
    header = (f"{'prediction':<34} {'seconds':>8} {'CPU s':>7} {'peak RSS':>9} {'added':>7}  {'kidney box':>15} "
              f"{'tumor box':>15}  {'NSD k/t':>11} {'HD95 k/t mm':>13}")
    print(header)
    print("-" * len(header))
    for v in r["variants"]:
        vals = v["values"]
        box = {c: ("x".join(map(str, b)) if b else "-") for c, b in v["boxes"].items()}
        print(f"{v['variant']:<34} {v['seconds']:>8.1f} {v['cpu_seconds']:>7.1f} {gib(v['peak_rss']):>9} "
              f"{gib(v['peak_rss'] - v['rss_before']):>7}  {box['kidney']:>15} {box['tumor']:>15}  "
              f"{vals['nsd_kidney']:.3f}/{vals['nsd_tumor']:.3f} {vals['hd95_kidney']:>6.2f}/{vals['hd95_tumor']:<6.2f}")
    print("(added: peak RSS above the RSS before the call, i.e. what the surface metric itself needs)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=DEFAULT_CASE, help="KiTS19 case (default %(default)s, the largest)")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "largest_case",
                   help="where the case, the checkpoint and the outputs are kept (default %(default)s)")
    p.add_argument("--features", type=int, nargs=2, default=(8, 64), metavar=("BASE", "MAX"),
                   help="the checkpoint's widths (default 8 64; the study's: 32 320)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help=f"the checkpoint's patch (default: {STUDY_CONFIG}'s, 80 160 160)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default all cores)")
    p.add_argument("--device", default="cpu", help="evaluate.py --device and the window step's (default cpu)")
    p.add_argument("--skip-e2e", action="store_true", help="only the surface metrics (on an earlier e2e output)")
    p.add_argument("--skip-surface", action="store_true")
    p.add_argument("--window", action="store_true",
                   help="also the sliding window alone with an untrained network of --features (no checkpoint)")
    p.add_argument("--window-only", action="store_true",
                   help="only that: no case, no checkpoint, no KiTS19 needed (give --window-shape)")
    p.add_argument("--window-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="the window step's input (default: the e2e run's preprocessed shape of the case)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        {"e2e": child_e2e, "surface": child_surface, "window": child_window}[args.child](args)
        return 0
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = thread_env(max(1, args.threads))
    if args.window_only:
        if not args.window_shape:
            raise SystemExit("error: --window-only needs --window-shape Z Y X (KiTS19's largest case at the "
                             "study's spacing: 164 205 255)")
        figures = {"window": run_window(args, env)}
        if args.json:
            write_json(args.json, figures)
        return 0
    args.kits = kits_dir()
    ensure_case(args, env)
    ensure_checkpoint(args, env)

    import nibabel as nib
    shape = tuple(int(s) for s in nib.load(str(args.workdir / "raw" / args.case / "segmentation.nii.gz")).shape)
    raw_f32 = shape[0] * shape[1] * shape[2] * 4
    import torch
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)   # data only: nothing in it runs
    cfg = ckpt["config"]
    print(f"case {args.case}: {'x'.join(map(str, shape))} voxels; raw image as float32 {gib(raw_f32)} GiB "
          f"({raw_f32 / 1e9:.2f} GB); target peak RSS <= {MEMORY_TARGET:g}x = {gib(MEMORY_TARGET * raw_f32)} GiB")
    print(f"checkpoint {args.ckpt}: {cfg['model']['name']} features {cfg['model'].get('base_features')} -> "
          f"{cfg['model'].get('max_features')}, patch {'x'.join(map(str, cfg['train']['patch_size']))}, target "
          f"spacing {'x'.join(f'{s:g}' for s in cfg['data']['preprocess']['target_spacing'])} mm, tile batch "
          f"{cfg['eval']['tile_batch']}, overlap {cfg['eval']['overlap']}, mirror {cfg['eval']['mirror']}; "
          f"{args.threads} thread(s); load {open('/proc/loadavg').read().split()[0]}", flush=True)
    figures = {"case": args.case, "shape": shape, "raw_float32_bytes": raw_f32, "checkpoint": str(args.ckpt),
               "features": list(args.features), "patch": cfg["train"]["patch_size"], "threads": args.threads}
    ok = True
    if not args.skip_e2e:
        print("\nrunning evaluate.py --ckpt ... --data (measured) ...", flush=True)
        r = run_measured(args, "e2e", env)
        figures["e2e"] = r
        print(f"\nevaluate.py {' '.join(r['argv'])}\n")
        worst = print_e2e(r, raw_f32)
        ratio = r["peak_rss"] / raw_f32
        figures["memory_ratio"], figures["peak_phase"] = ratio, worst["phase"]
        ok = ratio <= MEMORY_TARGET
        print(f"\npeak RSS {gib(r['peak_rss'])} GiB in '{worst['phase']}' = {ratio:.2f}x the raw float32 image  "
              f"target <= {MEMORY_TARGET:g}x  {verdict(ok)}")
        print("per case: " + " | ".join(r["per_case"].splitlines()[:2]))
        if r["other_processes_cores"] > BUSY_WARN_CORES:
            print(f"WARNING: other processes used {r['other_processes_cores']:.2f} cores during the run: the "
                  "seconds are disturbed (the memory figures are not)")
    if not args.skip_surface:
        print("\nrunning the surface metrics (measured) ...", flush=True)
        r = run_measured(args, "surface", env)
        figures["surface"] = r
        print()
        print_surface(r)
    if args.window:
        if not args.window_shape:
            props = args.workdir / "eval" / "cache" / f"{args.case}.json"
            if not props.is_file():
                raise SystemExit(f"error: --window needs --window-shape or an e2e run's {props}")
            args.window_shape = json.loads(props.read_text())["resampled_shape"]
        figures["window"] = run_window(args, env)
    if args.json:
        write_json(args.json, figures)
    return 0 if ok else 1


def run_window(args, env) -> dict:
    print(f"\nrunning the sliding window alone (untrained network, features {args.features[0]} -> "
          f"{args.features[1]}, input {'x'.join(map(str, args.window_shape))}, {args.device}) ...", flush=True)
    r = run_measured(args, "window", env)
    cuda = "" if r["cuda_peak"] is None else f", GPU memory peak {gib(r['cuda_peak'])} GiB"
    print(f"predict_case: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s), patch {'x'.join(map(str, r['patch']))}, "
          f"tile batch {r['tile_batch']}, {r['parameters'] / 1e6:.2f} M parameters, autocast {r['amp']}: RSS before "
          f"{gib(r['rss_ready'])} GiB, peak {gib(r['peak_rss'])} GiB (+{gib(r['peak_rss'] - r['rss_ready'])}; the "
          f"probabilities themselves {gib(r['probs_bytes'])} GiB){cuda}")
    return r


if __name__ == "__main__":
    sys.exit(main())
