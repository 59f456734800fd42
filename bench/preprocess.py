"""Bench: preprocessing of one KiTS19-size case, ours against nnU-Net's own resampling.

The largest KiTS19 case is 1059 x 512 x 512. The bench takes a real KiTS19 label map (the
largest by voxel count, found from the NIfTI headers, unless --case says otherwise),
synthesises a CT around it once (data.synthetic.synthesize_ct: real labels, real spacing from
the header zooms, BMI from kits.json), writes a temporary KiTS-layout folder, and then measures,
each step in a fresh subprocess so that its peak memory is its own:

    a. ours: resampling only (data.resample.resample_image order 3 / order_z 0 and
       resample_labels order 1 / order_z 0) of the body-cropped arrays, as preprocess_case does
       (same body box, same arrays in the memory order data.nifti reads them: Fortran);
    b. ours: the whole data.preprocessing.preprocess_case (read NIfTI, crop, resample, clip,
       normalise, class locations, write the cache), with a per-phase breakdown;
    c. nnU-Net: nnunetv2.preprocessing.resampling.default_resampling.resample_data_or_seg_to_shape
       of the same cropped arrays (image: is_seg=False, order 3, order_z 0; labels: is_seg=True,
       order 1, order_z 0; force_separate_z=None; same spacings, same new shape), given as
       nnU-Net's readers hand them over: channels first, C-contiguous, image float32.

It prints seconds, CPU seconds and peak RSS per step (with the RSS after imports and after
reading the arrays, so the step's own share is visible), then the targets:
    time      ours / nnU-Net (a / c, resampling against resampling)    <= 0.5
    memory    peak RSS of (b) / raw image as float32 (shape x 4 bytes)  <= 3
    agreement Dice of our vs nnU-Net's resampled labels, kidney (label > 0) and tumor (label 2) >= 0.98
and, for information, the max / mean absolute difference of the resampled images (HU).
Synthesis is not part of any figure (its time is printed on its own line).

Every step runs --repeat times (default 3), interleaved; the fastest run's seconds and the highest
peak RSS are reported. Both sides run with the same thread count (--threads, default all cores;
nnU-Net's scipy/skimage resampling is single-threaded whatever it is). The bench warns when other
processes compete for the CPUs, since its wall-clock figures are then disturbed.

Peak RSS is the child's /proc/self/status VmHWM (the high-water mark of that process image,
nothing subtracted); the child's ru_maxrss is kept in the JSON as a cross-check (it can inherit
the parent's high-water mark through vfork/exec, which is why even the synthesis runs in a
child and the parent stays small).

Needs the KiTS19 label maps at $KITS19_DIR or ../shared/kits19 (relative to the repo), and the
bench requirements (pip install -r bench/requirements.txt: nnunetv2; never the project's).

Usage (from the repo root):
    python bench/preprocess.py                          # largest case, all cores, 3 runs per step
    python bench/preprocess.py --threads 1 --repeat 1
    python bench/preprocess.py --case case_00002
    python bench/preprocess.py --workdir /tmp/fk_bench --keep --json bench.json   # rerun: no synthesis
    python bench/preprocess.py --skip-nnunet            # ours only (memory target only)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import BUSY_WARN_CORES, emit, run_step, thread_env, verdict, write_json  # noqa: E402

TIME_TARGET = 0.5
MEMORY_TARGET = 3.0
AGREEMENT_TARGET = 0.98
GIB = 1024 ** 3
BENCH_FORMAT = 2  # bump when the workdir's contents change meaning (a kept workdir is then redone)


# ----------------------------------------------------------------------------------------------
# helpers shared by parent and children

def rss_bytes(field: str = "VmRSS") -> int:
    """VmRSS (current) or VmHWM (peak since exec) of this process, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_clock() -> tuple[float, float]:
    """(this process's user+system CPU seconds, machine-wide steal seconds from /proc/stat)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    steal = 0.0
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        steal = int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        pass
    return ru.ru_utime + ru.ru_stime, steal




def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def kits_dir() -> Path:
    env = os.environ.get("KITS19_DIR")
    path = Path(env) if env else (REPO / ".." / "shared" / "kits19").resolve()
    if not (path / "kits.json").is_file():
        raise SystemExit(f"error: KiTS19 label maps not found at {path} "
                         "(set KITS19_DIR to the folder with kits.json and case_XXXXX/segmentation.nii.gz)")
    return path


def case_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every case's label map, from the NIfTI headers only (no data is read)."""
    import nibabel as nib
    shapes = {}
    for p in sorted(root.glob("case_*/segmentation.nii.gz")):
        shapes[p.parent.name] = tuple(int(s) for s in nib.load(str(p)).shape)
    return shapes


def dice(a, b) -> float:
    import numpy as np
    inter = int(np.count_nonzero(a & b))
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * inter / total




# ----------------------------------------------------------------------------------------------
# children: each runs in its own process; prints one RESULT_TAG line

def child_synth(work: Path, case_id: str, kits: Path, seed: int) -> None:
    import numpy as np
    from data.kits import load_metadata, scan_cohort, load_case
    from data.labels import LabelScheme
    from data.nifti import read_volume, write_volume
    from data.preprocessing import PreprocessSettings, body_box
    from data.resample import resampled_shape, separate_axis
    from data.synthetic import synthesize_ct

    meta = load_metadata(kits / "kits.json")[case_id]
    raw = work / "raw"
    case_dir = raw / case_id
    seg = read_volume(kits / case_id / "segmentation.nii.gz", where=case_id)
    labels = LabelScheme.parse("kits19").apply(seg.array, where=case_id)
    bmi = float(meta["body_mass_index"])
    # Seeded as data.synthetic.write_cohort_from_labels seeds a case: (seed, case number).
    rng = np.random.default_rng([seed, int("".join(ch for ch in case_id if ch.isdigit()))])
    t0 = time.perf_counter()
    ct = synthesize_ct(labels, seg.spacing, bmi=bmi, rng=rng)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_volume(case_dir / "imaging.nii.gz", np.asarray(ct, dtype=np.int16), affine=seg.affine,
                 header=seg.header)
    write_volume(case_dir / "segmentation.nii.gz", seg.array, affine=seg.affine, header=seg.header)
    (raw / "kits.json").write_text(json.dumps([meta], indent=1) + "\n")
    t_write = time.perf_counter() - t0
    del ct, labels, seg

    # The body-cropped arrays, exactly as preprocess_case makes them (same reader, same box).
    settings = PreprocessSettings()
    record = scan_cohort(raw, require_imaging=True).records[0]
    case = load_case(record, LabelScheme.parse(settings.label_scheme))
    box = body_box(case.image, case.labels, settings.body_threshold_hu)
    crop = tuple(slice(a, b) for a, b in box)
    image, labels = case.image[crop], case.labels[crop]
    new_shape = resampled_shape(image.shape, case.spacing, settings.target_spacing)
    arrays = work / "arrays"
    arrays.mkdir(parents=True, exist_ok=True)
    # Keep the memory layout preprocess_case sees: nibabel hands over Fortran-ordered arrays
    # (z varies fastest), and the crop is a view of them; np.save/np.load keep Fortran order.
    fortran = case.image.flags["F_CONTIGUOUS"] and not case.image.flags["C_CONTIGUOUS"]
    keep = np.asfortranarray if fortran else np.ascontiguousarray
    np.save(arrays / "image.npy", keep(image))
    np.save(arrays / "labels.npy", keep(labels))
    plan = {
        "format": BENCH_FORMAT, "case_id": case_id, "seed": seed, "bmi": bmi,
        "original_shape": list(case.shape), "spacing": list(case.spacing),
        "image_dtype": str(case.image.dtype), "memory_order": "F (z fastest)" if fortran else "C",
        "crop_box": [list(b) for b in box], "cropped_shape": list(image.shape),
        "target_spacing": list(settings.target_spacing), "new_shape": list(new_shape),
        "separate_axis": separate_axis(case.spacing, settings.target_spacing, settings.anisotropy_threshold),
        "anisotropy_threshold": settings.anisotropy_threshold,
        "image_order": settings.image_order, "image_order_z": settings.image_order_z,
        "label_order": settings.label_order, "label_order_z": settings.label_order_z,
        "synth_seconds": t_synth, "write_seconds": t_write,
    }
    (work / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    emit({"step": "synth", "synth_seconds": t_synth, "write_seconds": t_write,
          "peak_rss": rss_bytes("VmHWM")})


def _setup_threads(threads: int):
    import torch
    torch.set_num_threads(threads)
    return torch


def child_ours_resample(work: Path, threads: int) -> None:
    import numpy as np
    _setup_threads(threads)
    from data.resample import resample_image, resample_labels
    rss_imports = rss_bytes()
    plan = json.loads((work / "plan.json").read_text())
    image = np.load(work / "arrays" / "image.npy")
    labels = np.load(work / "arrays" / "labels.npy")
    rss_read = rss_bytes()
    common = dict(new_shape=tuple(plan["new_shape"]), anisotropy_threshold=plan["anisotropy_threshold"])
    c0 = cpu_clock()
    t0 = time.perf_counter()
    out_image = resample_image(image, plan["spacing"], plan["target_spacing"], order=plan["image_order"],
                               order_z=plan["image_order_z"], **common)
    t1 = time.perf_counter()
    hwm_image = rss_bytes("VmHWM")
    out_labels = resample_labels(labels, plan["spacing"], plan["target_spacing"], order=plan["label_order"],
                                 order_z=plan["label_order_z"], classes=(1, 2), **common)
    t2 = time.perf_counter()
    c1 = cpu_clock()
    peak = rss_bytes("VmHWM")
    maxrss = maxrss_bytes()
    out = work / "out"
    out.mkdir(exist_ok=True)
    np.save(out / "ours_image.npy", out_image)
    np.save(out / "ours_labels.npy", out_labels)
    emit({"step": "ours_resample", "seconds": t2 - t0, "image_seconds": t1 - t0, "labels_seconds": t2 - t1,
          "peak_rss": peak, "peak_rss_after_image": hwm_image, "ru_maxrss": maxrss,
          "rss_after_imports": rss_imports, "rss_after_read": rss_read, "threads": threads,
          "cpu_seconds": c1[0] - c0[0], "steal_seconds": c1[1] - c0[1]})


def child_ours_preprocess(work: Path, threads: int) -> None:
    _setup_threads(threads)
    import data.preprocessing as pp
    from data.kits import scan_cohort
    rss_imports = rss_bytes()

    # Phase timings without touching the project: wrap the module-level names preprocess_case calls.
    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    for name, label in (("load_case", "read NIfTI"), ("body_box", "body box"),
                        ("resample_image", "resample image"), ("resample_labels", "resample labels"),
                        ("sample_class_locations", "class locations"), ("class_volumes_ml", "class volumes"),
                        ("_save_npy", "write .npy"), ("_save_json", "write .json")):
        setattr(pp, name, timed(label, getattr(pp, name)))

    raw = work / "raw"
    cache = work / "cache"
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    record = scan_cohort(raw, require_imaging=True).records[0]
    settings = pp.PreprocessSettings()
    c0 = cpu_clock()
    t0 = time.perf_counter()
    pp.preprocess_case(record, settings, cache)
    seconds = time.perf_counter() - t0
    c1 = cpu_clock()
    peak = rss_bytes("VmHWM")
    phases["other (crop, clip, normalise, props)"] = seconds - sum(phases.values())
    emit({"step": "ours_preprocess", "seconds": seconds, "phases": phases, "peak_rss": peak,
          "ru_maxrss": maxrss_bytes(), "rss_after_imports": rss_imports, "rss_after_read": None,
          "threads": threads, "cpu_seconds": c1[0] - c0[0], "steal_seconds": c1[1] - c0[1]})


def child_nnunet_resample(work: Path, threads: int) -> None:
    import numpy as np
    _setup_threads(threads)
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    rss_imports = rss_bytes()
    plan = json.loads((work / "plan.json").read_text())
    # As nnU-Net's own readers hand them to its preprocessor: channels first, image float32, both
    # C-contiguous (SimpleITK's GetArrayFromImage; NibabelIO's transpose of nibabel's Fortran array).
    # C order is nnU-Net's faster layout (its label resampling takes ~3x longer on the Fortran array).
    image = np.ascontiguousarray(np.load(work / "arrays" / "image.npy"), dtype=np.float32)[None]
    labels = np.ascontiguousarray(np.load(work / "arrays" / "labels.npy"))[None]
    rss_read = rss_bytes()
    new_shape = plan["new_shape"]
    current, target = list(plan["spacing"]), list(plan["target_spacing"])
    c0 = cpu_clock()
    t0 = time.perf_counter()
    out_image = resample_data_or_seg_to_shape(image, new_shape, current, target, is_seg=False,
                                              order=plan["image_order"], order_z=plan["image_order_z"],
                                              force_separate_z=None,
                                              separate_z_anisotropy_threshold=plan["anisotropy_threshold"])
    t1 = time.perf_counter()
    hwm_image = rss_bytes("VmHWM")
    out_labels = resample_data_or_seg_to_shape(labels, new_shape, current, target, is_seg=True,
                                               order=plan["label_order"], order_z=plan["label_order_z"],
                                               force_separate_z=None,
                                               separate_z_anisotropy_threshold=plan["anisotropy_threshold"])
    t2 = time.perf_counter()
    c1 = cpu_clock()
    peak = rss_bytes("VmHWM")
    maxrss = maxrss_bytes()
    out = work / "out"
    out.mkdir(exist_ok=True)
    np.save(out / "nnunet_image.npy", np.asarray(out_image[0], dtype=np.float32))
    np.save(out / "nnunet_labels.npy", np.asarray(out_labels[0], dtype=np.uint8))
    emit({"step": "nnunet_resample", "seconds": t2 - t0, "image_seconds": t1 - t0, "labels_seconds": t2 - t1,
          "peak_rss": peak, "peak_rss_after_image": hwm_image, "ru_maxrss": maxrss,
          "rss_after_imports": rss_imports, "rss_after_read": rss_read, "threads": threads,
          "cpu_seconds": c1[0] - c0[0], "steal_seconds": c1[1] - c0[1]})


# ----------------------------------------------------------------------------------------------
# parent

def run_child(args, step: str, extra: list[str], threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--workdir", str(args.workdir),
           "--threads", str(threads), *extra]
    return run_step(cmd, thread_env(threads), step)


def gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"




def compare(work: Path) -> dict:
    import numpy as np
    ours_l = np.load(work / "out" / "ours_labels.npy")
    nn_l = np.load(work / "out" / "nnunet_labels.npy")
    ours_i = np.load(work / "out" / "ours_image.npy")
    nn_i = np.load(work / "out" / "nnunet_image.npy")
    if ours_l.shape != nn_l.shape or ours_i.shape != nn_i.shape:
        raise SystemExit(f"error: shapes differ: ours {ours_i.shape}/{ours_l.shape}, "
                         f"nnU-Net {nn_i.shape}/{nn_l.shape}")
    diff = np.abs(ours_i.astype(np.float64) - nn_i.astype(np.float64))
    return {
        "dice_kidney": dice(ours_l > 0, nn_l > 0),
        "dice_tumor": dice(ours_l == 2, nn_l == 2),
        "voxels_kidney": [int(np.count_nonzero(ours_l > 0)), int(np.count_nonzero(nn_l > 0))],
        "voxels_tumor": [int(np.count_nonzero(ours_l == 2)), int(np.count_nonzero(nn_l == 2))],
        "label_voxels_differing": int(np.count_nonzero(ours_l != nn_l)),
        "image_max_abs_diff_hu": float(diff.max()),
        "image_mean_abs_diff_hu": float(diff.mean()),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", help="case to bench, e.g. case_00002 (default: the largest by voxel count)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch / OpenMP threads for every step, ours and nnU-Net's alike (default: all cores, %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each step, interleaved, each in a fresh process; the fastest run's time and the "
                        "highest peak RSS are reported (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CT synthesis (default 0)")
    p.add_argument("--workdir", type=Path, help="folder for the synthetic case and outputs (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the workdir (a kept workdir is reused by the next run "
                   "for the same case and seed: synthesis is skipped)")
    p.add_argument("--skip-nnunet", action="store_true", help="measure ours only")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--kits", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        work = args.workdir
        if args.child == "synth":
            child_synth(work, args.case, args.kits, args.seed)
        elif args.child == "ours_resample":
            child_ours_resample(work, args.threads)
        elif args.child == "ours_preprocess":
            child_ours_preprocess(work, args.threads)
        elif args.child == "nnunet_resample":
            child_nnunet_resample(work, args.threads)
        else:
            raise SystemExit(f"error: unknown child step {args.child}")
        return 0

    kits = kits_dir()
    if not args.skip_nnunet:
        try:
            import nnunetv2.preprocessing.resampling.default_resampling  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"error: nnU-Net is not installed ({exc}); pip install -r bench/requirements.txt, "
                             "or pass --skip-nnunet")
    shapes = case_shapes(kits)
    if not shapes:
        raise SystemExit(f"error: no case_XXXXX/segmentation.nii.gz under {kits}")
    if args.case is None:
        args.case = max(shapes, key=lambda c: (math.prod(shapes[c]), c))
    elif args.case not in shapes:
        raise SystemExit(f"error: {args.case} has no segmentation.nii.gz under {kits}")
    threads = max(1, args.threads)

    temp = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="fairkits_bench_")) if temp else args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return bench(args, kits, threads)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        else:
            print(f"kept {args.workdir}")


def bench(args, kits: Path, threads: int) -> int:
    work = args.workdir
    plan_path = work / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    reused = (plan is not None and plan.get("format") == BENCH_FORMAT and plan.get("case_id") == args.case
              and plan.get("seed") == args.seed
              and (work / "raw" / args.case / "imaging.nii.gz").is_file())
    if not reused:
        for sub in ("raw", "arrays", "out", "cache"):
            shutil.rmtree(work / sub, ignore_errors=True)
        plan_path.unlink(missing_ok=True)
        print(f"synthesising a CT around the real label map of {args.case} ...", flush=True)
        synth = run_child(args, "synth", ["--case", args.case, "--kits", str(kits), "--seed", str(args.seed)],
                          threads)
        plan = json.loads(plan_path.read_text())
        synth_line = (f"synthesis (not part of the figures): {synth['synth_seconds']:.1f} s synthesise_ct, "
                      f"{synth['write_seconds']:.1f} s write NIfTI, peak RSS {gib(synth['peak_rss'])} GiB")
    else:
        synth_line = (f"synthesis (not part of the figures): reused from {work} "
                      f"({plan['synth_seconds']:.1f} s synthesise_ct when made)")

    shape = plan["original_shape"]
    raw_f32 = shape[0] * shape[1] * shape[2] * 4
    fmt = lambda xs, sep="x": sep.join(f"{x:g}" for x in xs)  # noqa: E731
    print(f"case {args.case}: {fmt(shape)} voxels, spacing {fmt(round(s, 4) for s in plan['spacing'])} mm "
          f"(z, y, x), BMI {plan['bmi']}, image {plan['image_dtype']}, memory order as read: "
          f"{plan.get('memory_order', '?')}")
    print(f"body crop {fmt(plan['cropped_shape'])} -> resampled {fmt(plan['new_shape'])} at "
          f"{fmt(plan['target_spacing'])} mm; separate axis: "
          f"{'none (3D resampling)' if plan['separate_axis'] is None else plan['separate_axis']}")
    print(synth_line)
    print("inputs: ours gets the arrays in the order data.nifti reads them, as preprocess_case does; nnU-Net "
          "gets them C-contiguous, image float32, as its readers hand them over (conversion not timed)")
    print(f"threads: {threads} for every step (torch.set_num_threads and OMP/MKL/OpenBLAS env); "
          f"nnU-Net's scipy/skimage resampling is single-threaded whatever this is", flush=True)

    results = {}
    steps = [("ours_resample", "a. ours: resampling"), ("ours_preprocess", "b. ours: preprocess_case")]
    if not args.skip_nnunet:
        steps.append(("nnunet_resample", "c. nnU-Net: resampling"))
    runs: dict[str, list[dict]] = {step: [] for step, _ in steps}
    repeat = max(1, args.repeat)
    for i in range(repeat):
        for step, title in steps:  # interleaved, so a busy spell on the machine hits every step alike
            print(f"running {title} ({i + 1}/{repeat}) ...", flush=True)
            r = run_child(args, step, [], threads)
            runs[step].append(r)
            print(f"   {r['seconds']:.1f} s; other processes used {r['other_processes_cores']:.2f} cores meanwhile",
                  flush=True)
    for step, _ in steps:
        # Time: the fastest run (the least disturbed); memory: the highest peak of any run.
        best = dict(min(runs[step], key=lambda r: r["seconds"]))
        best["peak_rss"] = max(r["peak_rss"] for r in runs[step])
        best["all_seconds"] = [r["seconds"] for r in runs[step]]
        best["all_other_processes_cores"] = [r["other_processes_cores"] for r in runs[step]]
        results[step] = best

    print()
    header = (f"{'step':<44} {'seconds':>8} {'CPU s':>7} {'others':>7} {'peak RSS GiB':>13} "
              f"{'RSS after imports':>18} {'after reading':>14}")
    print(header)
    print("-" * len(header))
    for step, title in steps:
        r = results[step]
        print(f"{title:<44} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} {r['other_processes_cores']:>7.2f} "
              f"{gib(r['peak_rss']):>13} {gib(r['rss_after_imports']):>18} {gib(r['rss_after_read']):>14}")
        if "image_seconds" in r:
            print(f"{'   image (order 3, order_z 0)':<44} {r['image_seconds']:>8.1f} {'':>7} {'':>7} "
                  f"{gib(r['peak_rss_after_image']):>13}")
            print(f"{'   labels (order 1, order_z 0)':<44} {r['labels_seconds']:>8.1f} {'':>7} {'':>7} "
                  f"{gib(r['peak_rss']):>13}")
        for name, sec in r.get("phases", {}).items():
            print(f"{'   ' + name:<44} {sec:>8.1f}")
    if repeat > 1:
        print(f"(each step run {repeat} times, interleaved, in fresh processes: seconds are the fastest run, "
              "peak RSS the highest; all runs' seconds: "
              + "; ".join(f"{t.split(':')[0]} " + ", ".join(f"{x:.1f}" for x in results[st]["all_seconds"])
                          for st, t in steps) + ")")
    busy = max(results[step]["other_processes_cores"] for step, _ in steps)
    if busy > BUSY_WARN_CORES:
        print(f"WARNING: other processes used up to {busy:.2f} of the {os.cpu_count()} cores during the reported "
              "runs; the timings are disturbed: run again on a quiet machine")
    print("(peak RSS: VmHWM of the step's own process, nothing subtracted; sub-rows: the peak reached by "
          "the end of that part. CPU s: the step's user+system CPU time in the timed part; others: cores that "
          "other processes of the machine used, on average, while the step's process ran)")
    print()

    figures = {"case_id": args.case, "threads": threads, "repeat": repeat, "other_processes_cores_max": busy,
               "plan": plan, "steps": results,
               "raw_float32_bytes": raw_f32}
    ok = True
    ours, pre = results["ours_resample"], results["ours_preprocess"]
    mem_ratio = pre["peak_rss"] / raw_f32
    figures["memory_ratio"] = mem_ratio
    checks = []
    if not args.skip_nnunet:
        nn = results["nnunet_resample"]
        ratio = ours["seconds"] / nn["seconds"]
        figures["time_ratio"] = ratio
        figures["time_ratio_image"] = ours["image_seconds"] / nn["image_seconds"]
        figures["time_ratio_labels"] = ours["labels_seconds"] / nn["labels_seconds"]
        checks.append((f"time ours/nnU-Net (a/c): {ratio:.3f}x ({ours['seconds']:.1f} s / {nn['seconds']:.1f} s; "
                       f"image {figures['time_ratio_image']:.3f}x, labels {figures['time_ratio_labels']:.3f}x)",
                       f"<= {TIME_TARGET}x", ratio <= TIME_TARGET))
    checks.append((f"peak memory of (b) / raw image float32: {mem_ratio:.2f}x "
                   f"({gib(pre['peak_rss'])} GiB / {gib(raw_f32)} GiB)", f"<= {MEMORY_TARGET}x",
                   mem_ratio <= MEMORY_TARGET))
    if not args.skip_nnunet:
        agree = compare(work)
        figures["agreement"] = agree
        worst = min(agree["dice_kidney"], agree["dice_tumor"])
        checks.append((f"label agreement Dice ours vs nnU-Net: kidney {agree['dice_kidney']:.4f}, "
                       f"tumor {agree['dice_tumor']:.4f}", f">= {AGREEMENT_TARGET}", worst >= AGREEMENT_TARGET))
    width = max(len(c[0]) for c in checks)
    for text, target, passed in checks:
        print(f"{text:<{width}}  target {target:<8} {verdict(passed)}")
        ok &= passed
    added = pre["peak_rss"] - pre["rss_after_imports"]
    print(f"(information) (b) above its RSS after imports (Python, numpy, torch): {gib(added)} GiB = "
          f"{added / raw_f32:.2f}x the raw float32 image; the import baseline dominates on small cases")
    if not args.skip_nnunet:
        print(f"(information) resampled labels: kidney voxels ours/nnU-Net {agree['voxels_kidney'][0]}/"
              f"{agree['voxels_kidney'][1]}, tumor {agree['voxels_tumor'][0]}/{agree['voxels_tumor'][1]}, "
              f"{agree['label_voxels_differing']} voxels differ")
        print(f"(information) resampled images, ours (Keys cubic) vs nnU-Net (B-spline): max abs diff "
              f"{agree['image_max_abs_diff_hu']:.1f} HU, mean abs diff {agree['image_mean_abs_diff_hu']:.2f} HU")
    figures["targets"] = {"time": TIME_TARGET, "memory": MEMORY_TARGET, "agreement": AGREEMENT_TARGET}
    figures["pass"] = ok
    print(f"overall: {verdict(ok)}")
    if args.json:
        write_json(args.json, figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
